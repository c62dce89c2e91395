"""The admin's job table (``hpc-batch jobs``) and finding one job by name, Galaxy job id or
a unique prefix of its name (``show``, ``logs``, ``cancel``).

Everything comes from the spool: the job records and, for what a record does not hold
(older spools), the ``finished`` event of the job. Reads are defensive: a record that
cannot be read is reported in the table's ``problems`` and the others are listed.
"""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from galaxy_hpc_runner.dropbox import description as d
from galaxy_hpc_runner.dropbox.metrics import timestamp
from galaxy_hpc_runner.dropbox.spool import JobRecord, Spool
from galaxy_hpc_runner.errors import HpcBatchError
from galaxy_hpc_runner.galaxy.descriptions import META_GALAXY_JOB_ID
from hpc_worker import protocol as p
from hpc_worker.states import JobState

GALAXY_ID_KEY = META_GALAXY_JOB_ID  # in the description's meta: (the Galaxy runner sets it)
SERVER_KEY = "server"  # in meta: the submitting server, when servers share a workspace
RESULT_READS = 200  # result files read for hosts the spool does not hold (newest first)


class NoSuchJob(HpcBatchError):
    """No job, or more than one, matches what the admin typed."""


@dataclass
class JobRow:
    name: str
    state: str
    galaxy_id: str | None
    received: str
    updated: str
    pilot: str
    host: str | None
    rc: int | None
    status: str
    message: str

    def seconds(self, now: float) -> float | None:
        """Age of an active job; for a finished one, received to finished."""
        start = timestamp(self.received)
        end = timestamp(self.updated) if self.state == JobState.FINISHED else now
        return None if start is None or end is None else max(0.0, end - start)


def meta_of(rec: JobRecord) -> dict[str, Any]:
    meta = (rec.doc or {}).get("meta") if isinstance(rec.doc, dict) else None
    return meta if isinstance(meta, dict) else {}


def galaxy_id(rec: JobRecord) -> str | None:
    value = meta_of(rec).get(GALAXY_ID_KEY)
    return None if value is None else str(value)


def records(spool: Spool, problems: list[str] | None = None) -> list[JobRecord]:
    """Every job the spool remembers, active and finished."""
    out = list(spool.active())
    names = {rec.name for rec in out}
    for name in sorted(spool.finished_names() - names):
        try:
            rec = spool.get(name)
        except HpcBatchError as exc:
            if problems is not None:
                problems.append(str(exc))
            continue
        if rec is not None:
            out.append(rec)
    if problems is not None:
        problems += [m for m in getattr(spool, "problems", []) if m not in problems]
    return out


def finished_events(spool: Spool) -> dict[str, dict[str, Any]]:
    """Each job's last ``finished`` event (rc and friends for records that lack them)."""
    return {e["job"]: e for e in spool.history_all()
            if e.get("to") == JobState.FINISHED and isinstance(e.get("job"), str)}


def row(rec: JobRecord, event: dict[str, Any] | None) -> JobRow:
    event = event or {}
    rc = getattr(rec, "rc", None)
    rc = event.get("rc") if rc is None else rc
    return JobRow(name=rec.name, state=str(rec.state), galaxy_id=galaxy_id(rec),
                  received=rec.received, updated=rec.updated, pilot=rec.pilot,
                  host=getattr(rec, "host", None) or event.get("host"),
                  rc=rc if isinstance(rc, int) and not isinstance(rc, bool) else None,
                  status=rec.status, message=rec.message)


def since_cutoff(text: str | None, now: float) -> float | None:
    """``--since``: a duration back from now (2h, 1d) or an ISO date/time."""
    if not text:
        return None
    from galaxy_hpc_runner.config import parse_duration

    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise NoSuchJob("--since %r: give a duration (90m, 2h, 1d) or a date "
                        "(2026-11-27 or 2026-11-27T08:00)" % text) from None


