"""The spool: one state machine for every job, journaled on disk.

A job is ``received`` (its description was read and validated), ``staged``
(its files and ready marker are on the HPC side), ``claimed`` (a pilot runs
it) or ``finished`` (its result file exists). A job whose pilot dies, or that a
stopping pilot gives back, goes back to ``staged``. Each job is one record file:
written whole once (temp + rename), then one line of its changing fields appended per
transition in one ``write`` (``spool_records.write_record``; a last line cut short is
the transition not taken). Every transition is also one line of ``events.jsonl``::

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

Cost, durability in batches, and received-and-staged in one write: see
docs/design.md ("The spool: cost and durability"). In short, a pass keeps a compact
entry per active job in memory and reads a whole record only when it acts on the job;
records are written without ``fsync`` (a new file or an appended line), and
:meth:`Spool.barrier` makes them durable (one ``syncfs``) before any step that destroys
information elsewhere; a job received and staged in the same pass gets one record file,
not two (``create(hold=True)``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from galaxy_hpc_runner.dropbox import spool_format
from galaxy_hpc_runner.dropbox.passlock import pass_lock
from galaxy_hpc_runner.dropbox.spool_events import EventLog
from galaxy_hpc_runner.dropbox.spool_index import DirView, Entry, JobIndex, epoch, stat_key
from galaxy_hpc_runner.dropbox.spool_records import (
    DETAIL_FIELDS,
    JobRecord,
    PilotRecord,
    RecordCache,
    SpoolError,
    take_token,
    unreadable,
    write_record,
)
from galaxy_hpc_runner.errors import HpcBatchError
from hpc_worker import durable
from hpc_worker import protocol as p
from hpc_worker.states import JobState, PilotState

__all__ = ["ACTIVE", "CLAIMED", "DETAIL_FIELDS", "FINISHED", "RECEIVED", "STAGED", "Entry",
           "JobRecord", "PilotRecord", "Spool", "SpoolError", "unreadable"]
log = logging.getLogger(__name__)

RECEIVED, STAGED, CLAIMED, FINISHED = JobState
TRANSITIONS = {
    RECEIVED: {STAGED, FINISHED},
    STAGED: {CLAIMED, FINISHED, RECEIVED},
    CLAIMED: {STAGED, FINISHED, CLAIMED},
    FINISHED: set(),
}
RECORD_SUFFIX = ".json"
ACTIVE = (RECEIVED, STAGED, CLAIMED)
FRESH = 1.0  # seconds: a record changed this recently is read again on its next use
RESCAN_EVERY = 30.0  # seconds: the longest a look at jobs/ is reused (see Spool.names)
RECORDS_KEPT = 1024  # whole records kept in memory (the rest is read again when needed)
PRUNE_STAMP = "pruned"  # SPOOL/pruned: when finished records were last pruned


class Spool:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.jobs = self.path / "jobs"
        self.finished = self.path / str(FINISHED)
        self.pilots_dir = self.path / "pilots"
        self.events = self.path / "events.jsonl"
        self._log = EventLog(self.events)  # open while the lock is held (spool_events.py)
        self.problems: list[str] = []  # unreadable records met since the last take_problems()
        self._index = JobIndex()  # what a pass needs of every active job (spool_index.py)
        self._jobs_view = DirView(str(self.jobs), FRESH, RESCAN_EVERY)
        self._listed_problems: list[str] = []  # unreadable records of the last look
        self._unreadable: set[str] = set()  # their names
        self._finished_view = DirView(str(self.finished), FRESH, RESCAN_EVERY)
        self._finished_count = 0
        self._records = RecordCache(RECORDS_KEPT, FRESH)  # whole records, read on demand
        self._held: dict[str, JobRecord] = {}  # received, not yet written (module docstring)
        self._locked = False  # in a pass: only this process writes the spool
        self._token = "%d-%s" % (os.getpid(), os.urandom(8).hex())  # see lock()
        self._unsynced: set[str] = set()  # directories with writes not yet made durable
        self._make_private()
        self.format = spool_format.ensure(self.path)  # refuses a newer release's spool
        for d in (self.jobs, self.finished, self.pilots_dir):
            d.mkdir(mode=0o700, exist_ok=True)

    def _make_private(self) -> None:
        """The spool holds every job's paths and scripts: only its owner may enter it."""
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = self.path.stat()
        if info.st_uid == os.getuid() and info.st_mode & 0o077:
            os.chmod(self.path, 0o700)

    @property
    def reads(self) -> int:
        """Records read from disk so far (tests and benchmarks look at it)."""
        return self._records.reads

    def take_problems(self) -> list[str]:
        out, self.problems = self.problems, []
        return out

    # -- jobs: what a pass sees ------------------------------------------------------
    def names(self, *states: JobState) -> set[str]:
        """Names of the active jobs in ``states`` (from memory: module docstring)."""
        self._refresh()
        names = self._index.names(*states)
        return names | self._held.keys() if RECEIVED in states and self._held else names

    def entry(self, name: str) -> Entry | None:
        """What the index knows of an active job (as of the last :meth:`names`)."""
        return self._index.get(name)

    def count(self, state: JobState) -> int:
        """Jobs in ``state``; finished: the records kept in ``finished/``."""
        if state == FINISHED:
            return self._count_finished()
        self._refresh()
        return self._index.count(state) + (len(self._held) if state == RECEIVED else 0)

    def oldest_waiting(self) -> float:
        """Unix time the oldest job not yet running was received (0.0: none waits)."""
        self._refresh()
        return self._index.oldest_waiting()

    def active_names(self) -> set[str]:
        """Names of the active records, unreadable ones included."""
        self._refresh()
        return set(self._index.entries) | self._unreadable | self._held.keys()

    def active(self) -> list[JobRecord]:
        """Every active job's whole record, by name (read from disk: for people, not passes);
        an unreadable record is logged and kept in ``problems``."""
        out = []
        for name in sorted(self.names(*ACTIVE)):
            with contextlib.suppress(SpoolError):  # reported by _refresh
                rec = self._records.load(self.jobs / (name + RECORD_SUFFIX))
                if rec is not None:
                    out.append(rec)
        return out

    def _refresh(self) -> None:
        """Look at jobs/ again only when it changed (module docstring: Cost)."""
        key = self._jobs_view.key()
        if self._jobs_view.current(key, self._locked):
            for problem in self._listed_problems:  # reported in every pass while it is there
                self._problem(problem)
            return
        listed, problems = set(), []
        for fname in p.listdir(str(self.jobs)):
            if fname.endswith(RECORD_SUFFIX):
                name = fname[: -len(RECORD_SUFFIX)]
                listed.add(name)
                try:
                    self._index_one(name)
                except SpoolError as exc:
                    self._problem(str(exc))
                    problems.append(str(exc))
        for gone in set(self._index.entries) - listed:
            self._index.drop(gone)
        self._listed_problems = problems
        self._unreadable = listed - set(self._index.entries)
        self._jobs_view.looked(key, self._locked)

    def _index_one(self, name: str) -> None:
        path = self.jobs / (name + RECORD_SUFFIX)
        try:
            info = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            self._index.drop(name)
            return
        except OSError as exc:
            self._index.drop(name)
            raise SpoolError(unreadable(path, exc)) from exc
        if self._index.known(name, stat_key(info)):
            return
        try:
            rec = self._records.load(path)
        except SpoolError:
            self._index.drop(name)
            raise
        if rec is None:
            self._index.drop(name)
        else:
            self._remember_entry(name, rec, info)

    def _remember_entry(self, name: str, rec: JobRecord, info: os.stat_result) -> None:
        """The index entry of the record in jobs/NAME.json (its file name decides)."""
        self._index.put(name, stat_key(info), self._records.sure(info), Entry(
            rec.state, rec.pilot, rec.withdrawn, epoch(rec.received)))

    def _count_finished(self) -> int:
        key = self._finished_view.key()
        if not self._finished_view.current(key, self._locked):
            self._finished_count = len(self.finished_names())
            self._finished_view.looked(key, self._locked)
        return self._finished_count

    def finished_names(self) -> set[str]:
        return {n[: -len(RECORD_SUFFIX)] for n in p.listdir(str(self.finished))
                if n.endswith(RECORD_SUFFIX)}

    def has_finished(self, name: str) -> bool:
        """A finished record of this name is kept (one ``stat``, no listing)."""
        return os.path.lexists(self.finished / (name + RECORD_SUFFIX))

    def get(self, name: str) -> JobRecord | None:
        """The job's record, None when the spool has none; SpoolError when it is unreadable."""
        held = self._held.get(name)  # one look: Galaxy's monitor thread reads beside a pass
        if held is not None:
            return held
        for directory in (self.jobs, self.finished):
            rec = self._records.load(directory / (name + RECORD_SUFFIX))
            if rec is not None:
                return rec
        return None

    # -- jobs: changes ---------------------------------------------------------------
    def create(self, name: str, doc: dict[str, Any] | None,
               meta: dict[str, Any] | None = None, hold: bool = False) -> JobRecord:
        """The first journal entry of a job: written before anything can run, or with
        ``hold`` kept in memory until its first transition or :meth:`write_held`
        (module docstring: the description stays in the dropbox meanwhile)."""
        now = p.now_iso()
        rec = JobRecord(name=name, doc=doc, meta=meta or {}, received=now, updated=now)
        if hold:  # its event line comes with its first record
            self._held[name] = rec
        else:
            self._save(rec, sync=False)  # the description is still in the dropbox
            self.event(name, None, RECEIVED)
        return rec

    def write_held(self) -> None:
        """Write the records of the held jobs that are still ``received``."""
        for rec in list(self._held.values()):
            self._save(rec, sync=False)

    def transition(self, rec: JobRecord, state: JobState, sync: bool = False,
                   **detail: Any) -> None:
        """Move ``rec`` to ``state``: one line appended to its record, then one event line.

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
        self._records.forget(str(src))
        self._index.drop(rec.name)
        try:
            os.replace(src, self.finished / (rec.name + RECORD_SUFFIX))
        except FileNotFoundError:  # archived already: safe to repeat
            return
        self._finished_count += 1
        self._jobs_view.own_change(self._locked)
        self._finished_view.own_change(self._locked)
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
            durable.sync_paths(sorted(paths))

    def retire(self, name: str) -> None:
        """Make room for a resubmission under the same name; the old record is kept."""
        src = self.finished / (name + RECORD_SUFFIX)
        if src.exists():
            os.replace(src, self.finished / ("%s%s.%d" % (name, RECORD_SUFFIX, time.time_ns())))
            self._finished_count -= 1
            self._finished_view.own_change(self._locked)

    def event(self, name: str, old: JobState | None, new: JobState, **detail: Any) -> None:
        entry = {"time": p.now_iso(), "job": name, "from": old, "to": new}
        entry.update(detail)
        self._log.append(entry, self._locked)

    def history(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.history_all() if e.get("job") == name]

    def history_all(self) -> list[dict[str, Any]]:
        return self._log.entries()

    def prune_if_due(self, keep_days: float, every: float) -> int:
        """:meth:`prune` when the last prune by any process (``SPOOL/pruned``'s time) is
        ``every`` seconds old or more: a cron pass (a new process each minute) does not
        scan ``finished/`` every time."""
        stamp = self.path / PRUNE_STAMP
        with contextlib.suppress(FileNotFoundError):
            if time.time() - stamp.stat().st_mtime < every:
                return 0
        removed = self.prune(keep_days)
        p.atomic_write(str(stamp), "%f\n" % time.time(), sync=False)
        return removed

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
        if removed:
            self._finished_view.forget()  # counted again when asked
        self._log.rotate(max_event_bytes)
        return removed

    def _save(self, rec: JobRecord, sync: bool = True) -> None:
        path = str(self.jobs / (rec.name + RECORD_SUFFIX))
        held = self._held.pop(rec.name, None) is not None  # from now on the file decides
        try:
            info = write_record(path, rec, sync)
        except BaseException:
            self._records.forget(path)  # what is on disk decides from now on
            self._index.drop(rec.name)
            self._jobs_view.forget()
            raise
        self._records.remember(path, info, rec, own=self._locked)
        self._remember_entry(rec.name, rec, info)
        self._jobs_view.own_change(self._locked)
        if not sync:
            self._unsynced.add(str(self.jobs))
        if held:
            self.event(rec.name, None, RECEIVED)

    def _problem(self, message: str) -> None:
        log.error("%s", message)
        if message not in self.problems:
            self.problems.append(message)

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
        p.write_json(str(self.pilots_dir / (rec.pilot_id + RECORD_SUFFIX)), vars(rec))

    # -- the pass lock ---------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, timeout: float) -> Iterator[None]:
        """Hold the spool lock; LockTimeout if another pass keeps it past ``timeout``.

        Whoever takes the lock leaves its token in the lock file: another token there
        means another spool object changed the spool since this one last held it, so
        what this one knows of it is looked at again."""
        with pass_lock(self.path / "lock", timeout):
            if not take_token(self.path / "lock", self._token):
                self._jobs_view.forget()
                self._finished_view.forget()
                self._records.clear()
            self._locked = True
            try:
                yield
            finally:
                self._locked = False
                self._log.close()
