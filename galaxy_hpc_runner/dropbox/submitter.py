"""One submitter pass: receive, stage, follow, collect, keep a pilot queued.

The cron dropbox (``hpc-batch submitter``) and the Galaxy batcher thread both
drive this class; neither has a copy of its logic. Every pass records its
outcome in ``SPOOL/last_pass.json``, and :attr:`PassReport.ok` is False when
anything went wrong (the HPC side or the scheduler could not be reached, a
spool record is unreadable, outputs could not be fetched, an unexpected error):
``hpc-batch submitter --once`` exits non-zero then.

Retries follow :mod:`galaxy_hpc_runner.dropbox.policy`, as in the simulator: a job
whose pilot died is requeued while ``may_requeue_lost``, one a stopping pilot gave
back unless ``release_verdict`` (releases counted from ``runs.jsonl``) ends it, and
failed collections are retried while ``may_retry_collect`` (``collect.py``).

Cost follows what changed: a pass receives at most :data:`CHUNK` new descriptions
(``PassReport.more`` asks the loop for the next pass at once), stages them in chunks of
that size and asks for pilots as soon as the first chunk is in the ready queue. The
loop (``watch.py``) wakes on a change of the dropbox or of ``W/queue/done``.

Durability (the ordering argument). Spool records and result files are written
atomically (temp + rename) but without a ``fsync`` each; a killed process loses
nothing by that. Against an OS crash the pass orders its steps so that a lost unsynced
write only ever takes a job back to a state the pass already handles: (1) a chunk's job
files are synced (one ``syncfs``) before its ready markers appear; (2) the records and
results of finished jobs are synced (``Spool.barrier``) before their HPC files are
removed, so a lost result is collected again from the HPC side, never lost; (3) steps
that take a marker back (withdraw, requeue) write their record with ``sync`` first.
A lost ``received``/``staged`` record re-receives the job from the dropbox, and staging
keeps a job whose marker already exists, so nothing runs twice.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from galaxy_hpc_runner.backends import Backend, make_backend
from galaxy_hpc_runner.config import Config
from galaxy_hpc_runner.dropbox import control, policy
from galaxy_hpc_runner.dropbox import description as d
from galaxy_hpc_runner.dropbox.collect import Collector
from galaxy_hpc_runner.dropbox.jobfiles import read_journal, transport_reader
from galaxy_hpc_runner.dropbox.liveness import Liveness
from galaxy_hpc_runner.dropbox.metrics import PassStatus
from galaxy_hpc_runner.dropbox.pass_pilots import PilotSteps
from galaxy_hpc_runner.dropbox.pilots import PilotManager
from galaxy_hpc_runner.dropbox.receive import DropboxReader
from galaxy_hpc_runner.dropbox.spool import (
    CLAIMED,
    FINISHED,
    RECEIVED,
    STAGED,
    JobRecord,
    Spool,
    SpoolError,
)
from galaxy_hpc_runner.dropbox.staging import QueueView, Stager
from galaxy_hpc_runner.errors import (
    SchedulerError,
    TransportError,
)
from galaxy_hpc_runner.transport.base import LocalTransport, Transport
from hpc_worker import protocol as p
from hpc_worker.decisions import time_needed
from hpc_worker.records import ProtocolError, learned_runtime
from hpc_worker.states import Reason, ResultStatus

log = logging.getLogger(__name__)
PRUNE_EVERY = 3600.0  # seconds between prunes of old finished records
CHUNK = 256  # descriptions received, and jobs staged per sync, in one step of a pass
LATER_CLEAN = 4 * CHUNK  # finished jobs whose HPC files may wait while others are in flight


@dataclass
class PassReport:
    received: int = 0
    rejected: int = 0
    staged: int = 0
    finished: int = 0
    requeued: int = 0
    pilots_submitted: int = 0
    errors: list[str] = field(default_factory=list)
    more: bool = False  # work left for the next pass: descriptions (taken CHUNK at a time)
    #                     or finished jobs' HPC files (Submitter.clean_slice at a time)

    @property
    def ok(self) -> bool:
        """False when the pass met any error: ``submitter --once`` exits non-zero then."""
        return not self.errors


def make_transport(cfg: Config) -> Transport:
    if cfg.transport_type == "ssh":
        from galaxy_hpc_runner.transport.ssh import SshTransport

        return SshTransport.from_config(cfg)  # type: ignore[no-any-return]
    return LocalTransport()


class Submitter:
    def __init__(self, cfg: Config, transport: Transport | None = None,
                 backend: Backend | None = None) -> None:
        self.cfg = cfg
        self.spool = Spool(cfg.spool)
        self.transport = transport or make_transport(cfg)
        self.backend = backend or make_backend(cfg, self.transport)
        self.stager = Stager(cfg, self.transport)
        self.pilots = PilotManager(cfg, self.spool, self.backend, self.transport)
        self.liveness = Liveness(cfg, self.transport, self.backend)
        self.pilot_steps = PilotSteps(self)
        self.collector = Collector(self.spool, self.stager)
        self.control = control.Control()  # read again at the start of every pass
        self._layout_ready = False
        # finished, HPC files removed after a barrier; while other jobs are in flight at
        # most LATER_CLEAN of them wait, so that a burst's results are not held up by it
        self._to_clean: dict[str, JobRecord] = {}
        self._batching = False  # in the HPC steps of a pass: cleanups wait for its barrier
        self.clean_slice = 0  # finished jobs' files removed per quiet pass (0: all; the loop
        #                       sets a slice, so that a new job waits for no long removal)
        self._dropbox = DropboxReader(cfg, self.spool, self._finish)
        self.status = PassStatus(cfg, self.spool)  # last_pass.json and the metrics file

    # -- the pass --------------------------------------------------------------------
    def run_pass(self) -> PassReport:
        """One lock-protected pass; every problem is reported in the result, never raised."""
        report = PassReport()
        started = time.monotonic()
        with self.spool.lock(self.cfg.lock_timeout):
            self.control = control.current(self.spool.path)  # hpc-batch pause/drain/resume
            self._guarded(report, "reading the dropbox", self._receive_all)
            self._batching = True
            try:
                self._guarded(report, "on the HPC side", self._hpc_steps)
            finally:
                self._batching = False
            self._guarded(report, "writing the received jobs", lambda _: self.spool.write_held())
            self._guarded(report, "cleaning up finished jobs", self._clean_when_quiet)
            self._guarded(report, "pruning the spool", lambda _: self.spool.prune_if_due(
                self.cfg.keep_finished_days, PRUNE_EVERY))
            report.errors.extend(self.spool.take_problems())
            self.status.after_pass(dict(time=p.now_iso(), ok=report.ok, errors=report.errors,
                                        report=dict(report.__dict__)),
                                   report.ok, time.monotonic() - started)
        return report

    def _guarded(self, report: PassReport, what: str,
                 step: Callable[[PassReport], object]) -> None:
        """Run one step of the pass; any error ends the step and fails the pass."""
        try:
            step(report)
        except (TransportError, SchedulerError) as exc:
            log.error("pass stopped %s, will continue next pass: %s", what, exc)
            report.errors.append("%s: %s" % (what, exc))
            self.transport.close()
        except Exception as exc:  # a pass always records its outcome
            log.exception("unexpected error %s", what)
            report.errors.append("unexpected error %s: %s: %s" % (what, type(exc).__name__, exc))
            self.transport.close()

    def _hpc_steps(self, report: PassReport) -> None:
        if not self._layout_ready:
            self.stager.ensure_layout()
            self._layout_ready = True
        view = self.stager.queue_view()
        unclean = self.spool.names(FINISHED)  # a pass that died before its cleanup
        to_stage = sorted(self.spool.names(RECEIVED)) if self.control.stage_allowed else []
        self.stager.begin_pass(src for rec in self._records(to_stage)  # paused: they wait
                               for src in rec.meta["inputs"].values())
        try:
            for start in range(0, len(to_stage), CHUNK):
                self._stage_chunk(self._records(to_stage[start:start + CHUNK]), view, report)
                if start == 0 and len(to_stage) > CHUNK:  # a backlog: pilots start now
                    self._guarded(report, "asking for pilots", self._manage_pilots)
        finally:
            self.stager.end_pass()
        for rec in self._records(sorted(self._to_follow(view))):
            if rec.state in (STAGED, CLAIMED):
                self._follow(rec, view, report)
        self._to_clean.update((rec.name, rec) for rec in self._records(
            sorted(unclean - self._to_clean.keys())))
        self._manage_pilots(report)

    def _to_follow(self, view: QueueView) -> set[str]:
        """The staged and claimed jobs whose queue marker says something new: done, claimed
        by a pilot the spool does not know of yet, back in ready/, or gone (set operations
        over the names: nothing per job in a quiet pass)."""
        claimed = self.spool.names(CLAIMED)
        active = self.spool.names(STAGED) | claimed
        out = (view.done & active) | (view.ready & claimed)
        out |= active - view.ready - view.claimed.keys() - view.done
        for name in view.claimed.keys() & active:
            entry = self.spool.entry(name)
            if entry is None or entry.state != CLAIMED or entry.pilot != view.claimed[name]:
                out.add(name)
        return out

    def _records(self, names: list[str]) -> Iterator[JobRecord]:
        """The whole records of ``names``, read when needed; an unreadable one is skipped
        (the spool reports it by name in every pass)."""
        for name in names:
            try:
                rec = self.spool.get(name)
            except SpoolError:
                continue
            if rec is not None:
                yield rec

    def _stage_chunk(self, chunk: Iterable[JobRecord], view: QueueView, report: PassReport
                     ) -> None:
        """Files of every job in the chunk, one sync, then their ready markers and records."""
        placed = [rec for rec in chunk if self._place(rec, view)]
        self.spool.barrier(self.stager.take_unsynced())
        for rec in placed:
            if not view.has(rec.name):
                self.stager.publish(rec.name)
                view.ready.add(rec.name)
            self.spool.transition(rec, STAGED)
            report.staged += 1

    def _clean_when_quiet(self, report: PassReport | None = None) -> None:
        """Removing a finished job's HPC files (a tree of about 15 entries) costs more
        than collecting it: while jobs are still staged or claimed, up to LATER_CLEAN
        finished ones wait, and the pass goes on to stage and collect the others; the
        rest are removed as soon as nothing is in flight (under the loop ``clean_slice``
        of them a pass, the next pass at once, receiving first). A record stays FINISHED
        until its files are gone, so a restarted submitter removes them too."""
        busy = bool(self.spool.names(STAGED) or self.spool.names(CLAIMED))
        keep = LATER_CLEAN if busy else 0
        over = len(self._to_clean) - keep
        if over > 0:
            self._clean_finished(min(over, self.clean_slice) if self.clean_slice and not busy
                                 else over)
            if report is not None and len(self._to_clean) > keep:
                report.more = True  # the loop goes on at once, a new job first
        else:  # the pass's results and records are durable when it ends, as before
            self.spool.barrier(self.stager.take_unsynced())

    def _clean_finished(self, count: int | None = None) -> None:
        """HPC files of finished jobs go once their records and results are durable:
        ``count`` of them (the oldest first), all by default."""
        if not self._to_clean:
            return
        self.spool.barrier(self.stager.take_unsynced())
        names = list(self._to_clean)[:count]
        for name in names:
            self._cleanup(self._to_clean.pop(name))

    def loop(self, stop: threading.Event, interval: float | None = None,
             wake: threading.Event | None = None,
             before_pass: Callable[[], None] | None = None) -> None:
        """Passes until ``stop`` is set: the cron-less mode and the Galaxy batcher.

        A pass starts as soon as the dropbox or the HPC done queue changes (``watch.py``),
        else every ``interval`` seconds; ``wake`` cuts the pause short too (a cancel);
        ``before_pass`` runs first in every round. The loop outlives any one bad pass.
        """
        from galaxy_hpc_runner.dropbox import watch

        watch.run_loop(self, stop, self.cfg.interval if interval is None else interval,
                       wake, before_pass)

    # -- receive ---------------------------------------------------------------------
    def _receive_all(self, report: PassReport) -> None:
        """New descriptions, CHUNK at most (a quarter of that while fewer than CHUNK jobs
        wait in the ready queue: the pilots get them sooner); nothing to list while the
        dropbox is quiet."""
        waiting = len(self.spool.names(STAGED))
        self._dropbox.receive(report, CHUNK if waiting >= CHUNK else max(1, CHUNK // 4),
                              hold=self.control.stage_allowed)  # staged in this pass

    # -- stage and follow ------------------------------------------------------------
    def _stage(self, rec: JobRecord, view: QueueView, report: PassReport) -> None:
        """Stage one job (a chunk of one)."""
        self._stage_chunk([rec], view, report)

    def _place(self, rec: JobRecord, view: QueueView) -> bool:
        """The job's files on the HPC side; False when it ended instead (no marker due)."""
        if not view.has(rec.name):  # else it was staged before a crash: keep it
            missing = [src for src in rec.meta["inputs"].values() if not os.path.isfile(src)]
            if missing:
                self._finish(rec, d.job_node(ResultStatus.ERROR, "Input vanished before staging: %s"
                                             % ", ".join(missing), reason=Reason.INVALID))
                return False
            if not self.stager.stage_files(rec):  # refused: its error result is in done/
                view.done.add(rec.name)
        return True

    def _follow(self, rec: JobRecord, view: QueueView, report: PassReport) -> None:
        key = rec.name
        if key in view.done:
            self._collect_and_finish(rec, report)
        elif key in view.claimed:
            if rec.state != CLAIMED or rec.pilot != view.claimed[key]:
                self.spool.transition(rec, CLAIMED, pilot=view.claimed[key])
        elif key in view.ready:
            if rec.state == CLAIMED:
                self._released(rec, view, report)
        elif self.stager.marker_exists(key):  # look twice: markers move while we list
            return
        elif rec.withdrawn:  # a pass withdrew it and died before its result was written
            self._finish(rec, d.job_node(ResultStatus.ERROR, rec.message or "Withdrawn",
                                         reason=Reason(rec.withdrawn)))
        else:
            log.warning("(%s) has no queue marker on the HPC side: staging it again", key)
            self.spool.transition(rec, RECEIVED, message="queue marker missing")

    def _released(self, rec: JobRecord, view: QueueView, report: PassReport) -> None:
        """A stopping pilot gave the job back: requeued, or an error past max_releases or
        when no fresh pilot could ever finish it."""
        count, message = self._release_verdict(rec, rec.pilot)
        if message is None:
            self.spool.transition(rec, STAGED, message="released by pilot %s (%d of "
                                  "max_releases = %d)" % (rec.pilot, count,
                                                          self.cfg.pilot.max_releases))
        elif self._withdraw_and_fail(rec, Reason.RELEASED, message):
            view.ready.discard(rec.name)
            report.finished += 1

    def _withdraw_and_fail(self, rec: JobRecord, reason: Reason, message: str) -> bool:
        """Take a queued job out of the queue, then end it; safe to kill at any instant.
        False when a pilot claimed it meanwhile: it runs, and its end decides."""
        self.spool.note(rec, withdrawn=str(reason), message=message)
        if not self.stager.withdraw(rec.name):
            self.spool.note(rec, withdrawn="", message="")
            return False
        self._finish(rec, d.job_node(ResultStatus.ERROR, message, reason=reason))
        return True

    def _release_verdict(self, rec: JobRecord, pilot: str, unwritten: int = 0
                         ) -> tuple[int, str | None]:
        """Times the job was given back (the release lines at the end of its journal, pilots
        that hit their hard walltime holding it, ``unwritten`` more now) and the policy's
        verdict: None to requeue it, else its error."""
        try:
            runs = read_journal(transport_reader(self.transport,
                                                 self.stager.job_path(rec.name))).runs
        except ProtocolError:  # an older pilot's broken result.json: no run line read
            runs = []
        count = rec.walltime_kills + unwritten + sum(1 for run in runs if run.released)
        declared = (rec.meta.get("pilot_meta") or {}).get("walltime")
        pc = self.cfg.pilot
        return count, policy.release_verdict(
            count, pc.max_releases, time_needed(declared, learned_runtime(runs)),
            pc.walltime, pc.grace, pilot)

    # -- collect and finish ----------------------------------------------------------
    def _collect_and_finish(self, rec: JobRecord, report: PassReport) -> None:
        node = self.collector.collect(rec, report.errors)
        if node is not None:  # else kept on the HPC side for the next pass
            self._finish(rec, node)
            report.finished += 1

    def _finish(self, rec: JobRecord, node: dict[str, Any]) -> None:
        """Result file first (outputs are already in place), then the record, then cleanup."""
        result = self.cfg.dropbox / (rec.name + d.FINISHED_SUFFIX)
        p.atomic_write(str(result), d.result_document(rec.doc, node), sync=False,
                       mode=self.stager.file_mode)
        self.spool.note_unsynced(self.cfg.dropbox)
        self.spool.transition(rec, FINISHED, status=node["status"], message=node["message"],
                              rc=node.get("rc"))
        if node.get("reason") != Reason.INVALID:
            self._to_clean[rec.name] = rec  # after the barrier (_clean_finished)
            if not self._batching:
                self._clean_when_quiet()
        else:
            self.spool.archive(rec)

    def _cleanup(self, rec: JobRecord) -> None:
        try:
            if rec.pilot:  # a claim a dead pilot left
                self.stager.drop_claim(rec.name, rec.pilot)
            self.stager.cleanup(rec.name)
        except TransportError as exc:
            log.warning("(%s) cleanup postponed: %s", rec.name, exc)
            return
        self.spool.archive(rec)

    # -- pilots ----------------------------------------------------------------------
    def _manage_pilots(self, report: PassReport) -> None:
        self.pilot_steps.manage(report)

    # -- cancel ----------------------------------------------------------------------
    def cancel(self, name: str) -> str:
        """Withdraw a waiting job, or ask its pilot to kill a running one."""
        with self.spool.lock(self.cfg.lock_timeout):
            try:
                return self._cancel(name)
            finally:
                self._clean_when_quiet()

    def _cancel(self, name: str) -> str:
        rec = self.spool.get(name)
        if rec is None or rec.state == FINISHED:
            return "not active"
        message = "Cancelled before it started"
        if rec.state == RECEIVED:
            self._finish(rec, d.job_node(ResultStatus.ERROR, message,
                                         reason=Reason.CANCELLED))
            return "withdrawn"
        self.spool.note(rec, withdrawn=str(Reason.CANCELLED), message=message)
        if self.stager.withdraw(name):
            self._finish(rec, d.job_node(ResultStatus.ERROR, message,
                                         reason=Reason.CANCELLED))
            return "withdrawn"
        self.spool.note(rec, withdrawn="", message="")
        self.stager.request_cancel(name)
        return "cancel requested"
