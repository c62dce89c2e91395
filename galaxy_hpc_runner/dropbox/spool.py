"""The spool: one state machine for every job, journaled on disk.

A job is ``received`` (its description was read and validated), ``staged``
(its files and ready marker are on the HPC side), ``claimed`` (a pilot runs
it) or ``finished`` (its result file exists). A job whose pilot dies, or that a
stopping pilot gives back, goes back to ``staged``. Each job is one JSON record,
replaced atomically on every transition, and every transition is also one line
of ``events.jsonl``::

    SPOOL/jobs/NAME.json        active jobs
    SPOOL/finished/NAME.json    finished jobs whose HPC files are cleaned up
    SPOOL/pilots/PILOT.json     pilots this spool submitted
    SPOOL/events.jsonl          the event log behind status/show/logs
    SPOOL/lock                  held during a submitter pass (mode 0600)

The spool directory is private to its owner (0700). A record that cannot be
read is never skipped silently: it is reported (by file name, with what to do)
in every pass until an admin moves it away, and the other jobs go on.

A process killed at any instant leaves every record either before or after a
transition, and each step of a pass is safe to repeat, so nothing is lost and
nothing runs twice.

Cost. Records are kept in memory and read again only when their file changed
(inode, size, modification time; one ``stat`` each per pass), so a pass over an idle
backlog does not re-read it. A record whose file changed within :data:`FRESH` seconds
of being looked at is read again next time (a change in the same timestamp tick
would not show).

Durability in batches. The hot-path writes (``create`` and ``transition``) replace the
record atomically but do not ``fsync`` it (``sync=False``): a killed *process* loses
nothing by that (the kernel has the data); only an OS crash can lose such a write, and
the record is then as it was before the transition, which the pass handles like a
kill just before it. Steps that destroy information elsewhere (removing a job's HPC
files, taking a marker back) first call :meth:`Spool.barrier`, one ``syncfs`` for all
the records and results written since the last one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from galaxy_hpc_runner.dropbox.passlock import pass_lock
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
RECORD_SUFFIX = ".json"
# temp files the submitter writes beside a job's outputs: .BASENAME.hpc-batch-tmp-PID-RAND
FRESH = 1.0  # seconds: a record changed this recently is read again on its next use
RESCAN_EVERY = 30.0  # seconds: the longest a look at jobs/ is reused (see Spool.active)
StatKey = tuple[int, int, int, int]  # inode, size, mtime ns, ctime ns
# (jobs/ inode and time, records, names, problems) of one look at jobs/
Listing = tuple[tuple[int, int], list["JobRecord"], list[str], list[str]]


class SpoolError(HpcBatchError):
    """A spool record cannot be read; the message names the file and what to do."""


@dataclass
class JobRecord:
    name: str
    state: JobState = RECEIVED
    doc: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # validated facts for staging
    pilot: str = ""
    lost: int = 0  # times its pilot died under it (policy.may_requeue_lost)
    walltime_kills: int = 0  # pilots that hit their hard walltime holding it (a release
    #                          with no runs.jsonl line; policy.may_requeue_released)
    withdrawn: str = ""  # the Reason it is being taken out of the queue for, until finished
    fetch_failures: int = 0  # failed collections of its outputs (policy.may_retry_collect)
    fetch_since: float = 0.0  # epoch of the first failed collection
    received: str = ""
    updated: str = ""
    status: str = ""  # ok | error once finished
    message: str = ""

    @classmethod
    def from_json(cls, data: Any) -> JobRecord:
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            raise ValueError("not a job record (a JSON object with a name)")
        rec = cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        rec.state = JobState(rec.state)
        return rec


DETAIL_FIELDS = frozenset(f.name for f in dataclasses.fields(JobRecord)) - {"name", "state"}


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


def unreadable(path: Path | str, exc: BaseException) -> str:
    """The message for a record that cannot be read: which file, why, what to do."""
    return ("unreadable spool record %s (%s): move it out of the spool directory and look "
            "at it; the job it describes is not followed while it is there" % (path, exc))


class Spool:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.jobs = self.path / "jobs"
        self.finished = self.path / str(FINISHED)
        self.pilots_dir = self.path / "pilots"
        self.events = self.path / "events.jsonl"
        self.problems: list[str] = []  # unreadable records met since the last take_problems()
        self._cache: dict[str, tuple[StatKey, bool, JobRecord]] = {}  # file -> (key, sure, rec)
        self._cache_lock = threading.Lock()  # Galaxy's monitor thread reads beside the passes
        self._listing: tuple[tuple[int, int], list[JobRecord], list[str], list[str],
                             float] | None = None  # the last look at jobs/ and its time
        self._unsynced: set[str] = set()  # directories with writes not yet made durable
        self.reads = 0  # records read from disk (tests and benchmarks look at it)
        self._make_private()
        for d in (self.jobs, self.finished, self.pilots_dir):
            d.mkdir(mode=0o700, exist_ok=True)

    def _make_private(self) -> None:
        """The spool holds every job's paths and scripts: only its owner may enter it."""
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = self.path.stat()
        if info.st_uid == os.getuid() and info.st_mode & 0o077:
            os.chmod(self.path, 0o700)

    def take_problems(self) -> list[str]:
        out, self.problems = self.problems, []
        return out

    # -- jobs ------------------------------------------------------------------------
    def active(self) -> list[JobRecord]:
        """Every active job; an unreadable record is logged and kept in ``problems``.

        Records come from memory unless their file changed (module docstring). Every
        record write replaces its file, which changes the time of ``jobs/``: while that
        time stands (and is older than FRESH), the last look is reused without a ``stat``
        per record, for at most RESCAN_EVERY seconds (files changed in place)."""
        return list(self._listing_now()[1])

    def active_names(self) -> set[str]:
        """Names of the active records, unreadable ones included."""
        return set(self._listing_now()[2])

    def _listing_now(self) -> Listing:
        now = time.time()
        try:
            info = os.stat(self.jobs)
        except FileNotFoundError:
            return ((0, 0), [], [], [])
        key = (info.st_ino, info.st_mtime_ns)
        last = self._listing
        if last is not None and last[0] == key and now - last[4] < RESCAN_EVERY:
            for problem in last[3]:  # reported in every pass while it is there
                self._problem(problem)
            return last[:4]
        listing = self._scan(key)
        if now - info.st_mtime_ns / 1e9 > FRESH:
            self._listing = (*listing, now)
        else:
            self._listing = None
        return listing

    def _scan(self, key: tuple[int, int]) -> Listing:
        out, names, problems = [], [], []
        seen = set()
        for fname in p.listdir(str(self.jobs)):
            if fname.endswith(RECORD_SUFFIX):
                names.append(fname[: -len(RECORD_SUFFIX)])
                path = self.jobs / fname
                seen.add(str(path))
                try:
                    rec = self._load(path)
                except SpoolError as exc:
                    self._problem(str(exc))
                    problems.append(str(exc))
                    continue
                if rec is not None:
                    out.append(rec)
        with self._cache_lock:
            prefix = str(self.jobs)
            for gone in [k for k in self._cache if k not in seen and k.startswith(prefix)]:
                del self._cache[gone]
        return key, out, names, problems

    def finished_names(self) -> set[str]:
        return {n[: -len(RECORD_SUFFIX)] for n in p.listdir(str(self.finished))
                if n.endswith(RECORD_SUFFIX)}

    def has_finished(self, name: str) -> bool:
        """A finished record of this name is kept (one ``stat``, no listing)."""
        return os.path.lexists(self.finished / (name + RECORD_SUFFIX))

    def get(self, name: str) -> JobRecord | None:
        """The job's record, None when the spool has none; SpoolError when it is unreadable."""
        for directory in (self.jobs, self.finished):
            rec = self._load(directory / (name + RECORD_SUFFIX))
            if rec is not None:
                return rec
        return None

    def create(self, name: str, doc: dict[str, Any] | None,
               meta: dict[str, Any] | None = None) -> JobRecord:
        """The first journal entry of a job: written before anything can run."""
        now = p.now_iso()
        rec = JobRecord(name=name, doc=doc, meta=meta or {}, received=now, updated=now)
        self._save(rec, sync=False)  # the description is still in the dropbox
        self.event(name, None, RECEIVED)
        return rec

    def transition(self, rec: JobRecord, state: JobState, sync: bool = False,
                   **detail: Any) -> None:
        """Move ``rec`` to ``state``: record replaced atomically, then one event line.

        Not synced unless ``sync`` (module docstring: :meth:`barrier` before acting on it)."""
        if state not in TRANSITIONS[rec.state]:
            raise HpcBatchError("(%s) illegal transition %s -> %s" % (rec.name, rec.state, state))
        old, rec.state, rec.updated = rec.state, state, p.now_iso()
        self._apply(rec, detail)
        self._save(rec, sync=sync)
        self.event(rec.name, old, state, **detail)
        log.info("(%s) %s -> %s%s", rec.name, old, state,
                 " (%s)" % detail["message"] if detail.get("message") else "")

    def note(self, rec: JobRecord, **detail: Any) -> None:
        """Record facts about ``rec`` (counters, a message) without changing its state."""
        rec.updated = p.now_iso()
        self._apply(rec, detail)
        self._save(rec)
        self.event(rec.name, rec.state, rec.state, **detail)

    @staticmethod
    def _apply(rec: JobRecord, detail: dict[str, Any]) -> None:
        for key in DETAIL_FIELDS.intersection(detail):
            setattr(rec, key, detail[key])

    def archive(self, rec: JobRecord) -> None:
        """A finished job whose HPC files are gone leaves the active set."""
        src = self.jobs / (rec.name + RECORD_SUFFIX)
        self._forget(str(src))
        with contextlib.suppress(FileNotFoundError):  # archived already: safe to repeat
            os.replace(src, self.finished / (rec.name + RECORD_SUFFIX))
        self._unsynced.add(str(self.finished))

    def note_unsynced(self, path: Path | str) -> None:
        """``path`` (a file or directory) was written without sync: :meth:`barrier` covers it."""
        self._unsynced.add(str(path))

    def barrier(self, also: set[str] | None = None) -> None:
        """Make every write since the last barrier durable (one ``syncfs`` per file system),
        and the writes in the directories ``also`` names.

        Call it before acting on unsynced records where a lost write would matter."""
        paths, self._unsynced = self._unsynced | (also or set()), set()
        if paths:
            p.sync_paths(sorted(paths))

    def retire(self, name: str) -> None:
        """Make room for a resubmission under the same name; the old record is kept."""
        src = self.finished / (name + RECORD_SUFFIX)
        if src.exists():
            os.replace(src, self.finished / ("%s%s.%d" % (name, RECORD_SUFFIX, time.time_ns())))

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

    def _save(self, rec: JobRecord, sync: bool = True) -> None:
        path = str(self.jobs / (rec.name + RECORD_SUFFIX))
        try:
            p.write_json(path, asdict(rec), sync=sync)
            self._remember(path, os.stat(path), rec)
        except BaseException:
            self._forget(path)  # what is on disk decides from now on
            raise
        if not sync:
            self._unsynced.add(str(self.jobs))

    def _problem(self, message: str) -> None:
        log.error("%s", message)
        if message not in self.problems:
            self.problems.append(message)

    def _remember(self, path: str, info: os.stat_result, rec: JobRecord) -> None:
        key = (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
        sure = time.time() - info.st_mtime_ns / 1e9 > FRESH  # a rewrite is a new file
        with self._cache_lock:
            self._cache[path] = (key, sure, rec)

    def _forget(self, path: str) -> None:
        with self._cache_lock:
            self._cache.pop(path, None)

    def _load(self, path: Path) -> JobRecord | None:
        """The record at ``path`` (from memory while its file is unchanged); None if absent."""
        where = str(path)
        try:
            info = os.stat(where, follow_symlinks=False)
        except FileNotFoundError:
            self._forget(where)
            return None
        except OSError as exc:
            raise SpoolError(unreadable(path, exc)) from exc
        with self._cache_lock:
            cached = self._cache.get(where)
        key = (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
        if cached is not None and cached[0] == key and cached[1]:
            return cached[2]
        try:
            rec = JobRecord.from_json(_read_record(where))
        except FileNotFoundError:
            self._forget(where)
            return None
        except (OSError, ValueError, TypeError) as exc:
            self._forget(where)
            raise SpoolError(unreadable(path, exc)) from exc
        self.reads += 1
        self._remember(where, info, rec)
        return rec

    # -- pilots ----------------------------------------------------------------------
    def pilots(self) -> list[PilotRecord]:
        """Every pilot this spool submitted; an unreadable record is kept in ``problems``."""
        out = []
        for name in p.listdir(str(self.pilots_dir)):
            path = self.pilots_dir / name
            try:
                rec = PilotRecord(**p.read_json(str(path)))
                rec.state = PilotState(rec.state)
            except (OSError, ValueError, TypeError) as exc:
                self._problem(unreadable(path, exc))
                continue
            out.append(rec)
        return sorted(out, key=lambda r: r.submitted)

    def save_pilot(self, rec: PilotRecord) -> None:
        rec.updated = p.now_iso()
        p.write_json(str(self.pilots_dir / (rec.pilot_id + RECORD_SUFFIX)), asdict(rec))

    # -- the pass lock ---------------------------------------------------------------
    def lock(self, timeout: float) -> contextlib.AbstractContextManager[None]:
        """Hold the spool lock; LockTimeout if another pass keeps it past ``timeout``."""
        return pass_lock(self.path / "lock", timeout)


def _read_record(path: str) -> Any:
    """JSON of a spool record, opened without following a link."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(exc.errno, "a symbolic link, not a record") from None
        raise
    with os.fdopen(fd, encoding="utf-8") as handle:
        return json.load(handle)
