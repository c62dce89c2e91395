"""Keeping track of the pilots of every submitting server, through the HPC-side registry.

The registry (:mod:`.registry`, ``W/pilots/PILOT.json``) is the truth about pilots;
the spool keeps a copy of this server's own (``status``, failure back-off). The
submitter uses :meth:`PilotManager.refresh` (every server's pilots: the policy counts
them all, so one pilot serves every server's backlog), :meth:`PilotManager.submit`
(intent recorded BEFORE the scheduler sees it; an uncertain outcome is looked up by
name, never submitted again), :meth:`PilotManager.live_pilot_ids` and
:meth:`PilotManager.stale_or_gone` (liveness of claim holders). ``status`` and
``check --remote`` use :meth:`PilotManager.site_picture` and
:meth:`PilotManager.servers_seen`. A pilot being submitted (no scheduler id yet)
counts as pending for :func:`.registry.submit_settle` seconds; after that, one the
scheduler does not know by name and that never wrote a heartbeat is gone.
"""

from __future__ import annotations

import datetime
import logging
import time
from typing import Any

from galaxy_hpc_runner.backends import (
    Backend,
    PilotSpec,
    PilotStatus,
    SubmissionUncertain,
    pilot_spec,
)
from galaxy_hpc_runner.config import Config
from galaxy_hpc_runner.dropbox import deploy
from galaxy_hpc_runner.dropbox.pilot_states import BEING_SUBMITTED, NEVER_REACHED, pilot_states
from galaxy_hpc_runner.dropbox.policy import stale_after
from galaxy_hpc_runner.dropbox.registry import (
    Registry,
    iso_epoch,
    new_pilot_id,
    pilot_file,
    read_heartbeat,
    submit_settle,
)
from galaxy_hpc_runner.dropbox.spool import PilotRecord, Spool
from galaxy_hpc_runner.errors import SchedulerError, TransportError
from galaxy_hpc_runner.transport.base import Transport
from hpc_worker import protocol as p
from hpc_worker.records import Heartbeat, PilotEntry
from hpc_worker.states import HeartbeatState, PilotState

__all__ = ["NEVER_REACHED", "PilotManager", "new_pilot_id", "pilot_file", "read_heartbeat",
           "submit_settle"]
log = logging.getLogger(__name__)
ACTIVE_STATES = frozenset(s for s in PilotState if s.active)
BACKOFF_MAX = 3600.0
HEARTBEAT, OUTPUT = p.PILOT_SUFFIXES[1], p.PILOT_SUFFIXES[3]
GONE_SEEN_FILE = "registry-gone.json"  # SPOOL/...: gone pilots already reported
PRUNE_STAMP = "pilots-pruned"  # SPOOL/...: touched at each prune of pilot files
PRUNE_EVERY = 86400.0
PROGRAMS_PRUNED = "programs-pruned"  # SPOOL/...: touched at each look for old pilot programs
PROGRAMS_PRUNE_EVERY = 600.0


