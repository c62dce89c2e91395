"""``job.json`` as the job's journal (protocol version 3): one file per job, no more.

The submitter writes the job's :class:`~records.JobSpec` (with the rendered script in
``script_text`` where it fits) as the first line of ``W/jobs/KEY/job.json``. Pilots then
append a line per start and release of the job (:class:`~records.RunLine`) and one when
it ended (:class:`~records.Result`), each tagged with its kind (``"rec": "run"`` or
``"rec": "result"``), before the done marker.
Before version 3 these went to two more files, ``runs.jsonl`` and ``result.json``: two
new files per job, and making a file is the dearest step on shared and some local file
systems (`docs/throughput.md`). A pilot of this release, given a job staged by an older
submitter, appends to its ``job.json`` all the same. Readers still read the two older
files (a pilot of the older release may have written them before an upgrade): a run
line of ``runs.jsonl`` counts, ``result.json`` is the result when the journal holds none.

What the job can do to its journal. The job runs as the same user in
``W/jobs/KEY/attempt-N``: it can append to, replace or remove ``../job.json``, as it
could write ``runs.jsonl`` and ``result.json`` before. Hence:

* a pilot appends with ``O_APPEND``, never through a link, only to a regular file, and
  starts a new line where the file does not end with one;
* readers take the *last* valid result line (the pilot's own is written after the job's
  processes are gone) and only the end of the file: run lines from its last
  ``MAX_RUNS_BYTES``, the result from its last ``MAX_RECORD_BYTES``; a line that is not
  valid JSON of a known kind is skipped (a torn line is a step not taken);
* the spec is the first line only, read before the job ever ran.

Standard library only, Python 3.8.
"""

from __future__ import annotations

import json
import os
import stat
from typing import Any, Dict, List, NamedTuple, Optional, Tuple, Union

from .records import (
    MAX_RECORD_BYTES,
    MAX_RUNS_BYTES,
    OLDEST_READABLE,
    JobSpec,
    ProtocolError,
    Result,
    RunLine,
    load_json,
    open_regular,
    parse_runs,
    read_up_to,
)

KIND = "rec"
VERSION = 3  # the protocol version that made job.json the journal
RUN, RESULT = "run", "result"
_APPEND_FLAGS = os.O_RDWR | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0) | \
    getattr(os, "O_NONBLOCK", 0)


class Journal(NamedTuple):
    runs: List[RunLine]
    result: Optional[Result]


def line(record: Union[RunLine, Result]) -> bytes:
    """``record`` as one journal line, tagged with its kind, ready for one write()."""
    data = record.to_json()
    data[KIND] = RESULT if isinstance(record, Result) else RUN
    return (json.dumps(data, sort_keys=True) + "\n").encode("utf-8")


def append(path: str, data: bytes) -> None:
    """Append ``data`` (whole lines) to the regular file ``path`` in one write(), on a
    line of its own; never through a link, never creating the file."""
    fd = os.open(path, _APPEND_FLAGS)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError("%s is not a regular file" % path)
        if info.st_size and os.pread(fd, 1, info.st_size - 1) != b"\n":
            data = b"\n" + data  # a torn or foreign last line: ours starts a new one
        os.write(fd, data)
    finally:
        os.close(fd)


def parse(data: bytes) -> Journal:
    """The run lines and the last result in (the end of) a journal, read from its end:
    run lines from the last MAX_RUNS_BYTES, the last valid result line. Only lines tagged
    with a kind count (the spec's first line has none, a tail's torn first line is no JSON)."""
    runs: List[RunLine] = []
    result: Optional[Result] = None
    end = len(data)
    runs_from = end - MAX_RUNS_BYTES
    while end > 0 and (result is None or end > runs_from):
        start = data.rfind(b"\n", 0, end - 1) + 1 if end > 1 else 0
        raw = data[start:end]
        kind, record = _entry(raw) if start >= runs_from or b'"result"' in raw else ("", None)
        if kind == RUN and start >= runs_from and isinstance(record, RunLine):
            runs.append(record)
        elif kind == RESULT and result is None and isinstance(record, Result):
            result = record
        end = start
    runs.reverse()
    return Journal(runs, result)


def _entry(raw: bytes) -> Tuple[str, Optional[Union[RunLine, Result]]]:
    if b'"rec"' not in raw:
        return "", None
    try:
        data = json.loads(raw)
        kind = data.get(KIND) if isinstance(data, dict) else None
        if kind == RUN:
            return kind, RunLine.from_json(data, "job.json run line")
        if kind == RESULT:
            return kind, Result.from_json(data, "job.json result line")
    except (ValueError, ProtocolError):
        pass
    return "", None


class Job(NamedTuple):
    """What a pilot reads of a job before it claims it."""

    spec: JobSpec
    runs: List[RunLine]


def read_job(path: str) -> Job:
    """The spec on the first line of the job's journal ``path`` (at most MAX_RECORD_BYTES)
    and the run lines at its end (:func:`parse`), read through one descriptor, never
    through a link; for a spec of a version before 3 also the lines of the ``runs.jsonl``
    beside it, first (an older pilot's, unreadable ones skipped). FileNotFoundError when
    there is no journal, ProtocolError when it is no regular file or its spec cannot be
    read."""
    fd, size = open_regular(path)
    try:
        head = read_up_to(fd, min(size, MAX_RECORD_BYTES) + 1, size + 1)
        whole = len(head) <= MAX_RECORD_BYTES  # the file ended before the limit
        tail = head[-MAX_RUNS_BYTES:] if whole else _tail(fd, MAX_RUNS_BYTES)
    finally:
        os.close(fd)
    data = _first_line(head, path)
    spec = JobSpec.from_json(data, path)
    runs = parse(tail).runs
    if data.get("v", OLDEST_READABLE) < VERSION:
        runs = _older_runs(os.path.join(os.path.dirname(path), RunLine.NAME)) + runs
    return Job(spec, runs)


def _first_line(head: bytes, path: str) -> Dict[str, Any]:
    end = head.find(b"\n")
    if end < 0 and len(head) > MAX_RECORD_BYTES:
        raise ProtocolError("%s: its first line is longer than the %d bytes allowed"
                            % (path, MAX_RECORD_BYTES))
    data = load_json(head if end < 0 else head[:end], path)
    if not isinstance(data, dict):
        raise ProtocolError("%s: its first line is no JSON object" % path)
    return data


def _older_runs(path: str) -> List[RunLine]:
    try:
        fd, _size = open_regular(path)
    except (OSError, ProtocolError):
        return []
    try:
        return parse_runs(_tail(fd, MAX_RUNS_BYTES))
    except OSError:
        return []
    finally:
        os.close(fd)


def _tail(fd: int, limit: int) -> bytes:
    """The last ``limit`` bytes of the open file ``fd``."""
    size = os.fstat(fd).st_size
    start = max(0, size - limit)
    os.lseek(fd, start, os.SEEK_SET)
    return read_up_to(fd, size - start, size - start)
