"""What an admin asks: the spool's status, one job's story, its logs; and the client helpers
(drop a description, wait for its result)."""

from __future__ import annotations

import os
import posixpath
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from galaxy_hpc_runner.cli import gpu_figures, jobs, site_view
from galaxy_hpc_runner.config import Config
from galaxy_hpc_runner.dropbox import control
from galaxy_hpc_runner.dropbox import description as d
from galaxy_hpc_runner.dropbox.jobfiles import read_journal, transport_reader
from galaxy_hpc_runner.dropbox.metrics import LAST_PASS, timestamp
from galaxy_hpc_runner.dropbox.pilots import pilot_file
from galaxy_hpc_runner.dropbox.registry import Registry
from galaxy_hpc_runner.dropbox.spool import Spool
from galaxy_hpc_runner.errors import TransportError
from galaxy_hpc_runner.transport.base import Transport
from hpc_worker import protocol as p
from hpc_worker import records
from hpc_worker.states import HeartbeatState, JobState, PilotState, ResultStatus

T = TypeVar("T")
WAITING = (JobState.RECEIVED, JobState.STAGED)
PILOTS_SHOWN = 20
STALE_PASS_FACTOR = 3  # a pass older than this many intervals (and a minute) is "late"


def read_json_quietly(path: Path) -> Any:
    try:
        return p.read_json(str(path))
    except (OSError, ValueError):
        return None


@dataclass
class LastPass:
    """SPOOL/last_pass.json as the submitter writes it (unknown keys ignored)."""

    time: str = ""
    ok: bool = True
    errors: list[str] = field(default_factory=list)


@dataclass
class Beat:
    """The parts of a pilot's heartbeat that status shows (unknown keys ignored)."""

    epoch: float | None = None
    time: str = ""
    running: list[str] = field(default_factory=list)
    done: int | None = None
    host: str = ""


def view(cls: type[T], data: Any) -> T | None:
    """``cls`` from a JSON object, keeping only its fields; None when there is none."""
    if not isinstance(data, dict):
        return None
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in names})


def age_of(iso: str | None, now: float) -> float | None:
    ts = timestamp(iso)
    return None if ts is None else max(0.0, now - ts)


def pass_is_late(cfg: Config, last: dict[str, Any] | None, now: float) -> float | None:
    """Seconds since the last pass when no pass ran for a while (cron or service stopped?)."""
    seen = view(LastPass, last)
    age = age_of(seen.time if seen else None, now)
    limit = max(60.0, STALE_PASS_FACTOR * cfg.interval)
    if age is None or age > limit:
        return age if age is not None else float("inf")
    return None


def _pilot_entry(registry: Registry, pilot: Any, now: float) -> dict[str, Any]:
    """One of this server's pilots (its heartbeat through ``registry``: read once)."""
    entry = dict(pilot.__dict__)
    entry["state"] = str(pilot.state)
    entry["age"] = age_of(pilot.submitted, now)
    record = registry.heartbeat(pilot.pilot_id)
    hb = record.to_json() if record else None
    if pilot.state is PilotState.PENDING and record is not None and \
            record.state is not HeartbeatState.STOPPED:
        entry["state"] = str(PilotState.RUNNING)  # it beat since the last pass looked
    elif pilot.state is PilotState.PENDING:
        entry["queue_wait"] = entry["age"]  # waiting in the scheduler's queue so far
    entry["gpu"] = gpu_figures.pilot_figures(hb)  # a gone pilot's too: its last word
    if pilot.state is not PilotState.GONE:
        entry["heartbeat"] = hb
        beat = view(Beat, hb)
        epoch = beat.epoch if beat else None
        entry["heartbeat_age"] = (max(0.0, now - epoch) if isinstance(epoch, (int, float))
                                  else age_of(beat.time, now) if beat else None)
    return entry


