"""Numbers, table, JSON and plot of the contention benchmark."""

from __future__ import annotations

import json
import logging
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from galaxy_hpc_runner.cli import gpu_figures

log = logging.getLogger(__name__)

WAYS = ("sbatch", "pilot", "warm")
LABELS = {"sbatch": "one sbatch per job", "pilot": "submitter + pilot",
          "warm": "submitter + warm pilot"}
TARGETS = {"stream": "mean and p95 latency: pilot <= 0.10 x sbatch",
           "burst": "makespan: pilot <= 1.25 x sbatch, with <= 0.20 x its submissions"}


@dataclass
class Phase:
    """One pattern run one way: when each job arrived and when its result was there."""

    pattern: str
    way: str
    drops: list[float]
    done: list[float]
    submissions: int
    queue_waits: list[float] = field(default_factory=list)
    idle_gpu_s: float | None = None
    held_gpu_s: float | None = None
    busy_s: float | None = None
    failed: int = 0
    steady_from: float | None = None  # first pilot start: later drops met a running pilot
    before_gpu_s: float | None = None  # GPU-seconds pilots held before the first drop
    after_gpu_s: float | None = None  # GPU-seconds pilots held after the last result
    gpu: dict[str, Any] = field(default_factory=dict)  # what the pilots measured (measured_gpu)

    @property
    def latencies(self) -> list[float]:
        return [end - start for start, end in zip(self.drops, self.done, strict=True)]


def pct(values: list[float], q: float) -> float:
    """Percentile with linear interpolation (numpy's default)."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def latency_stats(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "p50": pct(values, 50), "p95": pct(values, 95),
            "max": max(values)}


def measured_gpu(jobs: Iterable[Mapping[str, Any]],
                 beats: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The GPU figures the pilots measured (hpc_worker.gpu): per job (result ``metrics``:
    GPU-seconds, peak memory, mean utilisation) and per pilot (heartbeat: device-seconds
    held busy and idle); a figure no pilot measured is absent (None), never 0."""
    figures = [f for f in (gpu_figures.job_figures(j.get("metrics")) for j in jobs) if f]

    def values(key: str) -> list[float]:
        return [float(f[key]) for f in figures if key in f]

    held = gpu_figures.total(gpu_figures.pilot_figures(b) for b in beats) or {}
    utils, peaks, secs = values("gpu_util_mean_pct"), values("gpu_mem_peak_mib"), \
        values("gpu_seconds")
    return {"jobs_gpu_s": sum(secs) if secs else None,
            "util_mean_pct": statistics.fmean(utils) if utils else None,
            "mem_peak_mib": max(peaks) if peaks else None,
            "busy_gpu_s": held.get("busy_s"), "idle_gpu_s": held.get("idle_s")}


def summarize(ph: Phase) -> dict[str, Any]:
    out: dict[str, Any] = {
        "pattern": ph.pattern, "way": ph.way, "jobs": len(ph.drops), "failed": ph.failed,
        "makespan": max(ph.done) - min(ph.drops), "latency": latency_stats(ph.latencies),
        "submissions": ph.submissions, "idle_gpu_s": ph.idle_gpu_s,
        "held_gpu_s": ph.held_gpu_s, "busy_s": ph.busy_s,
        "before_gpu_s": ph.before_gpu_s, "after_gpu_s": ph.after_gpu_s,
        "queue_wait_mean": statistics.fmean(ph.queue_waits) if ph.queue_waits else None,
        "queue_wait_min": min(ph.queue_waits) if ph.queue_waits else None,
        "gpu": ph.gpu or None, "drops": ph.drops, "latencies": ph.latencies}
    if ph.steady_from is not None:
        steady = [lat for t, lat in zip(ph.drops, ph.latencies, strict=True)
                  if t >= ph.steady_from]
        if steady:
            out["steady"] = dict(latency_stats(steady), jobs=len(steady))
    return out


