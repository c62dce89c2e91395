"""The spool: one state machine for every job, journaled on disk.

A job is ``received`` (its description was read and validated), ``staged``
(its files and ready marker are on the HPC side), ``claimed`` (a pilot runs
it) or ``finished`` (its result file exists). A job whose pilot dies goes back
to ``staged``. Each job is one JSON record, replaced atomically on every
transition, and every transition is also one line of ``events.jsonl``::

    SPOOL/jobs/NAME.json        active jobs
    SPOOL/finished/NAME.json    finished jobs whose HPC files are cleaned up
    SPOOL/pilots/PILOT.json     pilots this spool submitted
    SPOOL/events.jsonl          the event log behind status/show/logs
    SPOOL/lock                  held during a submitter pass

A process killed at any instant leaves every record either before or after a
transition, and each step of a pass is safe to repeat, so nothing is lost and
nothing runs twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from galaxy_hpc_runner.errors import HpcBatchError
from hpc_worker import protocol as p
from hpc_worker.states import JobState, PilotState

log = logging.getLogger(__name__)

RECEIVED, STAGED, CLAIMED, FINISHED = JobState
TRANSITIONS = {
    RECEIVED: {STAGED, FINISHED},
    STAGED: {CLAIMED, FINISHED, RECEIVED},
    CLAIMED: {STAGED, FINISHED, CLAIMED},
    FINISHED: set(),
}


class LockTimeout(HpcBatchError):
    """Another submitter pass holds the spool lock."""


@dataclass
class JobRecord:
    name: str
    state: JobState = RECEIVED
    doc: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # validated facts for staging
    pilot: str = ""
    lost: int = 0
    received: str = ""
    updated: str = ""
    status: str = ""  # ok | error once finished
    message: str = ""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobRecord:
        rec = cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        rec.state = JobState(rec.state)
        return rec


@dataclass
class PilotRecord:
    pilot_id: str
    scheduler_id: str
    backend: str
    submitted: str
    state: PilotState = PilotState.PENDING
    reason: str = ""
    updated: str = ""
    failed: bool = False  # ended without ever starting (no heartbeat)


class Spool:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.jobs = self.path / "jobs"
        self.finished = self.path / "finished"
        self.pilots_dir = self.path / "pilots"
        self.events = self.path / "events.jsonl"
        for d in (self.jobs, self.finished, self.pilots_dir):
            d.mkdir(parents=True, exist_ok=True)

    # -- jobs ------------------------------------------------------------------------
    def active(self) -> list[JobRecord]:
        return [rec for name in p.listdir(str(self.jobs)) if name.endswith(".json")
                if (rec := self._load(self.jobs / name)) is not None]

    def active_names(self) -> set[str]:
        return {n[:-5] for n in p.listdir(str(self.jobs)) if n.endswith(".json")}

    def finished_names(self) -> set[str]:
        return {n[:-5] for n in p.listdir(str(self.finished)) if n.endswith(".json")}

    def get(self, name: str) -> JobRecord | None:
        for directory in (self.jobs, self.finished):
            rec = self._load(directory / (name + ".json"))
            if rec is not None:
                return rec
        return None

    def create(self, name: str, doc: dict[str, Any] | None,
               meta: dict[str, Any] | None = None) -> JobRecord:
        """The first journal entry of a job: written before anything can run."""
        now = p.now_iso()
        rec = JobRecord(name=name, doc=doc, meta=meta or {}, received=now, updated=now)
        self._save(rec)
        self.event(name, None, RECEIVED)
        return rec

    def transition(self, rec: JobRecord, state: JobState, **detail: Any) -> None:
        """Move ``rec`` to ``state``: record replaced atomically, then one event line."""
        if state not in TRANSITIONS[rec.state]:
            raise HpcBatchError("(%s) illegal transition %s -> %s" % (rec.name, rec.state, state))
        old, rec.state, rec.updated = rec.state, state, p.now_iso()
        for key in ("pilot", "lost", "status", "message"):
            if key in detail:
                setattr(rec, key, detail[key])
        self._save(rec)
        self.event(rec.name, old, state, **detail)
        log.info("(%s) %s -> %s%s", rec.name, old, state,
                 " (%s)" % detail["message"] if detail.get("message") else "")

    def archive(self, rec: JobRecord) -> None:
        """A finished job whose HPC files are gone leaves the active set."""
        os.replace(self.jobs / (rec.name + ".json"), self.finished / (rec.name + ".json"))

    def retire(self, name: str) -> None:
        """Make room for a resubmission under the same name; the old record is kept."""
        src = self.finished / (name + ".json")
        if src.exists():
            os.replace(src, self.finished / ("%s.json.%d" % (name, time.time_ns())))

    def event(self, name: str, old: JobState | None, new: JobState, **detail: Any) -> None:
        entry = {"time": p.now_iso(), "job": name, "from": old, "to": new}
        entry.update(detail)
        p.append_jsonl(str(self.events), entry)

    def history(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.history_all() if e.get("job") == name]

    def history_all(self) -> list[dict[str, Any]]:
        return p.read_jsonl(str(self.events) + ".1") + p.read_jsonl(str(self.events))

    def prune(self, keep_days: float, max_event_bytes: int = 64 << 20) -> int:
        """Forget finished jobs older than ``keep_days``; keep one old event-log generation.

        Called under the pass lock, so nobody appends to the event log meanwhile.
        """
        cutoff = time.time() - keep_days * 86400
        removed = 0
        for entry in os.scandir(self.finished):
            if entry.stat().st_mtime < cutoff:
                os.unlink(entry.path)
                removed += 1
        if self.events.exists() and self.events.stat().st_size > max_event_bytes:
            os.replace(self.events, str(self.events) + ".1")
        return removed

    def _save(self, rec: JobRecord) -> None:
        p.write_json(str(self.jobs / (rec.name + ".json")), asdict(rec))

    @staticmethod
    def _load(path: Path) -> JobRecord | None:
        try:
            return JobRecord.from_json(p.read_json(str(path)))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.error("unreadable spool record %s: %s", path, exc)
            return None

    # -- pilots ----------------------------------------------------------------------
    def pilots(self) -> list[PilotRecord]:
        out = []
        for name in p.listdir(str(self.pilots_dir)):
            with contextlib.suppress(OSError, ValueError, TypeError):
                rec = PilotRecord(**p.read_json(str(self.pilots_dir / name)))
                rec.state = PilotState(rec.state)
                out.append(rec)
        return sorted(out, key=lambda r: r.submitted)

    def save_pilot(self, rec: PilotRecord) -> None:
        rec.updated = p.now_iso()
        p.write_json(str(self.pilots_dir / (rec.pilot_id + ".json")), asdict(rec))

    # -- the pass lock ---------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, timeout: float) -> Iterator[None]:
        """Hold the spool lock; LockTimeout if another pass keeps it past ``timeout``."""
        fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise LockTimeout("another submitter pass holds %s" % (
                            self.path / "lock")) from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)