def status_data(cfg: Config, transport: Transport, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    spool = Spool(cfg.spool)
    counts = {str(state): spool.count(state) for state in JobState}  # from the index
    waiting, running = _oldest_waiting(spool), _longest_running(spool)
    registry = site_view.registry_of(cfg, transport)
    site = site_view.site_picture(registry)
    pilots = [_pilot_entry(registry, pilot, now) for pilot in spool.pilots()[-PILOTS_SHOWN:]]
    last = read_json_quietly(cfg.spool / LAST_PASS)
    late = pass_is_late(cfg, last, now)
    passed = view(LastPass, last)
    return {"site": site,
            "spool": str(cfg.spool), "workspace": cfg.workspace, "backend": cfg.backend,
            "mode": control.current(cfg.spool).describe(), "counts": counts, "pilots": pilots,
            "gpu_total": gpu_figures.total(pilot.get("gpu") for pilot in pilots),
            "oldest_waiting": ({"name": waiting[0].name, "state": str(waiting[0].state),
                                "since": waiting[0].received,
                                "age": age_of(waiting[0].received, now)} if waiting else None),
            "longest_running": ({"name": running[0].name, "pilot": running[0].pilot,
                                 "since": running[0].updated,
                                 "age": age_of(running[0].updated, now)} if running else None),
            "last_pass": last,
            "last_pass_age": age_of(passed.time if passed else None, now),
            "last_pass_ok": passed.ok if passed else None,
            "pass_late": late is not None,
            "problems": list(getattr(spool, "problems", []))}


def _oldest_waiting(spool: Spool) -> list[Any]:
    """The record of the job waiting longest (a list of at most one), found by the
    index's received times: a backlog costs one record read, not one per job."""
    known = [(entry.received, name) for name in spool.names(*WAITING)
             if (entry := spool.entry(name)) is not None]
    recs = [spool.get(name) for _, name in sorted(known)[:1]]
    return [r for r in recs if r is not None]


def _longest_running(spool: Spool) -> list[Any]:
    """The record of the job running longest (a list of at most one); running jobs are
    few (at most the pilots' slots), so each is read."""
    recs = [r for r in map(spool.get, sorted(spool.names(JobState.CLAIMED))) if r is not None]
    return sorted(recs, key=lambda r: r.updated or "")[:1]


def last_pass_failed(data: dict[str, Any]) -> bool:
    return data.get("last_pass_ok") is False


def format_status(data: dict[str, Any]) -> str:
    ago = jobs.ago
    lines = ["spool %s  workspace %s  backend %s  mode %s" % (
        data["spool"], data["workspace"], data["backend"], data.get("mode")),
        "jobs: " + "  ".join("%s %d" % kv for kv in data["counts"].items())]
    oldest, longest = data["oldest_waiting"], data.get("longest_running")
    lines.append("oldest waiting: %s" % ("%s (%s, %s ago, since %s)" % (
        oldest["name"], oldest["state"], ago(oldest.get("age")), oldest["since"])
        if oldest else "none"))
    if longest:
        lines.append("longest running: %s (on %s for %s)" % (
            longest["name"], longest["pilot"] or "?", ago(longest.get("age"))))
    live = [pl for pl in data["pilots"] if pl["state"] != PilotState.GONE]
    gone = [pl for pl in data["pilots"] if pl["state"] == PilotState.GONE]
    lines.append("pilots:" if live else "pilots: none alive")
    lines += ["  " + _pilot_line(pilot) for pilot in live]
    if gone:  # their story is in `hpc-batch status --json` and `hpc-batch report`
        lines.append("  and %d gone, the newest %s (submitted %s ago)" % (
            len(gone), gone[-1]["pilot_id"], jobs.ago(gone[-1].get("age"))))
    own = gpu_figures.total_text(data.get("gpu_total"), "this server's pilots above")
    lines += ([own] if own else []) + site_view.site_lines(data.get("site"))
    lines += _pass_lines(data)
    lines += ["PROBLEM: " + problem for problem in data.get("problems", [])]
    return "\n".join(lines)


def _pilot_line(pilot: dict[str, Any]) -> str:
    ago = jobs.ago
    hb = view(Beat, pilot.get("heartbeat"))
    text = "%s  %s job %s  %s%s  submitted %s ago" % (
        pilot["pilot_id"], pilot["backend"], pilot["scheduler_id"] or "-", pilot["state"],
        " (%s)" % pilot["reason"] if pilot.get("reason") else "", ago(pilot.get("age")))
    if pilot.get("queue_wait") is not None and not hb:
        text += ", queued %s so far" % ago(pilot["queue_wait"])
    if hb:
        text += "  on %s, heartbeat %s ago, running %s, done %s" % (
            hb.host or "?", ago(pilot.get("heartbeat_age")), ",".join(hb.running or []) or "-",
            "?" if hb.done is None else hb.done)
    return text + gpu_figures.pilot_text(pilot.get("gpu"))


def _pass_lines(data: dict[str, Any]) -> list[str]:
    last = view(LastPass, data["last_pass"])
    if last is None:
        return ["last pass: none yet (is the submitter running? hpc-batch submitter --once)"]
    lines = ["last pass: %s ago (%s) %s" % (
        jobs.ago(data.get("last_pass_age")), last.time,
        ResultStatus.OK if last.ok else "FAILED: " + "; ".join(last.errors or []))]
    if data.get("pass_late"):
        lines.append("WARNING: no submitter pass for %s: is its cron job or service running?"
                     % jobs.ago(data.get("last_pass_age")))
    return lines


def job_paths(cfg: Config, name: str) -> dict[str, str]:
    directory = posixpath.join(cfg.workspace, p.JOBS, p.hpc_key(cfg.server_tag, name))
    return {"description": str(cfg.dropbox / (name + d.SUFFIX)),
            "result": str(cfg.dropbox / (name + d.FINISHED_SUFFIX)),
            "workspace": directory, "stdout": posixpath.join(directory, p.STDOUT),
            "stderr": posixpath.join(directory, p.STDERR),
            "journal": posixpath.join(directory, p.META)}


def show_data(cfg: Config, query: str) -> dict[str, Any]:
    """One job's story, found by exact name, Galaxy job id or unique name prefix.

    rc, host, pilot and the output tails come from the result file while it is there,
    else from the spool (the record, then its ``finished`` event)."""
    spool = Spool(cfg.spool)
    name = jobs.find(spool, query, cfg.dropbox)
    rec = spool.get(name)
    if rec is None:  # removed between find and get
        raise jobs.NoSuchJob("job %r left the spool just now" % name)
    history = spool.history(name)
    finished = [e for e in history if e.get("to") == JobState.FINISHED]
    row = jobs.row(rec, finished[-1] if finished else None)
    result = jobs.result_of(cfg.dropbox, name) if rec.state == JobState.FINISHED else None
    res = result or {}
    pilots = [e["pilot"] for e in history if e.get("pilot")]
    return {"name": name, "state": str(rec.state), "galaxy_job_id": row.galaxy_id,
            "description": rec.doc, "history": history,
            "pilot": rec.pilot or (pilots[-1] if pilots else None) or res.get("pilot"),
            "scheduler_id": res.get("scheduler_id") or res.get("pilot"),
            "host": res.get("host") or row.host,
            "rc": res.get("rc") if res.get("rc") is not None else row.rc,
            "status": rec.status or None, "message": rec.message or None,
            "lost_pilots": rec.lost, "releases": getattr(rec, "releases", 0),
            "stdout_tail": _kept(res, rec, finished, "stdout"),
            "stderr_tail": _kept(res, rec, finished, "stderr"),
            "gpu": gpu_figures.job_figures(res.get("metrics") if result else
                                           finished[-1].get("metrics") if finished else None),
            "paths": job_paths(cfg, name), "result": result}


def _kept(result: dict[str, Any], rec: Any, finished: list[dict[str, Any]],
          stream: str) -> str | None:
    """A stream's text: the result file's while it is there, else the spool's copy (the
    record's ``stdout_tail``/``stderr_tail``, or its ``finished`` event's)."""
    if stream in result:
        return str(result[stream] or "")
    kept = getattr(rec, stream + "_tail", None)
    if not isinstance(kept, str) and finished:
        kept = finished[-1].get(stream + "_tail")
    return kept if isinstance(kept, str) else None


def format_show(data: dict[str, Any]) -> str:
    lines = ["job %s: %s%s" % (data["name"], data["state"],
                               " (%s: %s)" % (data["status"], data["message"])
                               if data["status"] else "")]
    if data.get("galaxy_job_id"):
        lines.append("Galaxy job id: %s" % data["galaxy_job_id"])
    lines.append("description:")
    lines.extend("  " + line for line in d.dump_yaml(data["description"]).splitlines())
    lines.append("history:")
    for event in data["history"]:
        extra = {k: v for k, v in event.items() if k not in ("time", "job", "from", "to")}
        lines.append("  %s  %-9s -> %-9s %s" % (
            event["time"], event["from"] or "-", event["to"],
            " ".join("%s=%s" % kv for kv in sorted(extra.items()))))
    lines.append("pilot %s  host %s  rc %s  lost pilots %s  releases %s" % (
        data["pilot"], data["host"], data["rc"], data["lost_pilots"], data.get("releases", 0)))
    gpu = gpu_figures.job_line(data.get("gpu"))
    lines += [gpu] if gpu else []
    lines.extend("%s: %s" % kv for kv in data["paths"].items())
    return "\n".join(lines)


def logs_text(cfg: Config, transport: Transport, query: str) -> str:
    """stdout/stderr, the job's run records, and where its pilots' logs are.

    Nothing here searches log text: the run records (job.json's lines, one per start
    and release) and the spool history are the structured story."""
    data = show_data(cfg, query)
    out = []
    for stream in ("stdout", "stderr"):
        text = data["%s_tail" % stream]
        if text is None and data["state"] != JobState.FINISHED:
            text = _remote_text(transport, data["paths"][stream], cfg.max_log_bytes)
        out += ["== %s" % stream, text if text is not None else "(not kept)"]
    runs = _runs(transport, data["paths"]["workspace"]) \
        if data["state"] != JobState.FINISHED else []
    out.append("== runs" if runs else "== runs: (none on the HPC side%s)" % (
        " any more; see the history in hpc-batch show" if data["state"] == JobState.FINISHED
        else " yet"))
    for run in runs:
        out.append("  %s %s on %s slot %s%s%s" % (
            "given back" if run.released else "started", run.released or run.start,
            run.host or "?", run.slot, " gpu %s" % run.gpu if run.gpu else "",
            " (%s)" % run.reason if run.reason else ""))
    for pilot in _pilot_ids(cfg, data):
        out.append("== pilot %s log: %s" % (pilot, pilot_file(cfg, pilot, p.PILOT_LOG)))
    return "\n".join(out)


def _remote_text(transport: Transport, path: str, limit: int) -> str:
    try:
        return transport.read_text(path, limit=limit)
    except TransportError:
        return "(not there yet)"


def _runs(transport: Transport, directory: str) -> list[records.RunLine]:
    """The run lines of the job in ``directory`` (its journal, runs.jsonl of older pilots)."""
    try:
        return read_journal(transport_reader(transport, directory)).runs
    except (TransportError, ValueError):
        return []


def _pilot_ids(cfg: Config, data: dict[str, Any]) -> list[str]:
    """Pilots that held the job: from its history, and the one named in its result."""
    ids = [e["pilot"] for e in data["history"] if e.get("pilot")]
    final = (data["result"] or {}).get("pilot")
    ids += [pl.pilot_id for pl in Spool(cfg.spool).pilots() if final and pl.scheduler_id == final]
    return list(dict.fromkeys(ids))


def drop(cfg: Config, source: Path) -> str:
    """Copy a description into the dropbox under a unique name; returns the name."""
    stem = source.name[: -len(d.SUFFIX)] if source.name.endswith(d.SUFFIX) else source.stem
    stem = "".join(c if c.isalnum() or c in "_.-" else "_" for c in stem)[:100] or "job"
    name = "%s-%s-%s" % (stem, time.strftime("%Y%m%dT%H%M%S"), secrets.token_hex(4))
    text = source.read_text(encoding="utf-8")
    p.atomic_write(str(cfg.dropbox / (name + d.SUFFIX)), text)
    return name


def wait_for(cfg: Config, name: str, timeout: float | None, on_change: Callable[[str], None],
             tick: Callable[[], object] | None = None) -> dict[str, Any] | None:
    """Block until NAME.job.finished exists; report each change of what is known. None on
    timeout. The report says the elapsed time, the pilot's queue state while the job waits,
    and when no submitter pass has run for a while."""
    spool = Spool(cfg.spool)
    result_path = cfg.dropbox / (name + d.FINISHED_SUFFIX)
    started = time.monotonic()
    deadline = None if timeout is None else started + timeout
    seen = ""
    while deadline is None or time.monotonic() < deadline:
        if tick is not None:
            tick()
        said = _progress(cfg, spool, name)
        if said and said != seen:
            on_change("[%s] %s" % (jobs.ago(time.monotonic() - started), said))
            seen = said
        if os.path.exists(result_path):
            return jobs.result_of(cfg.dropbox, name)
        time.sleep(0.2)
    return None


def _progress(cfg: Config, spool: Spool, name: str) -> str:
    """One line: the job's state, its pilot's queue state, and a late-pass warning."""
    now = time.time()
    late = pass_is_late(cfg, read_json_quietly(cfg.spool / LAST_PASS), now)
    warning = "; no submitter pass for %s (is cron or the service running?)" % (
        _minutes(late) if late != float("inf") else "ever") if late is not None else ""
    rec = spool.get(name)
    if rec is None:
        return "waiting to be received" + warning
    if rec.state == JobState.CLAIMED:
        return "%s by %s, running %s%s" % (rec.state, rec.pilot,
                                            _minutes(age_of(rec.updated, now)), warning)
    pilots = [pl for pl in spool.pilots() if pl.state in (PilotState.PENDING,
                                                          PilotState.RUNNING)]
    queued = [pl for pl in pilots if pl.state is PilotState.PENDING]
    detail = ""
    if rec.state in WAITING and queued and not any(
            pl.state is PilotState.RUNNING for pl in pilots):
        detail = " (pilot %s queued %s)" % (queued[0].pilot_id,
                                              _minutes(age_of(queued[0].submitted, now)))
    return "%s%s%s" % (rec.state, detail, warning)


def _minutes(seconds: float | None) -> str:
    """Coarse on purpose, so that a progress line changes (and is printed) seldom: each
    minute for 10 minutes, then each 10 minutes, then each hour."""
    if seconds is None or seconds < 60:
        return "<1m"
    if seconds < 600:
        return "%dm" % (seconds // 60)
    if seconds < 3600:
        return "%dm" % (seconds // 600 * 10)
    return "%dh" % (seconds // 3600)
