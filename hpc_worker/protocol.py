"""The on-disk protocol between the submitting side and the pilot.

Everything the two sides exchange lives under the HPC workspace root ``W``
(``[hpc_env] workspace`` in the config)::

    W/jobs/KEY/                 the job's own workspace (<<workspace>> in templates)
    W/jobs/KEY/job.sh           the rendered script
    W/jobs/KEY/job.json         what the pilot needs: walltime, outputs, ...
    W/jobs/KEY/runs.jsonl       one line per start of the job by a pilot
    W/jobs/KEY/result.json      written by the pilot when the job ended
    W/jobs/KEY/stdout.txt, stderr.txt
    W/queue/ready/KEY           staged: any pilot may claim it
    W/queue/claimed/KEY@PILOT   claimed by PILOT (rename of the ready marker)
    W/queue/done/KEY            result.json is complete: the submitter collects
    W/queue/cancel/KEY          a cancel request for a claimed job
    W/pilots/PILOT.json         registry entry (records.PilotEntry), written before submission
    W/pilots/PILOT.hb           heartbeat, written by the pilot
    W/pilots/PILOT.log          the pilot's log

Every state change is one ``rename`` of a marker, which is atomic on a POSIX
file system: two pilots can never both claim a job, and a marker only becomes
visible once the files it announces are complete.

This module is shared by both sides and must stay standard-library only and
compatible with Python 3.8.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import tempfile
from typing import Any, Dict, List, Optional

READY = "queue/ready"
CLAIMED = "queue/claimed"
DONE = "queue/done"
CANCEL = "queue/cancel"
JOBS = "jobs"
PILOTS = "pilots"
INPUTS = "inputs"
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



def now_iso() -> str:
    """The current time, ISO 8601 with milliseconds and the local time zone."""
    return datetime.datetime.now().astimezone().isoformat(timespec="milliseconds")


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


def atomic_write(path: str, data: "bytes | str", mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` so a reader sees the old file or the whole new one."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def write_json(path: str, obj: Any) -> None:
    """Atomic JSON; key order is kept (descriptions keep the order they were written in)."""
    atomic_write(path, json.dumps(obj, indent=1) + "\n")


def read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def append_jsonl(path: str, obj: Dict[str, Any]) -> None:
    """Append one JSON line; a single write() of a short line is not interleaved."""
    line = (json.dumps(obj, sort_keys=True) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
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


def optional_float(value: Any) -> Optional[float]:
    return None if value is None else float(value)
