"""What ``bench_throughput.py`` prints: a round's rates beside Parsl's, and warm dispatch."""

from __future__ import annotations

import os
from typing import Any


def print_round(number: int, floor: float, got: dict[str, Any], order: list[str],
                cost: dict[str, float], tmpdir: str) -> None:
    """One round: ``got`` maps each contender (parsl, ours, warm, two) to its figures,
    ``cost`` to what a new file cost (ms of CPU) as it began, ``order`` the order they ran."""
    parsl, ours, warm, two = (got[name] for name in ("parsl", "ours", "warm", "two"))
    rate = parsl["jobs_per_s"] if parsl else None
    theirs = "%.0f jobs/s" % rate if rate else "skipped (see above)"  # the same job

    def ratio(value: float) -> str:
        return " (%.2f of parsl)" % (value / rate) if rate else ""

    print("round %d: xargs -P 2 %.0f jobs/s | parsl htex (warm) %s | ours, cold pilot %.1f "
          "jobs/s%s | ours, warm pilot %.1f jobs/s%s | ours, 2 slots, cold %.1f jobs/s%s" % (
              number, floor, theirs, ours["jobs_per_s"], ratio(ours["jobs_per_s"]),
              warm["jobs_per_s"], ratio(warm["jobs_per_s"]), two["jobs_per_s"],
              ratio(two["jobs_per_s"])))
    if parsl:
        print("  parsl %s htex running `true` alone (/bin/sh -c true: no bash, no files): %.0f "
              "jobs/s; ours cold / warm %.2f / %.2f of that" % (
                  parsl.get("version", "?"), parsl["true_jobs_per_s"],
                  ours["jobs_per_s"] / parsl["true_jobs_per_s"],
                  warm["jobs_per_s"] / parsl["true_jobs_per_s"]))
    print("  warm, first start to last start (no pilot start, no settle): %.0f jobs/s" %
          warm["steady_jobs_per_s"])
    print("  submitter CPU %.2f ms per job (cold round); load average %.2f" % (
        ours["submitter_cpu_ms_per_job"], os.getloadavg()[0]))
    print("  order %s; a new file in %s cost %s ms of CPU as each began" % (
        ", ".join(order), tmpdir, " / ".join("%.3f" % cost[name] for name in order)))


def print_dispatch(dispatch: dict[str, Any]) -> None:
    ours, parsl = dispatch["ours"], dispatch["parsl"]
    print("warm dispatch (shipped defaults): drop -> start p50 %.3f s p95 %.3f s; "
          "drop -> .finished p50 %.3f s p95 %.3f s" % (
              ours["dispatch_p50_s"], ours["dispatch_p95_s"], ours["finished_p50_s"],
              ours["finished_p95_s"]))
    if parsl and parsl.get("dispatch_p50_s") is not None:
        print("parsl htex: submit -> result p50 %.3f s p95 %.3f s" % (
            parsl["dispatch_p50_s"], parsl["dispatch_p95_s"]))
