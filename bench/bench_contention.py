"""Contention benchmark on a real one-node Slurm with fake GPUs (issue 5).

    .venv/bin/python bench/bench_contention.py [--jobs 50] [--gpus 4] ...

"Other users" keep K jobs pending in a strict FIFO queue (sched/builtin), so a
new job waits about W = K x their runtime / GPUs. Into that, N AMP jobs arrive
as a stream (one every few seconds) and as a burst (all at once), each run
one sbatch per job (Galaxy's stock Slurm/DRMAA runners) and with our
submitter + pilot (slurm backend, gres gpu:SLOTS per pilot); the stream also with a
warm pilot (``min_pilots = 1``, the stream starts once it runs). Prints the table
and the ratios; writes bench/results/contention.json and docs/contention.png.
Needs the Slurm packages: ``bash tests/services/install.sh``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

BENCH = Path(__file__).resolve().parent
PROJECT = BENCH.parent
sys.path.insert(0, str(PROJECT))
sys.path.insert(0, str(BENCH))

import contention_report as rep  # noqa: E402
import contention_slurm as cs  # noqa: E402
import contention_two as ct  # noqa: E402

from galaxy_hpc_runner.dropbox.templates import render  # noqa: E402
from tests.services.slurm import SlurmCluster  # noqa: E402
from tests.sitekit import TEST_TEMPLATES, Site  # noqa: E402

log = logging.getLogger(__name__)
TEMPLATE = "gpu_work"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=50, help="AMP jobs per pattern and way")
    ap.add_argument("--gpus", type=int, default=4, help="fake GPUs on the node")
    ap.add_argument("--job-seconds", type=float, default=2.0, help="AMP job runtime")
    ap.add_argument("--interval", type=float, default=3.0, help="stream: seconds between jobs")
    ap.add_argument("--other-pending", type=int, default=10, help="K: others' pending jobs")
    ap.add_argument("--other-runtime", type=float, nargs=2, default=(6.0, 10.0),
                    metavar=("MIN", "MAX"), help="others' job runtime, uniform")
    ap.add_argument("--slots", type=int, default=2, help="pilot slots (= GPUs it requests)")
    ap.add_argument("--max-pilots", type=int, default=2)
    ap.add_argument("--backlog-per-pilot", type=int, default=10)
    ap.add_argument("--idle-timeout", type=float, default=10.0, help="pilot idle timeout")
    ap.add_argument("--warm-idle-timeout", type=float, default=120.0,
                    help="warm pilot idle timeout (stream only; min_pilots = 1)")
    ap.add_argument("--ways", nargs="+", default=list(rep.WAYS), choices=rep.WAYS,
                    help="warm runs for the stream pattern only")
    ap.add_argument("--pass-interval", type=float, default=0.2, help="submitter pass interval")
    ap.add_argument("--patterns", nargs="+", default=["stream", "burst", "two"],
                    choices=["stream", "burst", "two"],
                    help="two: the two-server stream, separate pilots vs the shared registry")
    ct.add_args(ap)
    ap.add_argument("--json", type=Path, default=BENCH / "results" / "contention.json")
    ap.add_argument("--png", type=Path, default=PROJECT / "docs" / "contention.png")
    ap.add_argument("--max-seconds", type=float, default=1000.0,
                    help="hard bound on the other-users generator")
    ap.add_argument("--keep", action="store_true", help="keep the temp directory")
    ap.add_argument("--replot", type=Path, metavar="JSON",
                    help="only print the table and redraw the plot from an earlier JSON")
    return ap.parse_args(argv)


# -- arrivals and completions ---------------------------------------------------------
def arrive(n: int, interval: float, action: Callable[[int], object]) -> list[float]:
    """Call ``action(i)`` for job i at t0 + i x interval; the time of each call."""
    t0 = time.time()
    drops = []
    for i in range(n):
        delay = t0 + i * interval - time.time()
        if delay > 0:
            time.sleep(delay)
        drops.append(time.time())
        action(i)
    return drops


def wait_files(paths: list[Path], timeout: float) -> list[float]:
    """Wait until every path exists; their mtimes (the moment each was written)."""
    deadline = time.monotonic() + timeout
    missing = list(paths)
    while missing:
        if time.monotonic() > deadline:
            raise TimeoutError("%d of %d results missing after %.0fs, e.g. %s"
                               % (len(missing), len(paths), timeout, missing[0]))
        missing = [path for path in missing if not path.exists()]
        time.sleep(0.05)
    return [path.stat().st_mtime for path in paths]


def completion_timeout(args: argparse.Namespace, pattern: str) -> float:
    spacing = args.interval if pattern == "stream" else 0.0
    wait = args.other_pending * max(args.other_runtime) / args.gpus
    return float(args.jobs * (spacing + args.job_seconds) + 3 * wait + 120)


# -- one sbatch per job -----------------------------------------------------------------
def run_sbatch(root: Path, pattern: str, args: argparse.Namespace) -> rep.Phase:
    """Galaxy's stock runners: every job is its own sbatch asking for one GPU."""
    outdir = root / ("sbatch-" + pattern)
    outdir.mkdir(parents=True)
    text = (TEST_TEMPLATES / (TEMPLATE + ".sh")).read_text()
    outputs = [outdir / ("j%02d.out" % i) for i in range(args.jobs)]
    ids: list[str] = []

    def submit(i: int) -> None:
        script = render(text, {"seconds": args.job_seconds, "output": str(outputs[i])})
        ids.append(cs.sbatch(cs.AMP_NAME, script, output=str(outdir / ("j%02d.log" % i))))

    drops = arrive(args.jobs, args.interval if pattern == "stream" else 0.0, submit)
    done = wait_files(outputs, completion_timeout(args, pattern))
    times = cs.job_times(ids)
    waits = [t[1] - t[0] for t in (times.get(i) for i in ids)
             if t and t[0] is not None and t[1] is not None]
    failed = sum(1 for out in outputs if not out.read_text().startswith("gpu work done"))
    return rep.Phase(pattern, "sbatch", drops, done, submissions=len(ids),
                     queue_waits=waits, failed=failed)