class PilotManager:
    def __init__(self, cfg: Config, spool: Spool, backend: Backend, transport: Transport) -> None:
        self.cfg, self.spool, self.backend, self.t = cfg, spool, backend, transport
        self.server = cfg.server_tag
        self.registry = Registry(transport, cfg.workspace, self.server)
        self._preflight: str | None = None
        self._snapshot: set[str] | None = None  # active pilots the last refresh saw
        self._last: dict[str, PilotStatus] = {}  # the last refresh's states, all servers
        self._beats: dict[str, Heartbeat | None] = {}
        self.declined = 0  # submissions declined: another server had queued a pilot meanwhile

    # -- the site-wide picture -------------------------------------------------------
    def refresh(self) -> list[tuple[PilotRecord, PilotStatus]]:
        """Ask the scheduler about every pilot of every server not yet known gone.

        Returns queued, running, being-submitted and unknown pilots, and those seen
        gone for the first time; records what changed (registry and, for this
        server's pilots, the spool).
        """
        self._beats = {}
        entries = self.registry.entries()
        own = {r.pilot_id: r for r in self.spool.pilots()}
        reported = self._reported_gone()
        todo = [e for e in entries.values() if e.state is not PilotState.GONE
                or e.pilot_id not in reported]
        unrecorded = [  # this spool's pilots from before the registry: entered now
            PilotEntry(pilot_id=r.pilot_id, submitted=r.submitted, state=r.state,
                       scheduler_id=r.scheduler_id, submitter=self.server, backend=r.backend)
            for r in own.values() if r.state in ACTIVE_STATES and r.pilot_id not in entries]
        statuses = pilot_states(self.cfg, self.backend, todo + unrecorded, own, self._beat)
        out, changed = [], []
        for entry in todo + unrecorded:
            new, status = statuses[entry.pilot_id]
            if new != entry or entry.pilot_id not in entries:
                changed.append(new)
            out.append((self._mirror(new, status, own.get(new.pilot_id)), status))
        self._write_changes(changed)
        self._last = {rec.pilot_id: status for rec, status in out}
        self._snapshot = {pid for pid, st in self._last.items() if st.state is not PilotState.GONE}
        self._mark_reported(entries, {pid for pid, st in self._last.items()
                                      if st.state is PilotState.GONE})
        self._maybe_prune()
        self._maybe_prune_programs()
        return out

    def _write_changes(self, changed: list[PilotEntry]) -> None:
        """Registry updates, under the lock; a gone entry is never brought back."""
        if not changed:
            return
        with self.registry.lock():
            for entry in changed:
                current = self.registry.read(entry.pilot_id)
                if current == entry or (current is not None
                                        and current.state is PilotState.GONE):
                    continue  # another server wrote it first / never brought back
                if current is not None and current.scheduler_id and not entry.scheduler_id:
                    continue  # its submitter recorded it meanwhile
                self.registry.write(entry)

    def _mirror(self, entry: PilotEntry, status: PilotStatus,
                rec: PilotRecord | None) -> PilotRecord:
        """The spool's view of a pilot; this server's pilots are saved when they change."""
        unsaved = rec is None
        if rec is None:
            rec = PilotRecord(pilot_id=entry.pilot_id, scheduler_id=entry.scheduler_id,
                              backend=entry.backend, submitted=entry.submitted,
                              state=entry.state)
        if entry.submitter != self.server:
            rec.state, rec.reason = status.state, status.reason
            rec.scheduler_id = entry.scheduler_id
            return rec
        shown = PilotState.SUBMITTING if status.reason == BEING_SUBMITTED else status.state
        if unsaved or entry.scheduler_id != rec.scheduler_id or (
                shown is not rec.state and shown is not PilotState.UNKNOWN):
            rec.scheduler_id = entry.scheduler_id
            self._save_own(rec, status)
        return rec

    def _save_own(self, pilot: PilotRecord, status: PilotStatus) -> None:
        if status.reason == BEING_SUBMITTED:
            pilot.state = PilotState.SUBMITTING
        elif status.state is not PilotState.UNKNOWN:
            pilot.state, pilot.reason = status.state, status.reason
        if (status.state is PilotState.GONE and status.reason != NEVER_REACHED
                and not self._ever_started(pilot)):
            pilot.failed = True
            log.error("pilot %s (%s job %s) ended without ever starting (%s); its output:\n%s",
                      pilot.pilot_id, pilot.backend, pilot.scheduler_id, status.reason,
                      self.output_tail(pilot))
        self.spool.save_pilot(pilot)

    def _ever_started(self, pilot: PilotRecord) -> bool:
        try:
            return self.t.exists(pilot_file(self.cfg, pilot.pilot_id, HEARTBEAT))
        except TransportError:
            return True  # cannot tell: do not hold back new pilots for it

    def _reported_gone(self) -> set[str]:
        try:
            return set(p.read_json(str(self.spool.path / GONE_SEEN_FILE)))
        except (OSError, ValueError, TypeError):
            return set()

    def _mark_reported(self, entries: dict[str, PilotEntry], gone: set[str]) -> None:
        before = self._reported_gone()
        after = {pid for pid in before | gone if pid in entries}
        if after != before:
            p.write_json(str(self.spool.path / GONE_SEEN_FILE), sorted(after))

    # -- liveness (for the submitter's reclaim) --------------------------------------
    def _beat(self, pilot_id: str) -> Heartbeat | None:
        if pilot_id not in self._beats:
            self._beats[pilot_id] = self.registry.heartbeat(pilot_id)
        return self._beats[pilot_id]

    def stale_or_gone(self, pilot_id: str) -> bool:
        """True when a claim held by ``pilot_id`` can be taken back.

        The pilot is unknown to the registry and this spool, the scheduler said it is
        gone, it stopped, or its heartbeat is older than ``policy.stale_after`` (the
        clocks of this host and the nodes must agree within that bound). Uses the last
        :meth:`refresh`; TransportError when the registry cannot be read.
        """
        status = self._last.get(pilot_id)
        if status is None:
            entry = self.registry.read(pilot_id)
            own = {r.pilot_id: r for r in self.spool.pilots()}.get(pilot_id)
            if entry is None and own is None:
                return True
            state = entry.state if entry else own.state if own else PilotState.UNKNOWN
            status = PilotStatus(state)
        if status.state is PilotState.GONE:
            return True
        beat = self._beat(pilot_id)
        if beat is None:
            return False  # not started yet (or lost before its first beat: the scheduler says)
        bound = stale_after(self.cfg.pilot.heartbeat, self.cfg.pilot.grace)
        return beat.state is HeartbeatState.STOPPED or time.time() - beat.epoch > bound

    def live_pilot_ids(self) -> set[str]:
        """Pilots of every server the scheduler has queued or running and whose heartbeat
        (if any yet) is fresh, as of the last :meth:`refresh`."""
        return {pid for pid, st in self._last.items()
                if st.state in (PilotState.PENDING, PilotState.RUNNING)
                and not self.stale_or_gone(pid)}

    def remaining(self, known: list[tuple[PilotRecord, PilotStatus]]) -> list[float]:
        """Seconds each running pilot has left before its walltime (from its heartbeat)."""
        out = []
        for pilot, status in known:
            if status.state is not PilotState.RUNNING:
                continue
            beat = read_heartbeat(self.t, self.cfg.workspace, pilot.pilot_id)
            if beat and beat.deadline:
                out.append(beat.deadline - time.time())
        return out

    def output_tail(self, pilot: PilotRecord, limit: int = 2000) -> str:
        try:
            return self.t.read_text(pilot_file(self.cfg, pilot.pilot_id, OUTPUT), limit=limit)
        except TransportError:
            return "(no output)"

    def backoff_left(self) -> float:
        """Seconds to wait before the next pilot, after pilots that failed to start.

        Each failure in a row doubles the wait (``[scheduler] failure_backoff``, 30 s by
        default, up to an hour): a broken pilot command is no stream of submissions.
        """
        failures = 0
        last: PilotRecord | None = None
        for pilot in reversed(self.spool.pilots()):
            if pilot.state in ACTIVE_STATES or not pilot.failed:
                break
            failures += 1
            last = last or pilot
        if last is None:
            return 0.0
        wait = min(self.cfg.failure_backoff * 2.0 ** (failures - 1), BACKOFF_MAX)
        ended = datetime.datetime.fromisoformat(last.updated).timestamp()
        return max(0.0, ended + wait - time.time())

    # -- submission ------------------------------------------------------------------
    def preflight(self) -> str:
        """Before the first pilot: deploy the pilot program and run it once over there.

        A wrong ``[pilot] python`` would otherwise show only after the queue wait.
        """
        if self._preflight is None:
            self._preflight = deploy.verify(self.cfg, self.t)
        return self._preflight

    def submit(self) -> PilotRecord:
        """Submit one pilot, its intent recorded first; a refused one is recorded and raised.

        When another server queued a pilot since the last :meth:`refresh` (the
        decision was taken without it), nothing is submitted, that pilot's record is
        returned and ``declined`` counts it. SubmissionUncertain when the scheduler may
        have it but cannot say: its entry stays ``submitting``, the next refresh looks it
        up by name.
        """
        rec = PilotRecord(pilot_id=new_pilot_id(self.server), scheduler_id="",
                          backend=self.backend.name, submitted=p.now_iso(),
                          state=PilotState.SUBMITTING)
        try:
            self.preflight()
            spec = pilot_spec(self.cfg, rec.pilot_id)
        except (SchedulerError, TransportError) as exc:
            self._refused(rec, None, exc)
            raise
        entry = self._record_intent(rec, spec)
        if isinstance(entry, PilotRecord):
            return entry  # another server's pilot, queued since the decision
        try:  # put back if a prune removed it since the preflight (deploy.prune_programs)
            deploy.ensure_deployed(self.cfg, self.t)
        except TransportError as exc:
            self._refused(rec, entry, exc)
            raise
        if self._snapshot is not None:
            self._snapshot.add(rec.pilot_id)
        try:
            rec.scheduler_id = self.backend.submit(spec)
        except SubmissionUncertain as exc:
            return self._after_uncertain(rec, entry, exc)
        except SchedulerError as exc:
            self._refused(rec, entry, exc)
            raise
        self._submitted(rec, entry)
        return rec

    def _record_intent(self, rec: PilotRecord, spec: PilotSpec) -> PilotEntry | PilotRecord:
        """The pilot's intent, written to the registry under its lock, then to the spool;
        instead the record of another server's pilot queued since :meth:`refresh`."""
        entry = PilotEntry(pilot_id=rec.pilot_id, submitted=rec.submitted,
                           submitter=self.server, backend=self.backend.name,
                           slots=spec.slots, walltime=spec.walltime,
                           program=deploy.remote_program(self.cfg))
        with self.registry.lock():
            other = self._raced()
            if other is not None:
                return other
            self.registry.write(entry)
        self.spool.save_pilot(rec)
        return entry

    def _raced(self) -> PilotRecord | None:
        """The newest pilot another server queued since our refresh, if any (under lock)."""
        if self._snapshot is None:
            return None
        fresh = {pid: e for pid, e in self.registry.entries().items()
                 if e.state is not PilotState.GONE}
        new = sorted(set(fresh) - self._snapshot, key=lambda pid: fresh[pid].submitted)
        if not new:
            return None
        self._snapshot |= set(new)
        self.declined += 1
        entry = fresh[new[-1]]
        log.info("pilot %s of server %s was queued since this pass looked: not submitting "
                 "another", entry.pilot_id, entry.submitter)
        return PilotRecord(pilot_id=entry.pilot_id, scheduler_id=entry.scheduler_id,
                           backend=entry.backend, submitted=entry.submitted, state=entry.state)

    def _after_uncertain(self, rec: PilotRecord, entry: PilotEntry,
                         exc: SubmissionUncertain) -> PilotRecord:
        try:
            sid = self.backend.find_by_name(rec.pilot_id)
        except SchedulerError as lookup:
            log.error("%s; looking it up failed too (%s): the next pass looks again", exc, lookup)
            raise exc from None
        if not sid:
            log.error("%s; the scheduler does not list it (yet): the next passes look again "
                      "and count it meanwhile", exc)
            raise exc
        log.warning("%s; the scheduler has it as job %s", exc, sid)
        rec.scheduler_id = sid
        self._submitted(rec, entry)
        return rec

    def _submitted(self, rec: PilotRecord, entry: PilotEntry) -> None:
        rec.state = entry.state = PilotState.PENDING
        entry.scheduler_id = rec.scheduler_id
        self.spool.save_pilot(rec)
        with self.registry.lock():
            self.registry.write(entry)
        log.info("submitted pilot %s as %s job %s", rec.pilot_id, self.backend.name,
                 rec.scheduler_id)

    def _refused(self, rec: PilotRecord, entry: PilotEntry | None, exc: Exception) -> None:
        rec.state, rec.failed = PilotState.GONE, True
        rec.reason = "submission failed: %s" % exc
        self.spool.save_pilot(rec)
        if entry is not None:
            entry.state = PilotState.GONE
            with self.registry.lock():
                self.registry.write(entry)

    # -- for status and check --remote -----------------------------------------------
    def site_picture(self) -> dict[str, Any]:
        """Every pilot of every server (this server's marked ``mine``), each server's
        queue on the HPC side, the servers seen: ``status`` shows it."""
        return self.registry.picture()

    def servers_seen(self) -> list[str]:
        """The other submitting servers this workspace shows (pilots or queued jobs):
        ``check --remote`` reports them."""
        return [s for s in self.registry.picture()["servers"] if s != self.server]

    # -- pruning ---------------------------------------------------------------------
    def prune(self, keep_days: float) -> int:
        """Forget pilots gone and submitted more than ``keep_days`` ago: registry entries,
        heartbeats, logs, scheduler output (of every server), and this spool's records.
        Done by :meth:`refresh` once a day (``[spool] keep_finished_days``)."""
        cutoff = time.time() - keep_days * 86400
        removed = self.registry.prune(cutoff)
        for rec in self.spool.pilots():
            if rec.state is PilotState.GONE and iso_epoch(rec.submitted) < cutoff:
                (self.spool.pilots_dir / (rec.pilot_id + ".json")).unlink(missing_ok=True)
        return removed

    def _maybe_prune(self) -> None:
        stamp = self.spool.path / PRUNE_STAMP
        try:
            if stamp.exists() and time.time() - stamp.stat().st_mtime < PRUNE_EVERY:
                return
            stamp.touch()
            removed = self.prune(self.cfg.keep_finished_days)
        except (TransportError, ValueError, OSError) as exc:
            log.warning("pruning old pilot files postponed: %s", exc)
            return
        if removed:
            log.info("pruned %d pilot(s) gone for more than %g days", removed,
                     self.cfg.keep_finished_days)

    def _maybe_prune_programs(self) -> None:
        """Every 10 minutes, remove old pilot programs no pilot uses (deploy.prune_programs)."""
        stamp = self.spool.path / PROGRAMS_PRUNED
        try:
            if stamp.exists() and time.time() - stamp.stat().st_mtime < PROGRAMS_PRUNE_EVERY:
                return
            stamp.touch()
            deploy.prune_programs(self.cfg, self.t, self.registry)
        except (TransportError, ValueError, OSError) as exc:
            log.warning("removing old pilot programs postponed: %s", exc)
