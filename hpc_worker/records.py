"""The records the two sides exchange, as typed classes with a protocol version.

Every file written by one side and read by the other is one of these records:

=================  ===========================  ==========================
record             file                         written by
=================  ===========================  ==========================
:class:`JobSpec`   ``W/jobs/KEY/job.json``,     the submitter (staging)
                   its first line
:class:`RunLine`   a line of ``job.json``       the pilot, a line per start
                   (``runs.jsonl`` before v3)   or release of the job
:class:`Result`    a line of ``job.json``       the pilot, when the job ended
                   (``result.json`` before v3)
:class:`Heartbeat` ``W/pilots/PILOT.hb``        the pilot, on every change
:class:`PilotEntry` ``W/pilots/PILOT.json``     the submitter, before it
                                                submits the pilot
=================  ===========================  ==========================

``to_json`` writes ``"v": PROTOCOL_VERSION`` into every record; ``from_json``
checks every field's type and bounds and raises :class:`ProtocolError` naming
the file and the field. The version rule: a record without ``v`` is version 1
(the first release, same fields) and is read; a record of a version newer than
this side's is refused with a message naming both versions, so a submitter and
a pilot of different releases never misread each other.

``job.json`` as a journal (version 3 on): ``journal.py``. Readers of the run lines
(:func:`journal.parse`, :func:`parse_runs` for an older ``runs.jsonl``) go on with
:func:`count_releases` (how often pilots gave the job back, by ``ReleaseReason``)
and :func:`learned_runtime` (the longest a released attempt ran). A result's
``attempt`` names the attempt directory its outputs came from (see protocol.py).

Standard library only, Python 3.8.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import os
import typing
from typing import Any, ClassVar, Dict, List, Optional, Tuple, Type, TypeVar

from .states import HeartbeatState, PilotState, Reason, ResultStatus

PROTOCOL_VERSION = 3  # 3: job.json is the job's journal (journal.py)
OLDEST_READABLE = 1
MAX_STR = 1 << 16  # one string field (a message, a path)
MAX_ITEMS = 10000  # one list or mapping
MAX_RECORD_BYTES = 4 << 20  # one record file
MAX_RUNS_BYTES = 256 << 10  # the part of runs.jsonl that is read (its end)

R = TypeVar("R", bound="Record")


class ProtocolError(ValueError):
    """A record that cannot be read: wrong type, out of bounds, or another version."""


class Record:
    """Base of the protocol records (each is also a dataclass)."""

    NAME: ClassVar[str] = "record"

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"v": PROTOCOL_VERSION}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            out[f.name] = value.value if isinstance(value, enum.Enum) else value
        return out

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)

    @classmethod
    def from_json(cls: Type[R], data: Any, where: str = "") -> R:
        where = where or cls.NAME
        if not isinstance(data, dict):
            raise ProtocolError("%s: expected a JSON object, got %s" % (where, _kind(data)))
        check_version(data.get("v", OLDEST_READABLE), where)
        hints = _HINTS.get(cls)
        if hints is None:  # resolved once per record type: they never change
            hints = _HINTS[cls] = typing.get_type_hints(cls)
        values: Dict[str, Any] = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name in data:
                values[f.name] = _convert(data[f.name], hints[f.name], "%s: field %r" % (
                    where, f.name))
            elif f.default is dataclasses.MISSING and \
                    f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
                raise ProtocolError("%s: required field %r is missing" % (where, f.name))
        return cls(**values)

    @classmethod
    def loads(cls: Type[R], text: "str | bytes", where: str = "") -> R:
        return cls.from_json(load_json(text, where or cls.NAME), where)


_HINTS: Dict[type, Dict[str, Any]] = {}


def load_json(text: "str | bytes", where: str) -> Any:
    """``text`` as JSON; ProtocolError naming ``where`` when it is not valid JSON."""
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ProtocolError("%s: not valid JSON: %s" % (where, exc)) from exc


def check_version(version: Any, where: str) -> None:
    """Refuse a record of a version this side cannot read, naming both versions."""
    if not isinstance(version, int) or isinstance(version, bool):
        raise ProtocolError("%s: protocol version %r is not a number" % (where, version))
    if version > PROTOCOL_VERSION or version < OLDEST_READABLE:
        raise ProtocolError(
            "%s: written in protocol version %d, this side reads versions %d to %d: run the "
            "same galaxy-hpc-batch release on the submitting side and for the pilot"
            % (where, version, OLDEST_READABLE, PROTOCOL_VERSION))


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _convert(value: Any, hint: Any, where: str) -> Any:
    origin = getattr(hint, "__origin__", None)
    args: Tuple[Any, ...] = getattr(hint, "__args__", ())
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], where)
    if origin in (list, List):
        if not isinstance(value, list) or len(value) > MAX_ITEMS:
            raise ProtocolError("%s: expected a list of at most %d items" % (where, MAX_ITEMS))
        return [_convert(item, args[0], where) for item in value]
    if origin in (dict, Dict):
        if not isinstance(value, dict) or len(value) > MAX_ITEMS:
            raise ProtocolError("%s: expected a mapping of at most %d items" % (where, MAX_ITEMS))
        return {_convert(k, str, where): _convert(v, args[1], where) for k, v in value.items()}
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(value)
        except ValueError:
            raise ProtocolError("%s: %r is not one of %s" % (
                where, value, ", ".join(str(m.value) for m in hint))) from None
    return _scalar(value, hint, where)


def _scalar(value: Any, hint: Any, where: str) -> Any:
    if hint is Any:
        if value is None or isinstance(value, (bool, int, float, str)):
            return _scalar(value, float, where) if isinstance(value, float) else value
        raise ProtocolError("%s: expected a plain value, got %s" % (where, _kind(value)))
    if hint is bool and isinstance(value, bool):
        return value
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ProtocolError("%s: %r is not a finite number" % (where, value))
        return float(value)
    if hint is str and isinstance(value, str):
        if len(value) > MAX_STR:
            raise ProtocolError("%s: longer than %d characters" % (where, MAX_STR))
        return value
    raise ProtocolError("%s: expected %s, got %s" % (where, getattr(hint, "__name__", hint),
                                                     _kind(value)))


@dataclasses.dataclass
class JobSpec(Record):
    """``job.json``: what the pilot needs to run one job."""

    NAME: ClassVar[str] = "job.json"
    key: str
    script: str = ""
    walltime: Optional[float] = None
    inputs: List[str] = dataclasses.field(default_factory=list)
    outputs: List[str] = dataclasses.field(default_factory=list)
    env: Dict[str, str] = dataclasses.field(default_factory=dict)
    server: str = ""  # the submitting server (its spool tag), for shared pilots
    # the path the submitter rendered for <<workspace>> (W/jobs/KEY); the pilot points it at
    # the attempt directory. Empty: the pilot's own spelling of W/jobs/KEY is used.
    workspace: str = ""
    # the rendered script, where it fits a string field (MAX_STR characters): one staged file
    # less per job. Empty: the script is W/jobs/KEY/job.sh (larger ones, older submitters).
    script_text: str = ""


@dataclasses.dataclass
class RunLine(Record):
    """One line of ``runs.jsonl``: a start (``start`` set) or a release (``released`` set)."""

    NAME: ClassVar[str] = "runs.jsonl"
    pilot: str
    start: Optional[str] = None
    released: Optional[str] = None
    host: str = ""
    slot: int = 0
    gpu: str = ""
    reason: str = ""
    elapsed: Optional[float] = None  # seconds the released attempt ran
    attempt: str = ""  # the attempt directory's name (attempt-N) of this start or release

    @property
    def is_release(self) -> bool:
        return self.released is not None


@dataclasses.dataclass
class Result(Record):
    """``result.json``: how the job ended, written before its ``done`` marker."""

    NAME: ClassVar[str] = "result.json"
    status: ResultStatus
    message: str
    rc: Optional[int] = None
    reason: Optional[Reason] = None
    start: Optional[str] = None
    end: Optional[str] = None
    host: Optional[str] = None
    pilot: Optional[str] = None
    scheduler_id: Optional[str] = None
    slot: Optional[int] = None
    metrics: Dict[str, Any] = dataclasses.field(default_factory=dict)
    attempt: str = ""  # the attempt directory (attempt-N) this result and its outputs came from


@dataclasses.dataclass
class Heartbeat(Record):
    """``PILOT.hb``: the pilot's own word on what it does now."""

    NAME: ClassVar[str] = "heartbeat"
    pilot: str
    state: HeartbeatState
    epoch: float
    scheduler_id: str = ""
    host: str = ""
    pid: int = 0
    time: str = ""
    started: float = 0.0
    deadline: Optional[float] = None
    running: List[str] = dataclasses.field(default_factory=list)
    done: int = 0
    slots: int = 1
    gpus: List[str] = dataclasses.field(default_factory=list)  # devices allocated to the pilot
    slots_per_gpu: int = 1
    gpu_idle_seconds: float = 0.0  # device-seconds allocated GPUs held no job
    gpu_busy_seconds: float = 0.0  # device-seconds allocated GPUs held a job
    release_at: Optional[float] = None  # epoch when still-running jobs are given back


