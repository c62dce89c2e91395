"""The pilot's decisions as pure functions, shared with the simulator."""

from __future__ import annotations

from typing import Optional


def job_fits(job_walltime: Optional[float], pilot_remaining: Optional[float]) -> bool:
    """A job is started only when its declared walltime fits in the pilot's remaining time."""
    if job_walltime is None or pilot_remaining is None:
        return True
    return job_walltime <= pilot_remaining


def should_stop(idle_for: float, idle_timeout: float, running: int) -> bool:
    """A pilot with nothing running leaves after ``idle_timeout`` seconds without work."""
    return running == 0 and idle_for >= idle_timeout
