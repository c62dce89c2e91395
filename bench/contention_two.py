"""The contention benchmark's two-server stream (issue 13).

Two submitting servers (say AMP production and AMP test), each with its own dropbox,
spool and submitter thread, each a source of one job every ``--two-interval`` seconds
(the second source offset by half of it). Run two ways under the same contention:

- ``separate``: today's one pilot per server: each server its own workspace, so each
  queues (and waits for) its own pilots;
- ``shared``: one workspace and the HPC-side pilot registry: a pilot of either server
  serves both servers' jobs, so the second server's jobs ride the first one's pilot.

Reports, per way: scheduler submissions (pilots), latency (drop -> result) and the
pilots' queue waits; the row keys are ``two/separate`` and ``two/shared``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import contention_report as rep
import contention_slurm as cs
import yaml

from galaxy_hpc_runner.dropbox.submitter import Submitter
from hpc_worker.records import PilotEntry
from tests.sitekit import Site

log = logging.getLogger(__name__)
SERVERS = ("alpha", "beta")
WAYS = ("separate", "shared")
PATTERN = "two"
rep.LABELS.update({"separate": "two servers, a pilot each",
                   "shared": "two servers, one registry"})


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--two-interval", type=float, default=6.0,
                    help="two-server stream: seconds between one source's jobs")
    ap.add_argument("--two-jobs", type=int, default=12, help="two-server stream: jobs per source")


def _sites(root: Path, sections: dict[str, dict[str, str]], shared: bool) -> list[Site]:
    sites = []
    for server in SERVERS:
        workspace = root / ("workspace" if shared else "workspace-" + server)
        workspace.mkdir(parents=True, exist_ok=True)
        merged = dict(sections, hpc_env={"workspace": str(workspace), "server": server})
        sites.append(Site(root / server, **merged))
    return sites


def run(root: Path, args: argparse.Namespace, way: str,
        sections: dict[str, dict[str, str]], gpu_job: Any) -> rep.Phase:
    """Both sources drop their jobs while both submitters pass; the merged phase."""
    sites = _sites(root / ("two-" + way), sections, way == "shared")
    stop = threading.Event()
    subs = [site.submitter() for site in sites]
    threads = [threading.Thread(target=sub.loop, args=(stop, args.pass_interval), daemon=True)
               for sub in subs]
    names = [["%s%02d" % (server, i) for i in range(args.two_jobs)] for server in SERVERS]
    drops: list[list[float]] = [[], []]
    for thread in threads:
        thread.start()
    try:
        sources = [threading.Thread(target=_source, args=(site, mine, args, k * 0.5, drops[k],
                                                          gpu_job))
                   for k, (site, mine) in enumerate(zip(sites, names, strict=True))]
        for source in sources:
            source.start()
        for source in sources:
            source.join()
        done = [_wait(site, mine, args) for site, mine in zip(sites, names, strict=True)]
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        _cancel(subs)
    cs.wait_no_jobs([cs.PILOT_NAME], timeout=60)
    return _phase(way, sites, subs, names, drops, done)


def _source(site: Site, names: list[str], args: argparse.Namespace, offset: float,
            drops: list[float], gpu_job: Any) -> None:
    time.sleep(offset * args.two_interval)
    t0 = time.time()
    for i, name in enumerate(names):
        delay = t0 + i * args.two_interval - time.time()
        if delay > 0:
            time.sleep(delay)
        drops.append(time.time())
        site.drop(name, gpu_job(site, name, args.job_seconds))


def _wait(site: Site, names: list[str], args: argparse.Namespace) -> list[float]:
    deadline = time.monotonic() + args.two_jobs * (args.two_interval + args.job_seconds) + 600
    paths = [site.result_path(n) for n in names]
    while not all(path.exists() for path in paths):
        if time.monotonic() > deadline:
            raise TimeoutError("two-server stream: results missing at %s" % site.root)
        time.sleep(0.05)
    return [path.stat().st_mtime for path in paths]


def _cancel(subs: list[Submitter]) -> None:
    for sub in subs:
        for entry in _entries(sub):
            if entry.scheduler_id and entry.state.active:
                try:
                    cs.slurm(["scancel", entry.scheduler_id])
                except RuntimeError as exc:
                    log.warning("scancel %s: %s", entry.scheduler_id, exc)


def _entries(sub: Submitter) -> list[PilotEntry]:
    return list(sub.pilots.registry.entries().values())


def _phase(way: str, sites: list[Site], subs: list[Submitter], names: list[list[str]],
           drops: list[list[float]], done: list[list[float]]) -> rep.Phase:
    pairs = sorted(zip([t for d in drops for t in d], [t for d in done for t in d], strict=True))
    entries = {e.pilot_id: e for sub in subs for e in _entries(sub)}  # both registries
    waits, beats = [], {}
    for sub in subs:
        for pid, entry in entries.items():
            beat = sub.pilots.registry.heartbeat(pid)
            if beat is not None and beat.started and pid not in beats:
                waits.append(beat.started - _epoch(entry.submitted))
                beats[pid] = beat.to_json()  # a shared pilot once, seen by both servers
    jobs = [yaml.safe_load(site.result_path(n).read_text())["job"]
            for site, mine in zip(sites, names, strict=True) for n in mine]
    return rep.Phase(PATTERN, way, [d for d, _ in pairs], [e for _, e in pairs],
                     submissions=len(entries), queue_waits=waits,
                     failed=sum(1 for j in jobs if j["status"] != "ok"),
                     gpu=rep.measured_gpu(jobs, beats.values()))


def _epoch(iso: str) -> float:
    return datetime.datetime.fromisoformat(iso).timestamp()


def lines(rows: dict[str, dict[str, Any]]) -> list[str]:
    """shared vs separate: pilots queued and latency."""
    sep, sha = rows.get("two/separate"), rows.get("two/shared")
    if not (sep and sha):
        return []
    return ["two servers: the shared registry queued %d pilot(s) where one pilot per server "
            "queued %d; latency mean %.1f s vs %.1f s, p95 %.1f s vs %.1f s" % (
                sha["submissions"], sep["submissions"], sha["latency"]["mean"],
                sep["latency"]["mean"], sha["latency"]["p95"], sep["latency"]["p95"])]


def dump(path: Path, rows: dict[str, dict[str, Any]]) -> None:
    """The two-server rows alone, for the docs (the main JSON holds them too)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({k: v for k, v in rows.items() if k.startswith(PATTERN + "/")},
                               indent=2))