@dataclasses.dataclass
class PilotEntry(Record):
    """``PILOT.json``: the pilot registry entry, written before the pilot is submitted."""

    NAME: ClassVar[str] = "pilot entry"
    pilot_id: str
    submitted: str
    state: PilotState = PilotState.SUBMITTING
    scheduler_id: str = ""
    submitter: str = ""
    backend: str = ""
    slots: int = 1
    walltime: Optional[float] = None
    program: str = ""  # the deployed pilot program it runs (W/bin/...); "" from older submitters


def read_record(cls: Type[R], path: str, limit: int = MAX_RECORD_BYTES) -> R:
    """Read one record file: a regular file, not through a link, at most ``limit`` bytes."""
    return cls.loads(read_bounded(path, limit), path)


def read_bounded(path: str, limit: int) -> bytes:
    """A regular file's bytes, opened without following links or blocking; ProtocolError
    when it is something else or larger than ``limit``; FileNotFoundError when absent."""
    fd, size = open_regular(path)
    try:
        if size > limit:
            raise ProtocolError("%s: %d bytes, more than the %d allowed" % (path, size, limit))
        data = read_up_to(fd, limit + 1, size + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise ProtocolError("%s: more than the %d bytes allowed" % (path, limit))
    return data


def open_regular(path: str) -> Tuple[int, int]:
    """(a descriptor, the size) of the regular file ``path``, opened read-only without
    following links or blocking; ProtocolError when it is something else,
    FileNotFoundError when absent."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise ProtocolError("%s: cannot be opened safely (%s)" % (path, exc.strerror)) from exc
    info = os.fstat(fd)
    if not _is_regular(info.st_mode):
        os.close(fd)
        raise ProtocolError("%s: not a regular file" % path)
    return fd, info.st_size


def read_up_to(fd: int, most: int, guess: int) -> bytes:
    """At most ``most`` bytes of ``fd`` from where it stands (fewer at end of file), read in
    pieces of the expected size (no buffer of ``most`` bytes for a small file)."""
    parts: List[bytes] = []
    got = 0
    while got < most:
        part = os.read(fd, max(1, min(most - got, max(guess, 65536) if parts else guess)))
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def _is_regular(mode: int) -> bool:
    import stat

    return stat.S_ISREG(mode)


def parse_runs(data: bytes) -> List[RunLine]:
    """The lines of (the end of) a ``runs.jsonl``; a torn or foreign line is skipped."""
    out = []
    for line in data.decode("utf-8", "replace").split("\n"):
        try:
            out.append(RunLine.loads(line))
        except ProtocolError:
            continue
    return out


def count_releases(runs: List[RunLine], reasons: Optional[List[str]] = None) -> int:
    """How many times pilots gave the job back (release lines), optionally only for
    ``reasons`` (values of :class:`~hpc_worker.states.ReleaseReason`)."""
    return sum(1 for run in runs if run.is_release and (reasons is None or run.reason in reasons))


def learned_runtime(runs: List[RunLine]) -> Optional[float]:
    """The longest time an earlier attempt ran before it was released: a lower bound on the
    job's runtime (None when no release said how long it ran)."""
    times = [run.elapsed for run in runs if run.is_release and run.elapsed is not None]
    return max(times) if times else None
