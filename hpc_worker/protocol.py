"""The on-disk protocol between the submitting side and the pilot.

Everything the two sides exchange lives under the HPC workspace root ``W``
(``[hpc_env] workspace`` in the config)::

    W/jobs/KEY/                 the job's staged files (inputs, job.json, job.sh)
    W/jobs/KEY/job.sh           the rendered script, where it is too long for job.json's
                                ``script_text`` (more than MAX_STR characters)
    W/jobs/KEY/job.json         the job's journal (journal.py): what the pilot needs
                                (records.JobSpec) on its first line, then a line per
                                start or release (records.RunLine) and its result
                                (records.Result), appended by pilots
    W/jobs/KEY/runs.jsonl       read only: where pilots before protocol version 3 wrote
                                the run lines
    W/jobs/KEY/attempt-N/       attempt N's own directory: the job's cwd and <<workspace>>,
                                inputs hard-linked in, outputs written here
    W/jobs/KEY/attempt-N.sh     attempt N's script (the job's script with <<workspace>>
                                pointed here)
    W/jobs/KEY/current          reserved (releases before 2026-11-27 wrote the live attempt's
                                name here; its start line in runs.jsonl names it too)
    W/jobs/KEY/result.json      the result of a job the pilot could not run (its journal
                                gets it too where it can be written); before protocol
                                version 3 every result (read when the journal has none)
    W/jobs/KEY/stdout.txt, stderr.txt, OUTPUT...
                                hard links to the live attempt's files (published at start
                                for the logs, at the end for the outputs)
    W/queue/ready/KEY           staged: any pilot may claim it
    W/queue/claimed/KEY@PILOT   claimed by PILOT (rename of the ready marker)
    W/queue/done/KEY            the result is in the journal, durable: the submitter collects
    W/queue/cancel/KEY          a cancel request for a claimed job
    W/pilots/PILOT.json         registry entry (records.PilotEntry), written before submission
    W/pilots/PILOT.hb           heartbeat (records.Heartbeat), written by the pilot
    W/pilots/PILOT.log          the pilot's log
    W/pilots/PILOT.out          the scheduler's output of the pilot job
    W/pilots/.lock              the registry lock of the submitting servers (create-exclusive)
    W/bin/hpc_worker-vN-HASH.pyz the pilot program, deployed by the submitter (zipapp)

Every state change is one ``rename`` of a marker, which is atomic on a POSIX
file system: two pilots can never both claim a job, and a marker only becomes
visible once the files it announces are complete.

Attempts. Each start of a job runs in a fresh ``attempt-N`` directory, so a
stale attempt (a pilot judged dead that still runs) can never write where the
live one does. A pilot publishes into ``W/jobs/KEY`` only while it still holds
the job's claim marker, and moves the marker to ``done/`` right after. The
submitter collects with the helpers below, all pure path functions usable on
either side (POSIX paths)::

    W/jobs/KEY/job.json                 -> the result: its last result line (journal.py)
    output_path(W, KEY, NAME, ATTEMPT)  -> W/jobs/KEY/ATTEMPT/NAME, ATTEMPT from the
                                           result's ``attempt`` ("" -> W/jobs/KEY/NAME)
    log_path(W, KEY, STDOUT, ATTEMPT)   -> the same for stdout.txt / stderr.txt
    attempt_dir(W, KEY, ATTEMPT)        -> W/jobs/KEY/ATTEMPT (check valid_attempt first)

The published links in ``W/jobs/KEY`` are the same files, so a submitter that
still reads ``W/jobs/KEY/NAME`` gets the live attempt's outputs too.

This module is shared by both sides and must stay standard-library only and
compatible with Python 3.8.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import posixpath
import re
import tempfile
import time
from typing import Any, Dict, List, Optional

READY = "queue/ready"
CLAIMED = "queue/claimed"
DONE = "queue/done"
CANCEL = "queue/cancel"
JOBS = "jobs"
PILOTS = "pilots"
INPUTS = "inputs"
BIN = "bin"  # W/bin: the deployed pilot programs
REGISTRY_LOCK = ".lock"  # W/pilots/.lock, hidden: listings of W/pilots skip dot names
QUEUE_DIRS = (READY, CLAIMED, DONE, CANCEL)
ALL_DIRS = QUEUE_DIRS + (JOBS, PILOTS, INPUTS)

SCRIPT = "job.sh"
META = "job.json"
RUNS = "runs.jsonl"
RESULT = "result.json"
STDOUT = "stdout.txt"
STDERR = "stderr.txt"

CLAIM_SEP = "@"
SERVER_SEP = "="  # KEY = SERVER=NAME when several submitting servers share one workspace
KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+=-]{0,199}$")
# the pilot files: registry entry, heartbeat, log, scheduler output
PILOT_SUFFIXES = (".json", ".hb", ".log", ".out")
PILOT_ENTRY, HEARTBEAT, PILOT_LOG, PILOT_OUT = PILOT_SUFFIXES

# a file system without hard links (or not between these directories) answers link() so
NO_LINKS = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP})
CURRENT = "current"  # reserved: older pilots wrote the live attempt's name there
ATTEMPT_PREFIX = "attempt-"
ATTEMPT_RE = re.compile(r"^attempt-[1-9][0-9]{0,5}$")
ATTEMPT_SCRIPT_SUFFIX = ".sh"
# names in a job directory that are the protocol's own: no input or output may take them
RESERVED_NAMES = (SCRIPT, META, RUNS, RESULT, STDOUT, STDERR, CURRENT)
FILE_NAME_RE = re.compile(r"^[^/\x00]{1,255}$")


def now_iso(at: Optional[float] = None) -> str:
    """The current time (or ``at``, a time.time() value), ISO 8601 with milliseconds and
    the local time zone (its offset then: one zone object per offset seen, not one per
    call as ``astimezone()`` makes)."""
    now = time.time() if at is None else at
    offset = time.localtime(now).tm_gmtoff
    zone = _ZONES.get(offset)
    if zone is None:
        zone = _ZONES.setdefault(offset, datetime.timezone(datetime.timedelta(seconds=offset)))
    return datetime.datetime.fromtimestamp(now, zone).isoformat(timespec="milliseconds")


_ZONES: Dict[int, datetime.tzinfo] = {}


def epoch_iso(epoch: Optional[float]) -> str:
    """A time.time() value as ISO 8601 in the local time zone ("-" for None)."""
    if epoch is None:
        return "-"
    return datetime.datetime.fromtimestamp(epoch).astimezone().isoformat(timespec="seconds")


def valid_key(key: str) -> bool:
    return bool(KEY_RE.match(key)) and CLAIM_SEP not in key


def valid_name(name: str) -> bool:
    """A job name as dropped (NAME.job): a key without a server part."""
    return valid_key(name) and SERVER_SEP not in name


def hpc_key(server: str, name: str) -> str:
    """The workspace key of job ``name`` from submitting server ``server`` (none: the name)."""
    return server + SERVER_SEP + name if server else name


def server_of(key: str) -> str:
    """The submitting server a workspace key belongs to ("" for a key without one)."""
    server, sep, _ = key.partition(SERVER_SEP)
    return server if sep else ""


def pilot_path(root: str, pilot_id: str, suffix: str) -> str:
    """W/pilots/PILOT.SUFFIX, ``suffix`` one of PILOT_SUFFIXES."""
    if suffix not in PILOT_SUFFIXES:
        raise ValueError("unknown pilot file suffix %r" % suffix)
    return os.path.join(root, PILOTS, pilot_id + suffix)


def claim_name(key: str, pilot: str) -> str:
    return key + CLAIM_SEP + pilot


def split_claim(name: str) -> "tuple[str, str]":
    """``KEY@PILOT`` -> (KEY, PILOT)."""
    key, _, pilot = name.partition(CLAIM_SEP)
    return key, pilot


def current_umask() -> int:
    """This process's umask, read without changing it (Linux), else by a quick set/reset."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def umask_mode(mode: int) -> int:
    """``mode`` as the process umask leaves it: what a plainly created file would get."""
    return mode & 0o777 & ~current_umask()


