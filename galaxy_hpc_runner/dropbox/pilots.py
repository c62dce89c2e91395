"""Keeping track of pilots: their scheduler states, failures to start, and new submissions."""

from __future__ import annotations

import datetime
import json
import logging
import posixpath
import secrets
import time
from typing import Any

from galaxy_hpc_runner.backends import Backend, PilotStatus, pilot_spec
from galaxy_hpc_runner.config import Config
from galaxy_hpc_runner.dropbox.spool import PilotRecord, Spool
from galaxy_hpc_runner.errors import SchedulerError, TransportError
from galaxy_hpc_runner.transport.base import Transport
from hpc_worker import protocol as p
from hpc_worker.states import PilotState

log = logging.getLogger(__name__)
ACTIVE_STATES = frozenset(s for s in PilotState if s.active)
BACKOFF_MAX = 3600.0


def pilot_file(cfg: Config, pilot_id: str, suffix: str) -> str:
    """W/pilots/PILOT.SUFFIX: .hb heartbeat, .log log, .out scheduler output."""
    return posixpath.join(cfg.workspace, p.PILOTS, pilot_id + suffix)


def read_heartbeat(cfg: Config, transport: Transport, pilot_id: str) -> dict[str, Any] | None:
    """A pilot's last heartbeat, None when it has none (yet) or it cannot be read."""
    try:
        data = json.loads(transport.read_text(pilot_file(cfg, pilot_id, ".hb")))
    except (TransportError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class PilotManager:
    def __init__(self, cfg: Config, spool: Spool, backend: Backend, transport: Transport) -> None:
        self.cfg, self.spool, self.backend, self.t = cfg, spool, backend, transport
        self._preflight_done = False

    def refresh(self) -> list[tuple[PilotRecord, PilotStatus]]:
        """Ask the scheduler about every pilot not yet known gone; record what changed."""
        pilots = [r for r in self.spool.pilots() if r.state in ACTIVE_STATES]
        try:
            states = self.backend.status([r.scheduler_id for r in pilots])
        except SchedulerError as exc:
            log.error("cannot ask the scheduler about pilots: %s", exc)
            states = {}
        out = []
        for pilot in pilots:
            status = states.get(pilot.scheduler_id, PilotStatus(PilotState.UNKNOWN))
            if status.state is not pilot.state:
                self._changed(pilot, status)
            out.append((pilot, status))
        return out

    def _changed(self, pilot: PilotRecord, status: PilotStatus) -> None:
        pilot.state, pilot.reason = status.state, status.reason
        if status.state is PilotState.GONE and not self._ever_started(pilot):
            pilot.failed = True
            log.error("pilot %s (%s job %s) ended without ever starting (%s); its output:\n%s",
                      pilot.pilot_id, pilot.backend, pilot.scheduler_id, status.reason,
                      self.output_tail(pilot))
        self.spool.save_pilot(pilot)

    def _ever_started(self, pilot: PilotRecord) -> bool:
        try:
            return self.t.exists(pilot_file(self.cfg, pilot.pilot_id, ".hb"))
        except TransportError:
            return True  # cannot tell: do not hold back new pilots for it

    def remaining(self, known: list[tuple[PilotRecord, PilotStatus]]) -> list[float]:
        """Seconds each running pilot has left before its walltime (from its heartbeat)."""
        out = []
        for pilot, status in known:
            if status.state is not PilotState.RUNNING:
                continue
            beat = read_heartbeat(self.cfg, self.t, pilot.pilot_id)
            if beat and beat.get("deadline"):
                out.append(float(beat["deadline"]) - time.time())
        return out

    def output_tail(self, pilot: PilotRecord, limit: int = 2000) -> str:
        try:
            return self.t.read_text(pilot_file(self.cfg, pilot.pilot_id, ".out"), limit=limit)
        except TransportError:
            return "(no output)"

    def backoff_left(self) -> float:
        """Seconds to wait before the next pilot, after pilots that failed to start.

        Each failure in a row doubles the wait (``[scheduler] failure_backoff``, 30 s
        by default, up to an hour), so a broken
        pilot command does not become a stream of scheduler submissions.
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

    def preflight(self) -> None:
        """Before the first pilot: can the pilot's Python import hpc_worker over there?

        A wrong ``python`` or ``code_dir`` would otherwise show only after the queue wait.
        """
        if self._preflight_done:
            return
        spec = pilot_spec(self.cfg, "preflight")
        code_dir = self.cfg.pilot.code_dir
        probe = "import sys; sys.path.insert(0, %r); import hpc_worker.pilot" % code_dir
        try:
            self.t.run([spec.argv[0], "-c", probe], timeout=60)
        except SchedulerError as exc:
            raise SchedulerError("pilot preflight: %s -c 'import hpc_worker' with code_dir %s "
                                 "failed on the HPC side: %s" % (spec.argv[0], code_dir, exc)
                                 ) from exc
        self._preflight_done = True

    def submit(self) -> PilotRecord:
        """Submit one pilot; a refused submission is recorded as a failed pilot and raised."""
        pilot_id = "pilot-%s-%s" % (time.strftime("%Y%m%dT%H%M%S"), secrets.token_hex(3))
        rec = PilotRecord(pilot_id=pilot_id, scheduler_id="", backend=self.backend.name,
                          submitted=p.now_iso())
        try:
            self.preflight()
            rec.scheduler_id = self.backend.submit(pilot_spec(self.cfg, pilot_id))
        except SchedulerError as exc:
            rec.state, rec.reason, rec.failed = PilotState.GONE, "submission failed: %s" % exc, True
            self.spool.save_pilot(rec)
            raise
        self.spool.save_pilot(rec)
        log.info("submitted pilot %s as %s job %s", pilot_id, self.backend.name, rec.scheduler_id)
        return rec
