"""Spool records: the job and pilot records, and whole job records kept while in use.

A job's record holds its description and validated paths (a few KB); a pass keeps
only a compact entry of each job (:mod:`.spool_index`) and reads the whole record when
it acts on the job. :class:`RecordCache` keeps the last :data:`RECORDS_KEPT` of them,
each checked against its file's key (inode, size, times) before it is used again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import stat
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from galaxy_hpc_runner.dropbox.spool_index import StatKey, stat_key
from galaxy_hpc_runner.errors import HpcBatchError
from hpc_worker import protocol as p
from hpc_worker.states import JobState, PilotState

REWRITE_BYTES = 64 << 10  # a record file this long is written anew as one line
FIXED_FIELDS = frozenset({"doc", "meta"})  # set when the job is received, never changed
_DECODER = json.JSONDecoder()


class SpoolError(HpcBatchError):
    """A spool record cannot be read; the message names the file and what to do."""


@dataclass
class JobRecord:
    name: str
    state: JobState = JobState.RECEIVED
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


class RecordCache:
    """Whole records recently read or written, by path; safe beside Galaxy's monitor thread."""

    def __init__(self, size: int, fresh: float) -> None:
        self.size, self.fresh = size, fresh
        self._records: OrderedDict[str, tuple[StatKey, bool, JobRecord]] = OrderedDict()
        self._lock = threading.Lock()
        self.reads = 0  # records read from disk (tests and benchmarks look at it)

    def sure(self, info: os.stat_result) -> bool:
        """Changed more than ``fresh`` seconds ago: a rewrite would show as a new key."""
        return time.time() - info.st_mtime_ns / 1e9 > self.fresh

    def remember(self, path: str, info: os.stat_result, rec: JobRecord,
                 own: bool = False) -> None:
        """Keep ``rec``, read from (or, ``own``, just written by the lock holder to) ``path``:
        what the holder wrote is what the file holds, however recent."""
        with self._lock:
            self._records[path] = (stat_key(info), own or self.sure(info), rec)
            self._records.move_to_end(path)
            while len(self._records) > self.size:
                self._records.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._records.clear()

    def forget(self, path: str) -> None:
        with self._lock:
            self._records.pop(path, None)

    def load(self, path: Path | str) -> JobRecord | None:
        """The record at ``path`` (from memory while its file is unchanged); None if absent;
        SpoolError when it cannot be read (a link, not JSON, not a record)."""
        where = str(path)
        try:
            info = os.stat(where, follow_symlinks=False)
        except FileNotFoundError:
            self.forget(where)
            return None
        except OSError as exc:
            raise SpoolError(unreadable(path, exc)) from exc
        with self._lock:
            cached = self._records.get(where)
        if cached is not None and cached[0] == stat_key(info) and cached[1]:
            return cached[2]
        try:
            rec = JobRecord.from_json(_read_record(where))
        except FileNotFoundError:
            self.forget(where)
            return None
        except (OSError, ValueError, TypeError) as exc:
            self.forget(where)
            raise SpoolError(unreadable(path, exc)) from exc
        self.reads += 1
        self.remember(where, info, rec)
        return rec


def write_record(path: str, rec: JobRecord, sync: bool) -> os.stat_result:
    """Write ``rec`` to its record file at ``path``; the file's stat afterwards.

    A record file that exists, ends with a whole line and is under REWRITE_BYTES gets one
    more line: the record's changing fields (every field but FIXED_FIELDS), appended in one
    ``write`` (no new file: creating a file is the dearest step on some file systems,
    docs/design.md). Otherwise the whole record is written as a new one-line file (temp +
    rename). Only the pass lock's holder writes, so the temp file has a fixed name (a
    killed pass's is overwritten); the file is private to the spool's owner."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK
                     | os.O_CLOEXEC)
    except OSError:  # absent, a link, a FIFO without reader...: the new file replaces it
        return _replace_record(path, rec, sync)
    try:
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode) and 0 < info.st_size < REWRITE_BYTES and \
                os.pread(fd, 1, info.st_size - 1) == b"\n":
            changing = {k: v for k, v in vars(rec).items() if k not in FIXED_FIELDS}
            p.write_all(fd, (json.dumps(changing) + "\n").encode("utf-8"), sync)
            return os.fstat(fd)
    finally:
        os.close(fd)
    return _replace_record(path, rec, sync)


def _replace_record(path: str, rec: JobRecord, sync: bool) -> os.stat_result:
    data = (json.dumps(vars(rec)) + "\n").encode("utf-8")  # fields as they are: no copy
    directory, base = os.path.split(path)
    tmp = os.path.join(directory, ".tmp-" + base)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        p.write_all(fd, data, sync)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)
    return os.stat(path)  # after the rename, which changes its ctime


def parse_record(data: bytes) -> dict[str, Any]:
    """A record file's fields: its first object, updated by each later line in turn. The
    first object may span lines (a record written by hand or by another tool). A last
    line that cannot be read and has no newline was cut short (a crash during its
    ``write``): it is left out, the step it would have written not taken."""
    try:
        return _fields(data.decode("utf-8"))
    except ValueError:
        end = data.rfind(b"\n") + 1
        if end in (0, len(data)):
            raise
        return _fields(data[:end].decode("utf-8"))


def _fields(text: str) -> dict[str, Any]:
    fields, at = _DECODER.raw_decode(text, len(text) - len(text.lstrip()))
    if not isinstance(fields, dict):
        raise ValueError("not a JSON object")
    rest, *lines = text[at:].split("\n")
    if rest.strip():
        raise ValueError("more than one object on its first line")
    if lines and not lines[-1]:
        lines.pop()  # the newline that ends the last line
    for number, line in enumerate(lines, 2):
        change = json.loads(line)
        if not isinstance(change, dict):
            raise ValueError("line %d is not a JSON object" % number)
        fields.update(change)
    return fields


def take_token(lock: Path, token: str) -> bool:
    """Leave ``token`` in the lock file (held); True when it was there already, i.e. no
    other spool object took the lock since the one ``token`` names."""
    data = token.encode()
    fd = os.open(lock, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if os.pread(fd, len(data) + 1, 0) == data:
            return True
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        return False
    finally:
        os.close(fd)


def _read_record(path: str) -> Any:
    """JSON of a spool record, opened without following a link."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(exc.errno, "a symbolic link, not a record") from None
        raise
    try:
        chunks = []
        while block := os.read(fd, 1 << 16):
            chunks.append(block)
    finally:
        os.close(fd)
    return parse_record(b"".join(chunks))
