"""Pilot policy: how many pilots to submit for a backlog, and when a job is given up.

Kept free of I/O so the submitter and the simulator (``hpc-batch simulate``)
decide with the very same code.
"""

from __future__ import annotations

import math


def pilots_wanted(backlog: int, max_pilots: int = 1, backlog_per_pilot: int = 0) -> int:
    """Pilots the backlog deserves: one, or one per ``backlog_per_pilot`` jobs up to the max."""
    if backlog <= 0:
        return 0
    if backlog_per_pilot <= 0:
        return 1
    return max(1, min(max_pilots, math.ceil(backlog / backlog_per_pilot)))


def pilots_to_submit(backlog: int, active: int, unknown: int, max_pilots: int = 1,
                     backlog_per_pilot: int = 0, min_pilots: int = 0) -> int:
    """New pilots to submit now.

    ``backlog`` counts staged jobs no pilot has claimed; ``active`` counts pilots
    queued or running; ``unknown`` counts pilots whose state the scheduler could
    not tell. While any state is unknown nothing is submitted: a second pilot
    for one backlog costs a queue slot, a wrong guess costs nothing but time.
    ``min_pilots`` keeps that many queued or running even without a backlog, so
    the first job of a stream does not pay a whole queue wait (at the price of
    the GPU time those pilots hold idle).
    """
    if unknown:
        return 0
    wanted = max(min_pilots, pilots_wanted(backlog, max_pilots, backlog_per_pilot))
    return max(0, wanted - active)


def resubmit_ahead(backlog: int, remaining: list[float], pending: int, lead: float,
                   max_pilots: int = 1, backlog_per_pilot: int = 0) -> int:
    """Replacement pilots to submit now, ahead of running pilots' walltimes.

    ``remaining`` holds the seconds each running pilot has left before its
    walltime; one within ``lead`` of the end is expiring. While backlog remains,
    each expiring pilot the backlog still deserves gets a replacement, so the
    next queue wait overlaps the tail of the current pilot instead of following
    it. Pilots already ``pending`` (queued, not yet started) count as
    replacements. ``lead <= 0`` turns this off.
    """
    if lead <= 0 or backlog <= 0:
        return 0
    expiring = sum(1 for left in remaining if left <= lead)
    wanted = min(expiring, pilots_wanted(backlog, max_pilots, backlog_per_pilot))
    return max(0, wanted - pending)


def may_requeue_lost(lost: int, max_attempts: int) -> bool:
    """A job whose pilot died under it (not at the pilot's walltime) goes back to the queue
    while it has been lost fewer than ``max_attempts`` times, this time included."""
    return lost < max_attempts


def may_requeue_released(released: int, max_releases: int) -> bool:
    """A job a stopping pilot gave back (walltime warning, scheduler stop) goes back to the
    queue while it has been released fewer than ``max_releases`` times, this one included.
    Past that it ends in error: it does not fit a pilot's usable time, so its description
    should declare a ``walltime`` (or the pilot's be raised)."""
    return released < max_releases
