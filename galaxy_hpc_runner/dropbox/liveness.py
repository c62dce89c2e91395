"""Which claims no live pilot holds: the HPC side is the truth about liveness.

A claim ``W/queue/claimed/KEY@PILOT`` is reclaimed, whoever submitted PILOT, when

- the scheduler says the pilot is gone (the submitter does this from
  ``PilotManager.refresh``), or
- the pilot has been silent for longer than ``policy.stale_after(heartbeat, grace)``
  (three heartbeats plus the grace; 40 s with the defaults): its last heartbeat
  ``W/pilots/PILOT.hb`` (its ``epoch``, or its ``stopped`` beat) and, without one,
  the time this spool first saw the claim, are older than that bound, and the
  scheduler does not have the pilot queued or running. This covers a pilot the
  spool never recorded (a submitter killed during ``sbatch``), one of another
  server, and one whose end a killed pass saw but never acted on.

A silent pilot the scheduler still runs (hung, frozen, its file system gone) is
cancelled through the scheduler first, so its job cannot run on beside a rerun; its
claims are reclaimed once the scheduler says it is gone.

The bound: while the scheduler answers, no job stays ``claimed`` without a live
pilot for longer than ``stale_after`` plus one submitter pass (``[submitter]
interval``). Heartbeat times come from the HPC side's clock: keep the clocks of
the submitting host and the nodes in step (NTP) to well within ``[pilot] grace``.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections import defaultdict
from collections.abc import Callable

from galaxy_hpc_runner.backends import Backend, PilotState, PilotStatus
from galaxy_hpc_runner.config import Config
from galaxy_hpc_runner.dropbox import policy
from galaxy_hpc_runner.dropbox.registry import read_heartbeat
from galaxy_hpc_runner.dropbox.spool import CLAIMED, PilotRecord, Spool, SpoolError
from galaxy_hpc_runner.dropbox.staging import QueueView
from galaxy_hpc_runner.errors import SchedulerError
from galaxy_hpc_runner.transport.base import Transport

log = logging.getLogger(__name__)


class Liveness:
    def __init__(self, cfg: Config, transport: Transport, backend: Backend) -> None:
        self.cfg, self.t, self.backend = cfg, transport, backend

    @property
    def bound(self) -> float:
        return policy.stale_after(self.cfg.pilot.heartbeat, self.cfg.pilot.grace)

    def dead_holders(self, view: QueueView, known: list[tuple[PilotRecord, PilotStatus]],
                     spool: Spool, maybe_dead: Callable[[str], bool] = lambda _: True
                     ) -> dict[str, str]:
        """Pilots holding claims in ``view`` that are dead, each with the cause.

        ``known`` are the pilots with their scheduler states (``PilotManager.refresh``);
        one the scheduler reports gone is left to the caller, one it cannot tell about
        is left alone (nothing is sure then). ``maybe_dead`` is the pilot registry's
        first word (``PilotManager.stale_or_gone``): a pilot it calls alive is left
        alone. Silent pilots the scheduler still has are cancelled.
        """
        ours = {rec.pilot_id: (rec, status) for rec, status in known}
        holders: dict[str, list[str]] = defaultdict(list)
        for key, holder in view.claimed.items():
            holders[holder].append(key)
        dead = {}
        for holder, keys in sorted(holders.items()):
            rec, status = ours.get(holder, (None, None))
            if status is not None and status.state is not PilotState.RUNNING:
                continue  # gone: the caller reclaims; pending/unknown: cannot be sure
            if not maybe_dead(holder):
                continue
            silent = time.time() - self.last_sign(holder, keys, spool)
            if silent <= self.bound:
                continue
            scheduler_id = rec.scheduler_id if rec is not None else self.scheduler_id_of(holder)
            if scheduler_id:
                self._cancel(holder, scheduler_id, silent)
                continue
            dead[holder] = "silent for %.0fs (stale beyond %.0fs) and not known to the " \
                           "scheduler" % (silent, self.bound)
        return dead

    def last_sign(self, holder: str, keys: list[str], spool: Spool) -> float:
        """The latest sign of life of ``holder``: its heartbeat, or when a claim was seen."""
        last = self.heartbeat_epoch(holder)
        for key in keys:
            try:
                rec = spool.get(key)
            except SpoolError:
                rec = None
            if rec is None or rec.state != CLAIMED or rec.pilot != holder:
                last = time.time()  # not (yet) seen as this pilot's claim: start the clock
                continue
            last = max(last, _epoch(rec.updated))
        return last

    def heartbeat_epoch(self, pilot_id: str) -> float:
        """When ``pilot_id`` last wrote its heartbeat (0 when it has none or it is unreadable)."""
        beat = read_heartbeat(self.t, self.cfg.workspace, pilot_id)
        return beat.epoch if beat else 0.0

    def scheduler_id_of(self, pilot_id: str) -> str | None:
        """The scheduler id of a pilot this spool does not follow while it is queued or
        running (or the scheduler cannot say which: then it is not taken for dead).

        The hook the HPC-side pilot registry (``dropbox/pilots.py``) may replace with its own
        lookup across servers; here the scheduler is asked by job name (that lookup also
        finds recently ended jobs, so their state is asked too), and a backend that cannot
        look up names counts as "not there".
        """
        try:
            scheduler_id = self.backend.find_by_name(pilot_id)
            if not scheduler_id:
                return None
            status = self.backend.status([scheduler_id]).get(scheduler_id)
        except SchedulerError as exc:
            log.debug("cannot look pilot %s up by name: %s", pilot_id, exc)
            return None
        if status is not None and status.state is PilotState.GONE:
            return None
        return scheduler_id

    def _cancel(self, holder: str, scheduler_id: str, silent: float) -> None:
        log.error("pilot %s (%s job %s) silent for %.0fs but still in the scheduler: "
                  "cancelling it; its claims are requeued once it is gone",
                  holder, self.backend.name, scheduler_id, silent)
        try:
            self.backend.cancel(scheduler_id)
        except SchedulerError as exc:
            log.error("cannot cancel pilot %s: %s", holder, exc)


def _epoch(iso: str) -> float:
    try:
        return datetime.datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return 0.0