# -- submitter + pilot ----------------------------------------------------------------------
def pilot_sections(args: argparse.Namespace, warm: bool = False) -> dict[str, dict[str, str]]:
    """Site config; ``warm`` keeps one pilot queued or running (min_pilots = 1)."""
    idle = args.warm_idle_timeout if warm else args.idle_timeout
    return {
        "scheduler": {"backend": "slurm", "gres": "gpu:%d" % args.slots, "partition": "debug",
                      "max_pilots": str(args.max_pilots),
                      "backlog_per_pilot": str(args.backlog_per_pilot),
                      "min_pilots": "1" if warm else "0",
                      "failure_backoff": "5", "command_timeout": "20"},
        "pilot": {"slots": str(args.slots), "idle_timeout": "%g" % idle,
                  "walltime": "20m", "poll": "0.1", "heartbeat": "1", "grace": "2",
                  "python": sys.executable},
        "submitter": {"interval": "%g" % args.pass_interval, "lock_timeout": "30"},
    }


def gpu_job(site: Site, name: str, seconds: float) -> dict[str, Any]:
    return {"script": TEMPLATE, "args": {"seconds": seconds},
            "output_map": {"output": str(site.out(name + ".out"))}}


def run_pilot(root: Path, pattern: str, args: argparse.Namespace,
              way: str = "pilot") -> rep.Phase:
    """Our way: drop descriptions; a submitter thread keeps pilots queued and collects.

    ``way = "warm"``: min_pilots = 1, and the jobs arrive only once that pilot runs;
    at the end the submitter stops first (or it would resubmit), then the pilot is
    scancelled.
    """
    warm = way == "warm"
    site = Site(root / ("%s-%s" % (way, pattern)), **pilot_sections(args, warm))
    sub = site.submitter()
    stop = threading.Event()
    thread = threading.Thread(target=sub.loop, args=(stop, args.pass_interval),
                              name="submitter", daemon=True)
    names = ["j%02d" % i for i in range(args.jobs)]
    thread.start()
    try:
        if warm:
            wait_warm(site, completion_timeout(args, "burst"))
        drops = arrive(args.jobs, args.interval if pattern == "stream" else 0.0,
                       lambda i: site.drop(names[i], gpu_job(site, names[i], args.job_seconds)))
        done = wait_files([site.result_path(n) for n in names], completion_timeout(args, pattern))
        if not warm:
            wait_pilots_gone(site, args.idle_timeout + 60)
    finally:
        stop.set()
        thread.join(timeout=60)
        cancel_pilots(site)
        sub.transport.close()
    cs.wait_no_jobs([cs.PILOT_NAME], timeout=60)  # a scancelled pilot writes its last beat
    return pilot_phase(site, pattern, way, names, drops, done)


