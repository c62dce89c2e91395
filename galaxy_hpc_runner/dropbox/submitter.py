"""One submitter pass: receive, stage, follow, collect, keep a pilot queued.

The cron dropbox (``hpc-batch submitter``) and the Galaxy batcher thread both
drive this class; neither has a copy of its logic.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from galaxy_hpc_runner.backends import Backend, PilotState, PilotStatus, make_backend
from galaxy_hpc_runner.config import Config
from galaxy_hpc_runner.dropbox import description as d
from galaxy_hpc_runner.dropbox.pilots import PilotManager
from galaxy_hpc_runner.dropbox.policy import pilots_to_submit, resubmit_ahead
from galaxy_hpc_runner.dropbox.spool import (
    CLAIMED,
    FINISHED,
    RECEIVED,
    STAGED,
    JobRecord,
    PilotRecord,
    Spool,
)
from galaxy_hpc_runner.dropbox.staging import QueueView, Stager
from galaxy_hpc_runner.errors import (
    HpcBatchError,
    JobError,
    RemoteFileMissing,
    SchedulerError,
    TransportError,
)
from galaxy_hpc_runner.transport.base import LocalTransport, Transport
from hpc_worker import protocol as p
from hpc_worker.states import Reason, ResultStatus

log = logging.getLogger(__name__)
PRUNE_EVERY = 3600.0  # seconds between prunes of old finished records


@dataclass
class PassReport:
    received: int = 0
    rejected: int = 0
    staged: int = 0
    finished: int = 0
    requeued: int = 0
    pilots_submitted: int = 0
    errors: list[str] = field(default_factory=list)


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
        self._layout_ready = False
        self._last_prune = -PRUNE_EVERY

    # -- the pass --------------------------------------------------------------------
    def run_pass(self) -> PassReport:
        """One lock-protected pass; HPC-side trouble is reported, never raised."""
        report = PassReport()
        with self.spool.lock(self.cfg.lock_timeout):
            self._receive_all(report)
            try:
                self._hpc_steps(report)
            except (TransportError, SchedulerError) as exc:
                log.error("pass stopped early, will continue next pass: %s", exc)
                report.errors.append(str(exc))
                self.transport.close()
            self._write_pass_status(report)
            if time.monotonic() - self._last_prune > PRUNE_EVERY:
                self._last_prune = time.monotonic()
                self.spool.prune(self.cfg.keep_finished_days)
        return report

    def _hpc_steps(self, report: PassReport) -> None:
        if not self._layout_ready:
            self.stager.ensure_layout()
            self._layout_ready = True
        records = self.spool.active()
        view = self.stager.queue_view()
        to_stage = [rec for rec in records if rec.state == RECEIVED]
        self.stager.begin_pass(to_stage)
        try:
            for rec in to_stage:
                self._stage(rec, view, report)
        finally:
            self.stager.end_pass()
        for rec in records:
            if rec.state in (STAGED, CLAIMED):
                self._follow(rec, view, report)
            elif rec.state == FINISHED:  # a pass that died before its cleanup
                self._cleanup(rec)
        self._manage_pilots(report)

    def loop(self, stop: threading.Event, interval: float | None = None,
             wake: threading.Event | None = None,
             before_pass: Callable[[], None] | None = None) -> None:
        """Passes until ``stop`` is set: the cron-less mode and the Galaxy batcher.

        ``wake`` cuts the pause short (new work, a cancel); ``before_pass`` runs first
        in every round. The loop outlives any one bad pass.
        """
        while not stop.is_set():
            if wake is not None:
                wake.clear()
            try:
                if before_pass is not None:
                    before_pass()
                self.run_pass()
            except HpcBatchError as exc:
                log.error("submitter pass failed: %s", exc)
            except Exception:
                log.exception("unexpected error in a submitter pass")
            (wake or stop).wait(self.cfg.interval if interval is None else interval)

    def _write_pass_status(self, report: PassReport) -> None:
        p.write_json(str(self.spool.path / "last_pass.json"), {
            "time": p.now_iso(), "ok": not report.errors, "errors": report.errors,
            "report": report.__dict__})

    # -- receive ---------------------------------------------------------------------
    def _receive_all(self, report: PassReport) -> None:
        names = os.listdir(self.cfg.dropbox)
        answered = {n[: -len(d.FINISHED_SUFFIX)] for n in names if n.endswith(d.FINISHED_SUFFIX)}
        active, finished = self.spool.active_names(), self.spool.finished_names()
        for fname in sorted(names):
            if not fname.endswith(d.SUFFIX) or fname.startswith("."):
                continue
            name = fname[: -len(d.SUFFIX)]
            if name in active or name in answered:
                continue
            if name in finished:  # its result was taken away and the job dropped again
                self.spool.retire(name)
            self._receive(name, report)

    def _receive(self, name: str, report: PassReport) -> None:
        path = self.cfg.dropbox / (name + d.SUFFIX)
        doc: dict[str, Any] | None = None
        try:
            text = path.read_text(encoding="utf-8")
            doc = d.parse(text)
            job = d.validate(name, doc, self.cfg)
        except FileNotFoundError:
            return
        except (JobError, UnicodeDecodeError, OSError) as exc:
            if self._maybe_incomplete(path):
                return
            rec = self.spool.create(name, doc)
            self._finish(rec, d.job_node(ResultStatus.ERROR, "Invalid job description: %s" % exc,
                                         reason=Reason.INVALID))
            report.rejected += 1
            return
        meta = {"inputs": {job.basenames[k]: v for k, v in job.inputs.items()},
                "outputs": {job.basenames[k]: v for k, v in job.outputs.items()},
                "script_text": job.rendered, "pilot_meta": job.meta()}
        self.spool.create(name, doc, meta)
        report.received += 1

    def _maybe_incomplete(self, path: os.PathLike[str]) -> bool:
        """A young file that fails may still be being written: look again next pass."""
        try:
            return time.time() - os.stat(path).st_mtime < self.cfg.settle
        except FileNotFoundError:
            return True

    # -- stage and follow ------------------------------------------------------------
    def _stage(self, rec: JobRecord, view: QueueView, report: PassReport) -> None:
        if not view.has(rec.name):  # else it was staged before a crash: keep it
            missing = [src for src in rec.meta["inputs"].values() if not os.path.isfile(src)]
            if missing:
                self._finish(rec, d.job_node(ResultStatus.ERROR, "Input vanished before staging: %s"
                                             % ", ".join(missing), reason=Reason.INVALID))
                return
            self.stager.stage(rec)
            view.ready.add(rec.name)
        self.spool.transition(rec, STAGED)
        report.staged += 1

    def _follow(self, rec: JobRecord, view: QueueView, report: PassReport) -> None:
        key = rec.name
        if key in view.done:
            self._finish(rec, self._collect(rec))
            report.finished += 1
        elif key in view.claimed:
            if rec.state != CLAIMED or rec.pilot != view.claimed[key]:
                self.spool.transition(rec, CLAIMED, pilot=view.claimed[key])
        elif key in view.ready:
            if rec.state == CLAIMED:
                self.spool.transition(rec, STAGED, message="released by pilot %s" % rec.pilot)
        elif not self.stager.marker_exists(key):  # look twice: markers move while we list
            log.warning("(%s) has no queue marker on the HPC side: staging it again", key)
            self.spool.transition(rec, RECEIVED, message="queue marker missing")

    def _collect(self, rec: JobRecord) -> dict[str, Any]:
        """The result node; a result that vanished or broke on the HPC side is an error."""
        try:
            return self.stager.collect(rec)
        except (RemoteFileMissing, ValueError, KeyError) as exc:
            log.error("(%s) unreadable result on the HPC side: %s", rec.name, exc)
            return d.job_node(ResultStatus.ERROR, "The job's result could not be read on the "
                              "HPC side: %s" % exc, reason=Reason.LOST)

    def _finish(self, rec: JobRecord, node: dict[str, Any]) -> None:
        """Result file first (outputs are already in place), then the record, then cleanup."""
        result = self.cfg.dropbox / (rec.name + d.FINISHED_SUFFIX)
        p.atomic_write(str(result), d.result_document(rec.doc, node))
        self.spool.transition(rec, FINISHED, status=node["status"], message=node["message"],
                              rc=node.get("rc"))
        if node.get("reason") != Reason.INVALID:
            self._cleanup(rec)
        else:
            self.spool.archive(rec)

    def _cleanup(self, rec: JobRecord) -> None:
        try:
            self.stager.cleanup(rec.name)
        except TransportError as exc:
            log.warning("(%s) cleanup postponed: %s", rec.name, exc)
            return
        self.spool.archive(rec)

    # -- pilots ----------------------------------------------------------------------
    def _manage_pilots(self, report: PassReport) -> None:
        known = self.pilots.refresh()
        view = self.stager.queue_view()  # fresh: collecting may have taken a while
        for pilot, status in known:
            if status.state is PilotState.GONE:
                report.requeued += self._reclaim(pilot, status, view)
        count = self._pilots_wanted_now(known, len(view.ready))
        if count and self.pilots.backoff_left() > 0:
            report.errors.append("pilots failed to start; next try in %.0fs (see hpc-batch "
                                 "status)" % self.pilots.backoff_left())
            return
        for _ in range(count):
            self.pilots.submit()
            report.pilots_submitted += 1

    def _pilots_wanted_now(self, known: list[tuple[PilotRecord, PilotStatus]],
                           backlog: int) -> int:
        """The shared policy: for the backlog, the minimum, and ahead of walltimes."""
        cfg = self.cfg
        states = [s.state for _, s in known]
        pending = states.count(PilotState.PENDING)
        count = pilots_to_submit(backlog, pending + states.count(PilotState.RUNNING),
                                 states.count(PilotState.UNKNOWN), cfg.max_pilots,
                                 cfg.backlog_per_pilot, cfg.min_pilots)
        if cfg.resubmit_ahead > 0 and not count:
            remaining = self.pilots.remaining(known)
            count = resubmit_ahead(backlog, remaining, pending, cfg.resubmit_ahead,
                                   cfg.max_pilots, cfg.backlog_per_pilot)
        return count

    def _reclaim(self, pilot: PilotRecord, status: PilotStatus, view: QueueView) -> int:
        """Claims a gone pilot still holds go back to the queue (or fail after max_attempts)."""
        requeued = 0
        for key, holder in list(view.claimed.items()):
            rec = self.spool.get(key)
            if holder != pilot.pilot_id or rec is None or rec.state == FINISHED:
                continue
            del view.claimed[key]
            if self.stager.has_result(key):  # it ended; only the done marker was missing
                if self.stager.move_claim(key, holder, p.DONE):
                    view.done.add(key)
            elif self._may_retry(rec, status):
                if self.stager.move_claim(key, holder, p.READY):
                    view.ready.add(key)
                    requeued += 1
                    self.spool.transition(
                        rec, STAGED, lost=rec.lost + (0 if status.timed_out else 1),
                        message="pilot %s gone (%s): requeued" % (pilot.pilot_id, status.reason))
            else:
                self.stager.drop_claim(key, holder)
                self._finish(rec, d.job_node(
                    ResultStatus.ERROR, "Job lost its pilot %d time(s) (max_attempts = %d); the "
                    "last one, %s, ended: %s" % (rec.lost + 1, self.cfg.pilot.max_attempts,
                                       pilot.pilot_id, status.reason or "unknown"),
                    reason=Reason.LOST))
        return requeued

    def _may_retry(self, rec: JobRecord, status: PilotStatus) -> bool:
        return status.timed_out or rec.lost + 1 < self.cfg.pilot.max_attempts

    # -- cancel ----------------------------------------------------------------------
    def cancel(self, name: str) -> str:
        """Withdraw a waiting job, or ask its pilot to kill a running one."""
        with self.spool.lock(self.cfg.lock_timeout):
            rec = self.spool.get(name)
            if rec is None or rec.state == FINISHED:
                return "not active"
            if rec.state == RECEIVED or self.stager.withdraw(name):
                self._finish(rec, d.job_node(ResultStatus.ERROR, "Cancelled before it started",
                                             reason=Reason.CANCELLED))
                return "withdrawn"
            self.stager.request_cancel(name)
            return "cancel requested"
