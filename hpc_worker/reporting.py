"""Reporting jobs that ended: their results written, made durable together, published.

A result must be on disk before its done marker says it is there. One ``fsync`` per
result, each right after its write, costs a file system commit per job on a journalled
or shared file system (measured on a journalled ext4, 3,000 jobs of ``true``: 203-224
jobs/s end to end that way, 294-309 with no ``fsync`` at all, 264-283 this way). The
pilot reports the jobs whose settle time is over together: for each, its files published
and its result appended to the job's journal (``journal.py``); then the results made
durable together (``durable.sync_files``: the write-back of all started, then an
``fsync`` each); then each claim moved to ``done/``.

Standard library only, Python 3.8.
"""

from __future__ import annotations

import contextlib
import logging
from typing import List, Optional, Tuple

from . import durable, gpu
from .jobrun import JobRun
from .records import Result
from .states import ReleaseReason

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


def report(jobs: List[JobRun], scheduler_id: str, alloc: gpu.Allocation,
           now: float) -> Tuple[int, List[str]]:
    """(jobs reported, keys of the jobs that could not be: each was given back, released
    as REPORT_FAILED, so it is never held by a live pilot for ever)."""
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
    errors = durable.sync_files([job.result_path for job, _ in written])
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
