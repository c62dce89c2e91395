"""The pilot's decisions as pure functions, shared with the simulator."""

from __future__ import annotations

from typing import Optional

RELEASE_MARGIN = 5.0  # seconds kept, beyond the kill grace, to give jobs back before the end
MAX_MARGIN_SHARE = 0.1  # ...but never more than this share of a (short) pilot walltime
SETTLE = 1.0  # seconds a job that died of a stop signal waits for the pilot's own
# (a job that ended otherwise waits the pilot's --settle, 0.2 s by default)


def job_fits(job_walltime: Optional[float], pilot_remaining: Optional[float]) -> bool:
    """A job is started only when its declared walltime fits in the pilot's remaining time."""
    if job_walltime is None or pilot_remaining is None:
        return True
    return job_walltime <= pilot_remaining


def should_stop(idle_for: float, idle_timeout: float, running: int) -> bool:
    """A pilot with nothing running leaves after ``idle_timeout`` seconds without work."""
    return running == 0 and idle_for >= idle_timeout


def release_margin(walltime: Optional[float], grace: float) -> float:
    """Seconds before its hard end at which a pilot gives back what still runs: the kill
    grace plus RELEASE_MARGIN, capped at MAX_MARGIN_SHARE of its walltime."""
    margin = grace + RELEASE_MARGIN
    if walltime is not None:
        margin = min(margin, walltime * MAX_MARGIN_SHARE)
    return max(0.0, margin)


def time_needed(declared: Optional[float], learned: Optional[float]) -> Optional[float]:
    """What a job needs before it can finish: its declared walltime (an upper bound), else
    the longest an earlier attempt ran before it was released (a lower bound), else unknown."""
    return declared if declared is not None else learned


def why_not_taken(declared: Optional[float], learned: Optional[float],
                  remaining: float) -> str:
    """Why a job is left for a fresh pilot with ``remaining`` usable seconds ('' when it
    fits): it needs more than that (``time_needed``)."""
    if job_fits(time_needed(declared, learned), remaining):
        return ""
    if declared is not None:
        return "walltime %ss exceeds the %.0fs this pilot has left" % (declared, remaining)
    return "ran %ss before it was released, more than the %.0fs this pilot has left" % (
        learned, remaining)


def cannot_finish(elapsed: float, learned: Optional[float], time_left: float) -> bool:
    """A running job cannot finish before the pilot's release point: an earlier attempt
    already ran longer than this one can (the learned runtime is a lower bound)."""
    return learned is not None and learned - elapsed > time_left


def stop_signalled(rc: int, stop_signals: "frozenset[int]") -> bool:
    """An exit status that one of the scheduler's stop signals may have caused: killed by
    it (-SIG) or a shell reporting it (128 + SIG)."""
    return -rc in stop_signals or (rc > 128 and rc - 128 in stop_signals)