def atomic_write(path: str, data: "bytes | str", mode: Optional[int] = None,
                 sync: bool = True) -> None:
    """Write ``data`` to ``path`` so a reader sees the old file or the whole new one
    (``sync``: on disk before it is visible). The file gets ``mode``, by default what the
    umask leaves of 0666, as any file the process creates (never a fixed 0644)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if sync:
                os.fsync(handle.fileno())
        os.chmod(tmp, umask_mode(0o666) if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def write_all(fd: int, data: bytes, sync: bool) -> None:
    """Every byte of ``data`` to ``fd`` (``sync``: then on disk)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    if sync:
        os.fsync(fd)


CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)  # a new file


def replace_file(path: str, data: "bytes | str", sync: bool = False) -> None:
    """:func:`atomic_write` with the umask's mode in fewer system calls, for a process that
    writes many small files (the pilot): the temp file ``.tmp-PID-NAME`` is created
    exclusively, without following links, with the umask's mode (no ``chmod``); where that
    name is taken (a leftover of a killed process with the same pid) it falls back to
    :func:`atomic_write`. A reader sees the old file or the whole new one."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, ".tmp-%d-%s" % (os.getpid(), name))
    try:
        if len(name) > 200:
            raise FileExistsError(tmp)  # the temp name would be too long: the usual way
        fd = os.open(tmp, CREATE_FLAGS, 0o666)
    except FileExistsError:
        atomic_write(path, data, sync=sync)
        return
    try:
        try:
            write_all(fd, data, sync)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def write_json(path: str, obj: Any, sync: bool = True) -> None:
    """Atomic JSON; key order is kept (descriptions keep the order they were written in).
    ``sync=False``: the caller makes it durable later with ``durable.sync_paths``."""
    atomic_write(path, json.dumps(obj, indent=1) + "\n", sync=sync)


def read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def jsonl_line(obj: Dict[str, Any]) -> bytes:
    """``obj`` as one line of a JSON-lines file, ready for a single write()."""
    return (json.dumps(obj, sort_keys=True) + "\n").encode("utf-8")


def append_jsonl(path: str, obj: Dict[str, Any]) -> None:
    """Append one JSON line; a single write() of a short line is not interleaved."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, jsonl_line(obj))
    finally:
        os.close(fd)