def table(spool: Spool, states: set[str] | None = None, since: float | None = None,
          server: str | None = None, problems: list[str] | None = None,
          dropbox: Path | None = None) -> list[JobRow]:
    """Rows oldest first: active jobs always (unless filtered), finished ones since ``since``."""
    events = finished_events(spool)
    rows = []
    for rec in records(spool, problems):
        if states and str(rec.state) not in states:
            continue
        if server is not None and server not in (p.server_of(rec.name),
                                                 str(meta_of(rec).get(SERVER_KEY, ""))):
            continue
        received = timestamp(rec.received)
        if since is not None and received is not None and received < since:
            continue
        rows.append(row(rec, events.get(rec.name)))
    rows.sort(key=lambda r: (r.received, r.name))
    if dropbox is not None:
        _hosts_from_results(dropbox, rows)
    return rows


def _hosts_from_results(dropbox: Path, rows: list[JobRow]) -> None:
    """The host of finished jobs whose spool record lacks it, while the result file is there."""
    lacking = [r for r in rows if r.host is None and r.state == JobState.FINISHED]
    for r in lacking[-RESULT_READS:]:
        node = result_of(dropbox, r.name) or {}
        r.host = str(node["host"]) if node.get("host") else None


def find(spool: Spool, query: str, dropbox: Path | None = None) -> str:
    """The job NAME meant by ``query``: the exact name, a Galaxy job id, or a unique prefix.
    NoSuchJob otherwise, saying so when ``dropbox`` still holds QUERY.job (not received)."""
    if spool.get(query) is not None:
        return query
    known = records(spool)
    by_galaxy = sorted((r for r in known if galaxy_id(r) == query), key=lambda r: r.received)
    if by_galaxy:
        return by_galaxy[-1].name  # the latest run of that Galaxy job
    prefixed = sorted(r.name for r in known if r.name.startswith(query))
    if len(prefixed) == 1:
        return prefixed[0]
    if prefixed:
        raise NoSuchJob("%r is ambiguous: %d jobs start with it (%s%s); give more of the name"
                        % (query, len(prefixed), ", ".join(prefixed[:5]),
                           ", ..." if len(prefixed) > 5 else ""))
    waiting = dropbox / (query + d.SUFFIX) if dropbox is not None else None
    if waiting is not None and waiting.is_file():
        raise NoSuchJob("%s is still waiting in the dropbox (%s): no submitter pass has "
                        "received it yet; is a submitter running? (hpc-batch status)"
                        % (query, waiting))
    raise NoSuchJob("no job named %r, with Galaxy job id %r, or whose name starts with it in "
                    "spool %s (see hpc-batch jobs)" % (query, query, spool.path))


def result_of(dropbox: Path, name: str) -> dict[str, Any] | None:
    """The job node of NAME.job.finished while it is there; None when it is not (any more)."""
    try:
        doc = d.load_yaml((dropbox / (name + d.FINISHED_SUFFIX)).read_text(encoding="utf-8"))
    except (OSError, ValueError, HpcBatchError):
        return None
    node = doc.get("job") if isinstance(doc, dict) else None
    return node if isinstance(node, dict) else None


def ago(seconds: float | None) -> str:
    """``45s``, ``12m``, ``3h05m``, ``2d04h``: how long, in the fewest characters."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 120:
        return "%ds" % s
    if s < 3600:
        return "%dm" % (s // 60)
    if s < 86400:
        return "%dh%02dm" % (s // 3600, s % 3600 // 60)
    return "%dd%02dh" % (s // 86400, s % 86400 // 3600)


def format_table(rows: list[JobRow], now: float | None = None) -> str:
    now = time.time() if now is None else now
    head = ("NAME", "GALAXY", "STATE", "AGE", "PILOT", "HOST", "RC")
    body = [(r.name, r.galaxy_id or "-", r.state + ("/" + r.status if r.status else ""),
             ago(r.seconds(now)), r.pilot or "-", r.host or "-",
             "-" if r.rc is None else str(r.rc)) for r in rows]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True))
                               .rstrip()
                     for line in [head, *body])