def ratios(rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """ours / sbatch, keyed "pattern/way", for every pattern run one sbatch per job."""
    out = {}
    for key, ours in rows.items():
        base = rows.get(ours["pattern"] + "/sbatch")
        if ours["way"] == "sbatch" or not base:
            continue
        out[key] = {
            "makespan": ours["makespan"] / base["makespan"],
            "mean": ours["latency"]["mean"] / base["latency"]["mean"],
            "p50": ours["latency"]["p50"] / base["latency"]["p50"],
            "p95": ours["latency"]["p95"] / base["latency"]["p95"],
            "max": ours["latency"]["max"] / base["latency"]["max"],
            "submissions": ours["submissions"] / base["submissions"]}
    return out


def verdicts(rat: dict[str, dict[str, float]]) -> list[str]:
    lines = []
    for key, r in rat.items():
        if key.startswith("stream/"):
            lines.append("%s: mean %.3f, p95 %.3f of sbatch (target <= 0.10): %s" % (
                key, r["mean"], r["p95"], _ok(r["mean"] <= 0.1 and r["p95"] <= 0.1)))
        else:
            lines.append("%s: makespan %.2fx (target <= 1.25x), submissions %.2fx "
                         "(target <= 0.20x): %s" % (key, r["makespan"], r["submissions"],
                                                   _ok(r["makespan"] <= 1.25 and
                                                       r["submissions"] <= 0.2)))
    return lines


def _ok(flag: bool) -> str:
    return "MET" if flag else "MISSED"


def _num(value: float | None, fmt: str = "%.1f") -> str:
    return "-" if value is None else fmt % value


def table(rows: dict[str, dict[str, Any]]) -> str:
    """The Markdown table of the README."""
    head = ("| pattern | way | makespan s | latency mean s | p50 s | p95 s | max s "
            "| queue wait s | scheduler submissions | pilot idle GPU-s "
            "| measured GPU-s busy / idle |\n"
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    body = ""
    for row in rows.values():
        lat = row["latency"]
        body += "| %s | %s | %.1f | %.1f | %.1f | %.1f | %.1f | %s | %d | %s | %s |\n" % (
            row["pattern"], _way_label(row["way"]), row["makespan"], lat["mean"], lat["p50"],
            lat["p95"], lat["max"], _num(row["queue_wait_mean"]), row["submissions"],
            _num(row["idle_gpu_s"]) if row["way"] != "sbatch" else "0 (none held)",
            _measured(row.get("gpu")))
    return head + body


def _measured(gpu: Mapping[str, Any] | None) -> str:
    """``busy / idle`` device-seconds the pilots' heartbeats counted; ``-`` when no pilot
    held a GPU it knew of (one sbatch per job, a node without GPUs)."""
    if not gpu or gpu.get("busy_gpu_s") is None:
        return "-"
    return "%s / %s" % (_num(gpu["busy_gpu_s"]), _num(gpu.get("idle_gpu_s")))


def _way_label(way: str) -> str:
    return LABELS.get(way, way)


def held_lines(rows: dict[str, dict[str, Any]]) -> list[str]:
    """Where the pilots' GPU-seconds went: work, idle before the first drop, after the end."""
    lines = []
    for key, row in rows.items():
        if row.get("held_gpu_s") is None:
            continue
        lines.append("%s: pilots held %.1f GPU-s for %.1f s of work (idle %.1f); "
                     "before the first drop %s, after the last result %s" % (
                         key, row["held_gpu_s"], row["busy_s"], row["idle_gpu_s"],
                         _num(row.get("before_gpu_s")), _num(row.get("after_gpu_s"))))
    return lines


def write_json(path: Path, setup: dict[str, Any], rows: dict[str, dict[str, Any]],
               rat: dict[str, dict[str, float]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"setup": setup, "targets": TARGETS, "results": rows,
                                "ratios": rat, "verdicts": verdicts(rat)}, indent=2))
    log.info("wrote %s", path)


def plot(path: Path, rows: dict[str, dict[str, Any]], wait: float | None) -> None:
    """Latency per job (arrival order), every way, one panel per pattern."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, pattern in zip(axes, ("stream", "burst"), strict=True):
        for way, style in zip(WAYS, ("o-", "s-", "^-"), strict=True):
            row = rows.get("%s/%s" % (pattern, way))
            if row:
                ax.plot(range(1, len(row["latencies"]) + 1), row["latencies"], style,
                        markersize=3, linewidth=1, label=_way_label(way))
        if wait:
            ax.axhline(wait, color="grey", linestyle=":",
                       label="W: mean queue wait of a lone sbatch (stream)")
        ax.set_title("%s: latency per job (drop -> result)" % pattern)
        ax.set_xlabel("job (arrival order)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("seconds")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    log.info("wrote %s", path)
