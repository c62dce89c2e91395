"""Pilot policy: how many pilots to submit for a backlog, and when a job is given up.

Kept free of I/O so the submitter and the simulator (``hpc-batch simulate``)
decide with the very same code.
"""

from __future__ import annotations

import math

from hpc_worker.decisions import release_margin


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


def stale_after(heartbeat: float, grace: float) -> float:
    """Seconds after its last heartbeat a pilot counts as dead: three missed beats plus the
    pilot's ``grace``. A claim held by a pilot silent for longer is reclaimed, so no job
    stays ``claimed`` without a live pilot for longer than this plus one submitter pass."""
    return 3.0 * heartbeat + grace


def may_retry_collect(failures: int, since_first: float, max_tries: int = 5,
                      max_age: float = 3600.0) -> bool:
    """A finished job whose outputs could not be fetched (disk full, transfer error) keeps its
    HPC-side files and is fetched again on later passes: while it has failed fewer than
    ``max_tries`` times (this one included) or less than ``max_age`` seconds have passed since
    the first failure. Past both it ends in error, naming the file."""
    return failures < max_tries or since_first < max_age


def released_message(count: int, max_releases: int, pilot: str) -> str:
    """The error of a job past ``max_releases``: why, and what to declare."""
    return ("Job was given back by a stopping pilot %d time(s) (max_releases = %d; the last "
            "time by %s): it does not fit in the time a pilot has left. Declare its "
            "`walltime:` in the description, so a pilot starts it only when it can finish, "
            "or raise [pilot] walltime" % (count, max_releases, pilot))


def lost_message(count: int, max_attempts: int, pilot: str, cause: str) -> str:
    """The error of a job whose pilot died under it ``max_attempts`` times."""
    return ("Job lost its pilot %d time(s) (max_attempts = %d); the last one, %s, %s"
            % (count, max_attempts, pilot, cause))


def usable_time(pilot_walltime: float, grace: float) -> float:
    """Seconds a fresh pilot can run jobs: its walltime less the margin at which it gives
    back what still runs (the pilot's own ``release_margin``)."""
    return pilot_walltime - release_margin(pilot_walltime, grace)


def may_start_again(needed: float | None, pilot_walltime: float, grace: float) -> bool:
    """A job given back can start again only while what it needs (its declared walltime,
    else the longest an earlier attempt ran before it was given back) fits a fresh pilot's
    usable time, less a slack for the pilot's own start (a tenth, at most a minute).

    Otherwise no pilot would ever take it: each one leaves it in the queue, and pilots
    would be submitted for it forever. It ends in error at once instead.
    """
    if needed is None:
        return True
    usable = usable_time(pilot_walltime, grace)
    return needed <= usable - min(60.0, 0.1 * usable)


def never_fits_message(needed: float, pilot_walltime: float, grace: float) -> str:
    """The error of a job that needs more than any pilot can give."""
    return ("Job ran %.0fs before a stopping pilot gave it back, and a pilot can run jobs for "
            "at most %.0fs ([pilot] walltime %.0fs less the release margin): no pilot can "
            "finish it. Declare its `walltime:` in the description if it is shorter than "
            "that, or raise [pilot] walltime" % (
                needed, usable_time(pilot_walltime, grace), pilot_walltime))


def release_verdict(released: int, max_releases: int, needed: float | None,
                    pilot_walltime: float, grace: float, pilot: str) -> str | None:
    """A job a stopping pilot gave back (``released`` times, this one included; ``needed``
    as in :func:`may_start_again`): None while it goes back to the queue, else the error
    it ends with. The submitter and the simulator both decide with this."""
    if not may_requeue_released(released, max_releases):
        return released_message(released, max_releases, pilot)
    if not may_start_again(needed, pilot_walltime, grace):
        return never_fits_message(needed or 0.0, pilot_walltime, grace)
    return None
