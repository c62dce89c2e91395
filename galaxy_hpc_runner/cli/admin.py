"""What an admin asks: status of the spool, one job's story, its logs; and the client helper."""

from __future__ import annotations

import os
import posixpath
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from galaxy_hpc_runner.config import Config
from galaxy_hpc_runner.dropbox import description as d
from galaxy_hpc_runner.dropbox.pilots import pilot_file, read_heartbeat
from galaxy_hpc_runner.dropbox.spool import FINISHED, Spool
from galaxy_hpc_runner.errors import HpcBatchError, TransportError
from galaxy_hpc_runner.transport.base import Transport
from hpc_worker import protocol as p
from hpc_worker.states import JobState, PilotState


def _read_json_quietly(path: Path) -> Any:
    try:
        return p.read_json(str(path))
    except (OSError, ValueError):
        return None


def status_data(cfg: Config, transport: Transport) -> dict[str, Any]:
    spool = Spool(cfg.spool)
    active = spool.active()
    counts = {str(state): 0 for state in JobState}
    for rec in active:
        counts[rec.state] += 1
    counts[str(FINISHED)] += len(spool.finished_names())
    waiting = sorted((r for r in active if r.state != FINISHED), key=lambda r: r.received)
    pilots = []
    for pilot in spool.pilots()[-20:]:
        entry = dict(pilot.__dict__)
        if pilot.state is not PilotState.GONE:
            entry["heartbeat"] = read_heartbeat(cfg, transport, pilot.pilot_id)
        pilots.append(entry)
    return {"spool": str(cfg.spool), "workspace": cfg.workspace, "backend": cfg.backend,
            "counts": counts, "pilots": pilots,
            "oldest_waiting": ({"name": waiting[0].name, "state": waiting[0].state,
                                "since": waiting[0].received} if waiting else None),
            "last_pass": _read_json_quietly(cfg.spool / "last_pass.json")}


def format_status(data: dict[str, Any]) -> str:
    lines = ["spool %s  workspace %s  backend %s" % (
        data["spool"], data["workspace"], data["backend"]),
        "jobs: " + "  ".join("%s %d" % kv for kv in data["counts"].items())]
    oldest = data["oldest_waiting"]
    lines.append("oldest waiting: %s" % (
        "%s (%s since %s)" % (oldest["name"], oldest["state"], oldest["since"]) if oldest
        else "none"))
    lines.append("pilots:" if data["pilots"] else "pilots: none")
    for pilot in data["pilots"]:
        hb = pilot.get("heartbeat") or {}
        lines.append("  %s  %s job %s  %s%s%s" % (
            pilot["pilot_id"], pilot["backend"], pilot["scheduler_id"], pilot["state"],
            " (%s)" % pilot["reason"] if pilot.get("reason") else "",
            "  heartbeat %s running %s" % (hb["time"], ",".join(hb["running"]) or "-")
            if hb else ""))
    last = data["last_pass"]
    if last:
        lines.append("last pass: %s %s" % (last["time"], "ok" if last["ok"] else
                                            "FAILED: " + "; ".join(last["errors"])))
    return "\n".join(lines)


def job_paths(cfg: Config, name: str) -> dict[str, str]:
    directory = posixpath.join(cfg.workspace, p.JOBS, name)
    return {"description": str(cfg.dropbox / (name + d.SUFFIX)),
            "result": str(cfg.dropbox / (name + d.FINISHED_SUFFIX)),
            "workspace": directory, "stdout": posixpath.join(directory, p.STDOUT),
            "stderr": posixpath.join(directory, p.STDERR)}


def show_data(cfg: Config, name: str) -> dict[str, Any]:
    spool = Spool(cfg.spool)
    rec = spool.get(name)
    if rec is None:
        raise HpcBatchError("no job named %r in spool %s" % (name, cfg.spool))
    result = None
    if rec.state == FINISHED:
        try:
            result = d.load_yaml(Path(job_paths(cfg, name)["result"]).read_text())["job"]
        except (OSError, TypeError, KeyError):
            result = None
    history = spool.history(name)
    pilots = [e["pilot"] for e in history if e.get("pilot")]
    return {"name": name, "state": rec.state, "description": rec.doc, "history": history,
            "pilot": (result or {}).get("pilot") or (pilots[-1] if pilots else None),
            "host": (result or {}).get("host"), "rc": (result or {}).get("rc"),
            "status": rec.status or None, "message": rec.message or None,
            "lost_pilots": rec.lost, "paths": job_paths(cfg, name), "result": result}


def format_show(data: dict[str, Any]) -> str:
    lines = ["job %s: %s%s" % (data["name"], data["state"],
                               " (%s: %s)" % (data["status"], data["message"])
                               if data["status"] else "")]
    lines.append("description:")
    lines.extend("  " + line for line in d.dump_yaml(data["description"]).splitlines())
    lines.append("history:")
    for event in data["history"]:
        extra = {k: v for k, v in event.items() if k not in ("time", "job", "from", "to")}
        lines.append("  %s  %-9s -> %-9s %s" % (
            event["time"], event["from"] or "-", event["to"],
            " ".join("%s=%s" % kv for kv in sorted(extra.items()))))
    lines.append("pilot %s  host %s  rc %s  lost pilots %s" % (
        data["pilot"], data["host"], data["rc"], data["lost_pilots"]))
    lines.extend("%s: %s" % kv for kv in data["paths"].items())
    return "\n".join(lines)


def logs_text(cfg: Config, transport: Transport, name: str) -> str:
    data = show_data(cfg, name)
    out = []
    if data["result"]:
        out += ["== stdout", data["result"].get("stdout", ""),
                "== stderr", data["result"].get("stderr", "")]
    else:
        for stream in ("stdout", "stderr"):
            try:
                text = transport.read_text(data["paths"][stream], limit=cfg.max_log_bytes)
            except TransportError:
                text = "(not there yet)"
            out += ["== %s" % stream, text]
    for pilot in _pilot_ids(cfg, data):
        out.append("== pilot %s log" % pilot)
        out += [line for line in _pilot_log(cfg, transport, pilot).splitlines()
                if "(%s)" % name in line]
    return "\n".join(out)


def _pilot_ids(cfg: Config, data: dict[str, Any]) -> list[str]:
    """Pilots that held the job: from its history, and the one named in its result."""
    ids = [e["pilot"] for e in data["history"] if e.get("pilot")]
    final = (data["result"] or {}).get("pilot")
    ids += [p.pilot_id for p in Spool(cfg.spool).pilots() if final and p.scheduler_id == final]
    return list(dict.fromkeys(ids))


def _pilot_log(cfg: Config, transport: Transport, pilot: str) -> str:
    try:
        return transport.read_text(pilot_file(cfg, pilot, ".log"))
    except TransportError:
        return ""


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
    """Block until NAME.job.finished exists; report each state change. None on timeout."""
    spool = Spool(cfg.spool)
    result_path = cfg.dropbox / (name + d.FINISHED_SUFFIX)
    deadline = None if timeout is None else time.monotonic() + timeout
    seen = ""
    while deadline is None or time.monotonic() < deadline:
        if tick is not None:
            tick()
        rec = spool.get(name)
        state = rec.state + (" by " + rec.pilot if rec.state == "claimed" else "") if rec else ""
        if state and state != seen:
            on_change(state)
            seen = state
        if os.path.exists(result_path):
            doc = d.load_yaml(result_path.read_text(encoding="utf-8"))
            return doc.get("job") if isinstance(doc, dict) else None
        time.sleep(0.2)
    return None
