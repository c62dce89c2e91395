"""GPU figures for ``show``, ``status`` and the benchmarks: what the pilot measured.

The pilot (:mod:`hpc_worker.gpu`) puts per job into its result's ``metrics`` (the
result file's ``job: metrics:``) the GPU(s) it ran on, its GPU-seconds, and, where
``nvidia-smi`` answered, its peak GPU memory and mean utilisation; per pilot, its
heartbeat carries the devices it holds and the device-seconds they held a job (busy)
or none (idle). A node without GPUs, or without the tool, gives no such figures: they
are then absent here too (``None``), never zero and never an error.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

# the per-job keys hpc_worker.gpu.job_metrics writes, shown in this order
JOB_KEYS = ("gpu_devices", "gpu_shared_by", "gpu_seconds", "gpu_mem_peak_mib",
            "gpu_util_mean_pct", "gpu_samples")


def job_figures(metrics: Any) -> dict[str, Any] | None:
    """The GPU keys of a job's ``metrics`` mapping; None when it has none."""
    if not isinstance(metrics, Mapping):
        return None
    out = {key: metrics[key] for key in JOB_KEYS if metrics.get(key) is not None}
    return out or None


def job_line(figures: Mapping[str, Any] | None) -> str | None:
    """``GPU 7 (shared by 2 slots): 12.3 GPU-s, peak memory 1000 MiB, mean utilisation
    50.0 %`` with only the figures there are; None without any."""
    if not figures:
        return None
    head = "GPU %s" % figures.get("gpu_devices", "?")
    shared = figures.get("gpu_shared_by")
    if isinstance(shared, int) and shared > 1:
        head += " (shared by %d slots)" % shared
    parts = []
    if _is_number(figures.get("gpu_seconds")):
        parts.append("%.1f GPU-s" % figures["gpu_seconds"])
    if _is_number(figures.get("gpu_mem_peak_mib")):
        parts.append("peak memory %.0f MiB" % figures["gpu_mem_peak_mib"])
    if _is_number(figures.get("gpu_util_mean_pct")):
        parts.append("mean utilisation %.1f %%" % figures["gpu_util_mean_pct"])
    if not parts:
        parts.append("no usage figures (nvidia-smi absent or silent)")
    return "%s: %s" % (head, ", ".join(parts))


def pilot_figures(beat: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A pilot's GPU time from its heartbeat (as JSON): devices, busy and idle
    device-seconds; None when it holds no GPU (or has no heartbeat)."""
    if not isinstance(beat, Mapping):
        return None
    devices = beat.get("gpus")
    if not isinstance(devices, list) or not devices:
        return None
    return {"devices": [str(d) for d in devices],
            "slots_per_gpu": beat.get("slots_per_gpu", 1),
            "busy_s": _rounded(beat.get("gpu_busy_seconds")),
            "idle_s": _rounded(beat.get("gpu_idle_seconds"))}


def total(figures: Iterable[Mapping[str, Any] | None]) -> dict[str, Any] | None:
    """Busy and idle device-seconds summed over pilots; None when none holds a GPU."""
    counted = [f for f in figures if f]
    if not counted:
        return None
    return {"pilots": len(counted),
            "devices": sum(len(f.get("devices") or []) for f in counted),
            "busy_s": round(sum(f.get("busy_s") or 0.0 for f in counted), 1),
            "idle_s": round(sum(f.get("idle_s") or 0.0 for f in counted), 1)}


def pilot_text(figures: Mapping[str, Any] | None) -> str:
    """`` GPU 0,1 busy 120 s idle 30 s`` for a status line; "" without figures."""
    if not figures:
        return ""
    return "  GPU %s busy %s idle %s" % (",".join(figures.get("devices") or []),
                                         _seconds(figures.get("busy_s")),
                                         _seconds(figures.get("idle_s")))


def total_text(figures: Mapping[str, Any] | None, what: str) -> str | None:
    """One status line for a total; None without one."""
    if not figures:
        return None
    return "GPU time of %s (%d pilot(s), %d device(s)): busy %s, held idle %s" % (
        what, figures["pilots"], figures["devices"], _seconds(figures["busy_s"]),
        _seconds(figures["idle_s"]))


def _seconds(value: Any) -> str:
    return "%.0f s" % value if _is_number(value) else "-"


def _rounded(value: Any) -> float | None:
    return round(float(value), 1) if _is_number(value) else None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
