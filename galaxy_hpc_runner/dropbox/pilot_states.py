"""Each pilot's state, for :meth:`.pilots.PilotManager.refresh`: the registry's entry, a
lookup by name for a pilot recorded before its submission ended, one scheduler call.

A pilot recorded as ``submitting`` without a scheduler id is looked up by name
(``Backend.find_by_name``) or found by its heartbeat; while its submission may still
be running (:func:`.registry.submit_settle`) it counts as pending ("being submitted");
after that, one the scheduler does not know and that never beat is gone ("never
reached the scheduler"). A lookup that fails leaves it unknown (nothing is submitted
meanwhile), except with a scheduler that cannot look names up at all (DRMAA 1.0).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

from galaxy_hpc_runner.backends import Backend, PilotStatus
from galaxy_hpc_runner.config import Config
from galaxy_hpc_runner.dropbox.registry import iso_epoch, submit_settle
from galaxy_hpc_runner.dropbox.spool import PilotRecord
from galaxy_hpc_runner.errors import SchedulerError
from hpc_worker.records import Heartbeat, PilotEntry
from hpc_worker.states import PilotState

log = logging.getLogger(__name__)
NEVER_REACHED = "never reached the scheduler"
BEING_SUBMITTED = "being submitted"
Beat = Callable[[str], "Heartbeat | None"]  # a pilot's last heartbeat (cached per refresh)


def pilot_states(cfg: Config, backend: Backend, todo: list[PilotEntry],
                 own: dict[str, PilotRecord], beat: Beat
                 ) -> dict[str, tuple[PilotEntry, PilotStatus]]:
    """Each pilot's updated entry and status: lookups by name, then one scheduler call."""
    known: dict[str, tuple[PilotEntry, PilotStatus]] = {}
    ask: dict[str, PilotEntry] = {}
    for entry in todo:
        entry = dataclasses.replace(entry)
        spooled = own.get(entry.pilot_id)
        if not entry.scheduler_id and spooled is not None:
            entry.scheduler_id = spooled.scheduler_id  # registry write was cut short
        status = None
        if entry.state is PilotState.GONE and not entry.scheduler_id:
            status = PilotStatus(PilotState.GONE)
        elif not entry.scheduler_id:
            status = _resolve(cfg, backend, entry, beat)
        if status is None:
            ask[entry.scheduler_id] = entry
        known[entry.pilot_id] = (entry, status or PilotStatus(PilotState.UNKNOWN))
    answers = _ask_scheduler(backend, list(ask))
    for sid, entry in ask.items():
        status = answers.get(sid, PilotStatus(PilotState.UNKNOWN))
        if entry.state is PilotState.GONE:  # the registry's word is final
            status = PilotStatus(PilotState.GONE, status.reason
                                 if status.state is PilotState.GONE else "")
        elif status.state is not PilotState.UNKNOWN:
            entry.state = status.state
        known[entry.pilot_id] = (entry, status)
    return known


def _ask_scheduler(backend: Backend, ids: list[str]) -> dict[str, PilotStatus]:
    try:
        return backend.status(ids) if ids else {}
    except SchedulerError as exc:
        log.error("cannot ask the scheduler about pilots: %s", exc)
        return {}


def _resolve(cfg: Config, backend: Backend, entry: PilotEntry, beat: Beat) -> PilotStatus | None:
    """A pilot recorded before submission without a scheduler id: find it by name.

    Sets ``entry.scheduler_id`` and returns None when found (the scheduler is then
    asked); else its status: pending while its submission may still be running,
    gone once that cannot be, unknown when the lookup fails.
    """
    settled = time.time() - iso_epoch(entry.submitted) >= submit_settle(cfg)
    try:
        sid = backend.find_by_name(entry.pilot_id)
    except SchedulerError as exc:
        log.warning("pilot %s: cannot look it up by name: %s", entry.pilot_id, exc)
        sid = None
        if not beat(entry.pilot_id) and (_can_find(backend) or not settled):
            return PilotStatus(PilotState.UNKNOWN, "cannot look it up: %s" % exc)
    last = beat(entry.pilot_id)
    sid = sid or (last.scheduler_id if last else None)
    if sid:
        entry.scheduler_id = sid
        log.warning("pilot %s was submitted (job %s) but not recorded: recorded now",
                    entry.pilot_id, sid)
        return None
    if not settled:
        return PilotStatus(PilotState.PENDING, BEING_SUBMITTED)
    entry.state = PilotState.GONE
    return PilotStatus(PilotState.GONE, NEVER_REACHED)


def _can_find(backend: Backend) -> bool:
    """Whether the backend can look pilots up by name at all (DRMAA 1.0 cannot: a pilot
    whose submitter died mid-submit and that never beat is then taken as never queued)."""
    return type(backend).find_by_name is not Backend.find_by_name
