"""The pilot part of a submitter pass: reclaim what dead pilots hold, keep pilots queued.

Claims of a pilot the scheduler calls gone, or that :mod:`.liveness` finds dead, go back
to the queue or end in error as :mod:`.policy` decides; then the pilots the policy wants
for every server's backlog are submitted (none while paused; queued ones cancelled while
draining).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from galaxy_hpc_runner.backends import PilotStatus
from galaxy_hpc_runner.dropbox import description as d
from galaxy_hpc_runner.dropbox import policy
from galaxy_hpc_runner.dropbox.spool import FINISHED, STAGED, JobRecord, PilotRecord, SpoolError
from galaxy_hpc_runner.dropbox.staging import QueueView
from hpc_worker import protocol as p
from hpc_worker.states import PilotState, Reason, ResultStatus

if TYPE_CHECKING:
    from galaxy_hpc_runner.dropbox.submitter import PassReport, Submitter

log = logging.getLogger(__name__)


class PilotSteps:
    """One submitter's pilot steps; it acts through the submitter's spool, stager and pilots."""

    def __init__(self, sub: Submitter) -> None:
        self.sub = sub

    def manage(self, report: PassReport) -> None:
        known = self.sub.pilots.refresh()
        if known and all(s.state is PilotState.UNKNOWN for _, s in known):
            report.errors.append("the scheduler could not be asked about %d pilot(s); nothing "
                                 "submitted (see the log)" % len(known))
        view = self.sub.stager.queue_view()  # fresh: collecting may have taken a while
        for pilot, status in known:
            if status.state is PilotState.GONE:
                report.requeued += self.reclaim(pilot.pilot_id, view, status.timed_out,
                                                 "ended: %s" % (status.reason or "no reason"))
        sub = self.sub
        dead = sub.liveness.dead_holders(view, known, sub.spool, sub.pilots.stale_or_gone)
        for holder, cause in dead.items():
            report.requeued += self.reclaim(holder, view, False, cause)
        if not self.sub.control.submit_allowed:
            self._let_pilots_go(known)
            return
        count = self._wanted_now(known, view.backlog)
        if count and self.sub.pilots.backoff_left() > 0:
            report.errors.append("pilots failed to start; next try in %.0fs (see hpc-batch "
                                 "status)" % self.sub.pilots.backoff_left())
            return
        for _ in range(count):
            self.sub.pilots.submit()
            report.pilots_submitted += 1

    def _let_pilots_go(self, known: list[tuple[PilotRecord, PilotStatus]]) -> None:
        """Paused: no new pilot. Draining: queued pilots are cancelled (running ones go on
        with their jobs and leave when idle), so the site empties for maintenance."""
        if not self.sub.control.cancel_idle_pilots:
            return
        for pilot, status in known:
            if status.state is PilotState.PENDING:
                log.info("draining: cancelling queued pilot %s", pilot.pilot_id)
                self.sub.backend.cancel(pilot.scheduler_id)

    def _wanted_now(self, known: list[tuple[PilotRecord, PilotStatus]],
                           backlog: int) -> int:
        """The shared policy: for the backlog, the minimum, and ahead of walltimes."""
        cfg = self.sub.cfg
        states = [s.state for _, s in known]
        pending = states.count(PilotState.PENDING)
        count = policy.pilots_to_submit(backlog, pending + states.count(PilotState.RUNNING),
                                        states.count(PilotState.UNKNOWN), cfg.max_pilots,
                                        cfg.backlog_per_pilot, cfg.min_pilots)
        if cfg.resubmit_ahead > 0 and not count:
            remaining = self.sub.pilots.remaining(known)
            count = policy.resubmit_ahead(backlog, remaining, pending, cfg.resubmit_ahead,
                                          cfg.max_pilots, cfg.backlog_per_pilot)
        return count

    def reclaim(self, holder: str, view: QueueView, walltime: bool, cause: str) -> int:
        """Claims a dead pilot still holds: requeued, or failed by the policy."""
        requeued = 0
        for key, pilot in list(view.claimed.items()):
            try:
                rec = self.sub.spool.get(key) if pilot == holder else None
            except SpoolError:  # reported by name in this pass; the others go on
                continue
            if rec is None or rec.state == FINISHED:
                continue
            del view.claimed[key]
            if self.sub.stager.has_result(key):  # it ended; only the done marker was missing
                if self.sub.stager.move_claim(key, holder, p.DONE):
                    view.done.add(key)
            elif self._requeue(rec, holder, walltime, cause):
                view.ready.add(key)
                requeued += 1
        return requeued

    def _requeue(self, rec: JobRecord, holder: str, walltime: bool, cause: str) -> bool:
        """One dead pilot's claim: back to ready/ while the policy allows, else an error."""
        pc = self.sub.cfg.pilot
        if walltime:  # a hard walltime kill is a release the pilot had no time to write
            message = self.sub._release_verdict(rec, holder, unwritten=1)[1]
            detail: dict[str, Any] = dict(walltime_kills=rec.walltime_kills + 1)
        else:
            message = (None if policy.may_requeue_lost(rec.lost + 1, pc.max_attempts) else
                       policy.lost_message(rec.lost + 1, pc.max_attempts, holder, cause))
            detail = dict(lost=rec.lost + 1)
        if message is None:
            if not self.sub.stager.move_claim(rec.name, holder, p.READY):
                return False
            self.sub.spool.transition(rec, STAGED, sync=True,
                                  message="pilot %s %s: requeued" % (holder, cause), **detail)
            return True
        self.sub.spool.note(rec, **detail)
        self.sub._finish(rec, d.job_node(ResultStatus.ERROR, message,
                                     reason=Reason.RELEASED if walltime else Reason.LOST))
        return False