def wait_warm(site: Site, timeout: float) -> None:
    """Wait until the warm pilot runs: its heartbeat file exists in WORKSPACE/pilots/."""
    deadline = time.monotonic() + timeout
    t0 = time.monotonic()
    while not list(pilots_dir(site).glob("*.hb")):
        if time.monotonic() > deadline:
            raise TimeoutError("no warm pilot running after %.0fs" % timeout)
        time.sleep(0.1)
    log.info("warm pilot running %.1fs after the submitter started", time.monotonic() - t0)


def pilots_dir(site: Site) -> Path:
    return site.root / "hpc" / "workspace" / "pilots"


def wait_pilots_gone(site: Site, timeout: float) -> None:
    """The submitter thread records each pilot as gone once Slurm no longer runs it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(rec.state == "gone" for rec in site.spool.pilots()):
            return
        time.sleep(0.5)
    log.warning("pilots still active after %.0fs", timeout)


def cancel_pilots(site: Site) -> None:
    """scancel whatever pilot is still queued or running (never os.kill a Slurm id)."""
    for rec in site.spool.pilots():
        if rec.scheduler_id and rec.state != "gone":
            try:
                cs.slurm(["scancel", rec.scheduler_id])
            except RuntimeError as exc:
                log.warning("scancel %s: %s", rec.scheduler_id, exc)


def _epoch(iso: str) -> float:
    return datetime.datetime.fromisoformat(iso).timestamp()


def pilot_phase(site: Site, pattern: str, way: str, names: list[str], drops: list[float],
                done: list[float]) -> rep.Phase:
    """Latencies, submissions, queue waits and GPU-seconds held idle by the pilots."""
    jobs = [yaml.safe_load(site.result_path(n).read_text())["job"] for n in names]
    busy = sum(_epoch(j["end"]) - _epoch(j["start"]) for j in jobs if j.get("start"))
    beats = pilot_beats(site)
    held = sum((hb["epoch"] - hb["started"]) * hb["slots"] for hb in beats.values())
    before = sum(max(0.0, min(hb["epoch"], min(drops)) - hb["started"]) * hb["slots"]
                 for hb in beats.values())
    after = sum(max(0.0, hb["epoch"] - max(hb["started"], max(done))) * hb["slots"]
                for hb in beats.values())
    submitted = {rec.pilot_id: _epoch(rec.submitted) for rec in site.spool.pilots()}
    waits = [hb["started"] - submitted[pid] for pid, hb in beats.items() if pid in submitted]
    starts = [hb["started"] for hb in beats.values()]
    return rep.Phase(pattern, way, drops, done, submissions=len(submitted),
                     queue_waits=waits, held_gpu_s=held, busy_s=busy, idle_gpu_s=held - busy,
                     failed=sum(1 for j in jobs if j["status"] != "ok"),
                     steady_from=min(starts) if starts else None,
                     before_gpu_s=before, after_gpu_s=after,
                     gpu=rep.measured_gpu(jobs, beats.values()))


def pilot_beats(site: Site) -> dict[str, dict[str, Any]]:
    """The last heartbeat of every pilot: its start, its end (state 'stopped') and slots."""
    out = {}
    for path in sorted(pilots_dir(site).glob("*.hb")):
        beat = yaml.safe_load(path.read_text())
        if beat.get("state") != "stopped":
            log.warning("pilot %s did not stop cleanly: its last heartbeat counts", path.stem)
        out[path.stem] = beat
    return out


# -- the whole run ----------------------------------------------------------------------------
def run_phases(root: Path, args: argparse.Namespace) -> list[rep.Phase]:
    phases = []
    for pattern in args.patterns:
        if pattern == ct.PATTERN:
            for way in ct.WAYS:
                log.info("=== two servers, %s ===", way)
                phases.append(ct.run(root, args, way, pilot_sections(args), gpu_job))
                cs.wait_no_jobs([cs.PILOT_NAME], timeout=120)
            continue
        for way in args.ways:
            if way == "warm" and pattern != "stream":
                continue
            log.info("=== %s, %s ===", pattern, way)
            t0 = time.monotonic()
            if way == "sbatch":
                phases.append(run_sbatch(root, pattern, args))
            else:
                phases.append(run_pilot(root, pattern, args, way))
            cs.wait_no_jobs([cs.AMP_NAME, cs.PILOT_NAME], timeout=120)
            log.info("%s/%s took %.0fs", pattern, way, time.monotonic() - t0)
    return phases


def with_contention(root: Path, args: argparse.Namespace) -> tuple[list[rep.Phase], int]:
    """Start the cluster and the other users, run every phase, stop everything."""
    conf = {"SchedulerType": "sched/builtin", "MinJobAge": "600"}
    with SlurmCluster(root / "slurm", gpus=args.gpus, cpus=16, extra_conf=conf) as cluster:
        os.environ.update(cluster.env)
        others = cs.OtherUsers(args.other_pending, tuple(args.other_runtime),
                               max_seconds=args.max_seconds)
        others.start()
        try:
            others.wait_steady()
            time.sleep(max(args.other_runtime))  # let their start times spread out
            return run_phases(root, args), others.submitted
        finally:
            others.stop()


def setup_of(args: argparse.Namespace, others: int, elapsed: float) -> dict[str, Any]:
    mean_other = sum(args.other_runtime) / 2
    return {"jobs": args.jobs, "gpus": args.gpus, "job_seconds": args.job_seconds,
            "stream_interval": args.interval, "other_pending_K": args.other_pending,
            "other_runtime": list(args.other_runtime),
            "expected_wait_W": args.other_pending * mean_other / args.gpus,
            "scheduler": "sched/builtin (strict FIFO)", "pilot_slots": args.slots,
            "max_pilots": args.max_pilots, "backlog_per_pilot": args.backlog_per_pilot,
            "pilot_idle_timeout": args.idle_timeout, "submitter_interval": args.pass_interval,
            "warm": {"min_pilots": 1, "idle_timeout": args.warm_idle_timeout,
                     "patterns": ["stream"]},
            "two_servers": {"jobs_per_source": args.two_jobs,
                            "interval_per_source": args.two_interval},
            "other_jobs_submitted": others, "wall_seconds": elapsed}


def measured_wait(rows: dict[str, dict[str, Any]]) -> float | None:
    """W as measured: the mean submit -> start wait of the stream's one-sbatch jobs."""
    row = rows.get("stream/sbatch") or rows.get("burst/sbatch")
    if not row:
        return None
    wait = row["queue_wait_mean"] if row["pattern"] == "stream" else row["queue_wait_min"]
    return None if wait is None else float(wait)


