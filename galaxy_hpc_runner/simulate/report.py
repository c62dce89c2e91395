"""The simulator's output: a summary per policy, a terminal table, JSON and a PNG."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from typing import Any

from galaxy_hpc_runner.simulate.engine import Outcome
from galaxy_hpc_runner.simulate.model import DAY, HOUR

log = logging.getLogger(__name__)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), linear between closest ranks; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


@dataclass
class Row:
    """One policy's (or the baseline's) outcome, summed over the simulated runs."""

    label: str
    params: dict[str, Any]
    outcome: Outcome
    runs: int = 1

    def summary(self) -> dict[str, Any]:
        out, lat = self.outcome, self.outcome.latencies
        days = out.horizon / DAY
        return {
            "label": self.label, "params": self.params, "runs": self.runs, "jobs": len(lat),
            "latency_h": {"p50": percentile(lat, 50) / HOUR, "p95": percentile(lat, 95) / HOUR,
                          "max": (max(lat) if lat else math.nan) / HOUR,
                          "mean": (sum(lat) / len(lat) if lat else math.nan) / HOUR},
            "submissions": out.submissions, "submissions_per_day": out.submissions / days,
            "gpu_hours_held": out.held / HOUR / self.runs,
            "gpu_hours_busy": out.busy / HOUR / self.runs,
            "gpu_hours_idle": out.idle / HOUR / self.runs,
            "idle_fraction": out.idle / out.held if out.held else 0.0,
            "makespan_h": out.makespan / HOUR, "rejected": out.rejected,
            "failed_runs": out.failed, "released_runs": out.released,
        }


COLUMNS = [("policy", "{label}"), ("jobs", "{jobs}"), ("subs/day", "{spd:.1f}"),
           ("p50 h", "{p50:.1f}"), ("p95 h", "{p95:.1f}"), ("max h", "{max:.1f}"),
           ("mean h", "{mean:.1f}"), ("GPUh held", "{held:.0f}"), ("GPUh idle", "{idle:.1f}"),
           ("idle%", "{pct:.0f}"), ("releases", "{rel}"), ("failures", "{fail}")]


def _cells(s: dict[str, Any]) -> list[str]:
    lat = s["latency_h"]
    values = {"label": s["label"], "jobs": s["jobs"], "spd": s["submissions_per_day"],
              "p50": lat["p50"], "p95": lat["p95"], "max": lat["max"], "mean": lat["mean"],
              "held": s["gpu_hours_held"], "idle": s["gpu_hours_idle"],
              "pct": 100 * s["idle_fraction"], "rel": s["released_runs"],
              "fail": s["failed_runs"]}
    return [fmt.format(**values) for _, fmt in COLUMNS]


def table(summaries: list[dict[str, Any]]) -> str:
    """A plain-text table, Markdown-compatible, one line per policy."""
    rows = [[name for name, _ in COLUMNS]] + [_cells(s) for s in summaries]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths, strict=True))) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(rows[0]), rule] + [line(r) for r in rows[1:]])


def write_json(path: str, header: dict[str, Any], summaries: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump({"settings": header, "results": summaries}, fh, indent=2, default=str)
        fh.write("\n")


def write_png(path: str, rows: list[Row]) -> None:
    """Latency CDFs and the latency/idle-GPU trade-off; needs matplotlib (the 'plot' extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError("--png needs matplotlib: pip install 'galaxy-hpc-batch[plot]'"
                           " (or pip install matplotlib)") from exc
    fig, (cdf, trade) = plt.subplots(1, 2, figsize=(13, 5))
    for row in rows:
        lat = sorted(v / HOUR for v in row.outcome.latencies)
        if lat:
            cdf.step(lat, [(i + 1) / len(lat) for i in range(len(lat))], where="post",
                     label=row.label)
        s = row.summary()
        trade.scatter(s["gpu_hours_idle"], s["latency_h"]["p95"])
        trade.annotate(row.label, (s["gpu_hours_idle"], s["latency_h"]["p95"]), fontsize=7)
    cdf.set(xlabel="latency, arrival to result (hours)", ylabel="fraction of tool runs",
            title="Latency distribution")
    cdf.legend(fontsize=7)
    cdf.grid(alpha=0.3)
    trade.set(xlabel="GPU hours held idle (mean per traffic sample)", ylabel="p95 latency (hours)",
              title="Latency vs idle GPU time")
    trade.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    log.debug("wrote %s", path)
