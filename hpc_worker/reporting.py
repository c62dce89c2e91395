"""Reporting jobs that ended (their results written, made durable together, published)
and the pilot itself (its heartbeat).

A result must be on disk before its done marker says it is there. One ``fsync`` per
result, each right after its write, costs a file system commit per job on a journalled
or shared file system (measured on a journalled ext4, 3,000 jobs of ``true``: 203-224
jobs/s end to end that way, 294-309 with no ``fsync`` at all, 264-283 this way). The
pilot reports the jobs whose settle time is over together: for each, its files published
and its result appended to the job's journal (``journal.py``); then the results made
durable together (``durable.sync_files``: the write-back of all started, then an
``fsync`` each); then each claim moved to ``done/``. A batch takes about half a millisecond
a job, longer than a short job runs: between its steps the pilot's ``between`` starts the
next job of a slot that freed meanwhile, so no slot waits for the whole batch.

Standard library only, Python 3.8.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import TYPE_CHECKING, Callable, List, Optional, Tuple

from . import durable, gpu
from . import protocol as p
from .jobrun import HOST, JobRun
from .records import Heartbeat, Result
from .states import HeartbeatState, ReleaseReason

if TYPE_CHECKING:
    from .pilot import Pilot

log = logging.getLogger(__name__)
GATHER = 0.05  # seconds a settled job may wait, while others run, to be reported with more
Failed = List[Tuple[JobRun, OSError]]
Written = List[Tuple[JobRun, Result]]


def due_at(settling: List[JobRun], others_running: bool) -> Optional[float]:
    """When the settled jobs are reported next (None: none is settling): when the first
    one's settle time is over; while other jobs run, GATHER seconds later, so that the
    jobs ending meanwhile are reported with it."""
    if not settling:
        return None
    first = min(job.settle_until or 0 for job in settling)
    return first + GATHER if others_running else first


def report(jobs: List[JobRun], scheduler_id: str, alloc: gpu.Allocation, now: float,
           between: Callable[[], None] = lambda: None) -> Tuple[int, List[str]]:
    """(jobs reported, keys of the jobs that could not be: each was given back, released
    as REPORT_FAILED, so it is never held by a live pilot for ever). ``between`` is called
    after each result written and each made durable."""
    failed: Failed = []
    written: Written = []
    for job in jobs:
        try:
            result = job.write_result(scheduler_id, gpu.job_metrics(
                alloc, job.gpu, job.elapsed(now), job.usage))
        except OSError as exc:  # a full disk, its directory withdrawn under us
            failed.append((job, exc))
            continue
        if result is not None:  # else its claim was taken: not ours to report
            written.append((job, result))
        between()
    errors = durable.sync_files([job.result_path for job, _ in written], between)
    done = 0
    for job, result in written:
        error = errors.get(job.result_path)
        if error is not None:
            failed.append((job, error))
            continue
        try:
            done += job.finish(result)
        except OSError as exc:
            failed.append((job, exc))
    for job, error in failed:
        log.error("(%s) cannot report its result: %s", job.key, error)
        with contextlib.suppress(OSError):
            job.release(ReleaseReason.REPORT_FAILED)
    return done, [job.key for job, _ in failed]


def heartbeat(pilot: "Pilot", state: HeartbeatState, now: float) -> None:
    """Write ``pilot``'s heartbeat (``W/pilots/PILOT.hb``): what it runs, what it
    did, its GPUs' busy and idle time. A write that fails is logged, never fatal."""
    beat = Heartbeat(
        pilot=pilot.s.pilot_id, state=state, epoch=now, scheduler_id=pilot.s.scheduler_id,
        host=HOST, pid=os.getpid(), time=p.now_iso(), started=pilot.started,
        deadline=pilot.deadline, running=sorted(
            job.key for job in list(pilot.running.values()) + pilot.settling),
        done=pilot.done_count, slots=pilot.alloc.slots, gpus=list(pilot.alloc.devices),
        slots_per_gpu=pilot.alloc.slots_per_gpu, release_at=pilot.release_at,
        gpu_idle_seconds=round(pilot.ledger.idle, 3),
        gpu_busy_seconds=round(pilot.ledger.busy, 3))
    try:
        p.replace_file(p.pilot_path(pilot.s.root, pilot.s.pilot_id, p.HEARTBEAT),
                       beat.dumps() + "\n")
    except OSError as exc:  # a file system hiccup must not end the pilot
        log.warning("cannot write heartbeat: %s", exc)