def report(rows: dict[str, dict[str, Any]], setup: dict[str, Any],
           args: argparse.Namespace) -> None:
    rat = rep.ratios(rows)
    setup["measured_wait_W"] = measured_wait(rows)
    print(rep.table(rows))
    for key, row in rows.items():
        if "steady" in row:
            s = row["steady"]
            print("%s, jobs dropped once the first pilot ran (%d): mean %.1f s, p95 %.1f s"
                  % (key, s["jobs"], s["mean"], s["p95"]))
    for line in rep.held_lines(rows) + rep.verdicts(rat) + ct.lines(rows):
        print(line)
    rep.write_json(args.json, setup, rows, rat)
    if any(row["pattern"] in ("stream", "burst") for row in rows.values()):
        rep.plot(args.png, rows, setup["measured_wait_W"])  # not redrawn by --patterns two


def replot(args: argparse.Namespace) -> int:
    """Table, ratios and plot again from a JSON file an earlier run wrote."""
    data = json.loads(args.replot.read_text())
    report(data["results"], data["setup"], args)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("galaxy_hpc_runner").setLevel(logging.WARNING)
    if args.replot:
        return replot(args)
    root = Path(tempfile.mkdtemp(prefix="cb", dir="/tmp"))
    start = time.monotonic()
    try:
        phases, others = with_contention(root, args)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    rows = {"%s/%s" % (ph.pattern, ph.way): rep.summarize(ph) for ph in phases}
    report(rows, setup_of(args, others, time.monotonic() - start), args)
    return 0 if all(ph.failed == 0 for ph in phases) else 1


if __name__ == "__main__":
    sys.exit(main())