def read_jsonl(path: str) -> List[Dict[str, Any]]:
    """Every complete line of a JSON-lines file; a torn last line is ignored."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().split("\n")
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def try_rename(src: str, dst: str) -> bool:
    """Rename; False when ``src`` is gone (somebody else moved it first)."""
    try:
        os.rename(src, dst)
    except FileNotFoundError:
        return False
    return True


def listdir(path: str) -> List[str]:
    """Visible entries of a directory (temp files start with a dot), sorted."""
    try:
        names = os.listdir(path)
    except FileNotFoundError:
        return []
    return sorted(name for name in names if not name.startswith("."))


def ensure_layout(root: str) -> None:
    for sub in ALL_DIRS:
        os.makedirs(os.path.join(root, sub), exist_ok=True)


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def job_dir(root: str, key: str) -> str:
    return os.path.join(root, JOBS, key)


def marker(root: str, queue: str, name: str) -> str:
    return os.path.join(root, queue, name)


# -- attempts ------------------------------------------------------------------------
def attempt_name(number: int) -> str:
    return "%s%d" % (ATTEMPT_PREFIX, number)


def valid_attempt(name: str) -> bool:
    """An attempt directory name as the pilot makes them (``attempt-N``)."""
    return bool(ATTEMPT_RE.match(name))


def valid_file_name(name: str) -> bool:
    """A plain file name a job may declare as input or output: one path component, not
    a protocol file, an attempt's name, a dot file or a temp file."""
    return (bool(FILE_NAME_RE.match(name)) and not name.startswith(".")
            and name not in RESERVED_NAMES and not name.startswith(ATTEMPT_PREFIX))


def attempt_dir(root: str, key: str, attempt: str) -> str:
    """W/jobs/KEY/ATTEMPT; ValueError for a name that is not an attempt's."""
    if not valid_attempt(attempt):
        raise ValueError("%r is not an attempt directory name" % attempt)
    return posixpath.join(root, JOBS, key, attempt)


def attempt_script(root: str, key: str, attempt: str) -> str:
    """W/jobs/KEY/attempt-N.sh: the script attempt N runs (outside its working directory)."""
    return attempt_dir(root, key, attempt) + ATTEMPT_SCRIPT_SUFFIX


def result_path(root: str, key: str) -> str:
    """W/jobs/KEY/result.json: the result of a job the pilot could not run, and of every job
    a pilot before protocol version 3 ran (the journal's result comes first)."""
    return posixpath.join(root, JOBS, key, RESULT)


def output_path(root: str, key: str, name: str, attempt: str = "") -> str:
    """Where output ``name`` of the attempt that wrote the result lies (``attempt`` from
    Result.attempt; "" for a result of a pilot without attempt directories)."""
    if not attempt:
        return posixpath.join(root, JOBS, key, name)
    return posixpath.join(attempt_dir(root, key, attempt), name)


def log_path(root: str, key: str, name: str, attempt: str = "") -> str:
    """STDOUT or STDERR of an attempt (or of the job directory for ``attempt`` "")."""
    if name not in (STDOUT, STDERR):
        raise ValueError("%r is not a job log" % name)
    return output_path(root, key, name, attempt)
