"""Drain no-op descriptions through submitter + local pilot; print throughput and latency.

    python bench/bench_local.py [--jobs 1000] [--stream 100]

1. Throughput: JOBS descriptions dropped at once, drained by one pilot (1 slot);
   jobs/s from the first drop to the last result, beside the floor of running
   the same scripts one after another with bash directly.
2. Warm-pilot dispatch latency: with the pilot already running, STREAM jobs are
   dropped one at a time; latency = drop -> job start (the pilot's clock).
Targets (issue 2): >= 33 jobs/s, p50 <= 0.5 s.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from galaxy_hpc_runner.config import load_config
from galaxy_hpc_runner.dropbox.description import dump_yaml
from galaxy_hpc_runner.dropbox.submitter import Submitter

NOOP = "#!/bin/bash\n: > <<output>>\n"
SITE = """[dropbox]
path = {r}/dropbox
allowed_input_roots = {r}/media
allowed_output_roots = {r}/results
settle = 0
[templates]
path = {r}/templates
[spool]
path = {r}/spool
[hpc_env]
workspace = {r}/ws
scripts = {r}/s
containers = {r}/c
"""


def write_site(root: Path, extra: str = "") -> Path:
    """A bench site under ``root`` with a no-op template; ``extra`` adds INI sections."""
    for sub in ("dropbox", "media", "results", "templates", "ws"):
        (root / sub).mkdir(parents=True)
    (root / "templates" / "noop.sh").write_text(NOOP)
    (root / "site.ini").write_text(SITE.format(r=root) + extra)
    return root / "site.ini"


def make_site(root: Path, interval: float, poll: float) -> Submitter:
    extra = ("[submitter]\ninterval = %s\n[pilot]\nslots = 1\nidle_timeout = 60\n"
             "poll = %s\nheartbeat = 5\n" % (interval, poll))
    return Submitter(load_config(write_site(root, extra)))


def drop(root: Path, name: str) -> float:
    doc = {"script": "noop", "output_map": {"output": str(root / "results" / name)}}
    tmp = root / "dropbox" / (".%s.tmp" % name)
    tmp.write_text(dump_yaml(doc))  # as the Galaxy batcher writes them
    when = time.time()
    tmp.rename(root / "dropbox" / (name + ".job"))
    return when


def wait_results(root: Path, names: list[str], timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    pending = set(names)
    while pending and time.monotonic() < deadline:
        pending = {n for n in pending if not (root / "dropbox" / (n + ".job.finished")).exists()}
        time.sleep(0.02)
    if pending:
        raise SystemExit("timed out with %d jobs pending" % len(pending))


def start_time(root: Path, name: str) -> float:
    job = yaml.safe_load((root / "dropbox" / (name + ".job.finished")).read_text())["job"]
    assert job["status"] == "ok", job
    return datetime.datetime.fromisoformat(job["start"]).timestamp()


def bash_floor(root: Path, jobs: int) -> float:
    script = root / "floor.sh"
    script.write_text(NOOP.replace("<<output>>", str(root / "floor.out")))
    started = time.monotonic()
    for _ in range(jobs):
        subprocess.run(["bash", str(script)], check=True)
    return jobs / (time.monotonic() - started)


def run(jobs: int, stream: int, interval: float, poll: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sub = make_site(root, interval, poll)
        stop = threading.Event()
        loop = threading.Thread(target=sub.loop, args=(stop,), daemon=True)
        names = ["burst%05d" % i for i in range(jobs)]
        t0 = time.monotonic()
        for name in names:
            drop(root, name)
        loop.start()
        wait_results(root, names)
        throughput = jobs / (time.monotonic() - t0)
        latencies = []
        for i in range(stream):  # the pilot is warm now: it drained the burst
            name = "stream%04d" % i
            dropped = drop(root, name)
            wait_results(root, [name])
            latencies.append(start_time(root, name) - dropped)
        stop.set()
        loop.join()
        for pilot in sub.spool.pilots():
            sub.backend.cancel(pilot.scheduler_id)
        floor = bash_floor(root, min(jobs, 200))
        qs = statistics.quantiles(latencies, n=20)
        return {"jobs": jobs, "jobs_per_s": throughput, "bash_floor_jobs_per_s": floor,
                "pilots": len(sub.spool.pilots()), "dispatch_p50_s": statistics.median(latencies),
                "dispatch_p95_s": qs[18], "submitter_interval_s": interval, "pilot_poll_s": poll}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--stream", type=int, default=100)
    ap.add_argument("--interval", type=float, default=0.1, help="submitter pass interval")
    ap.add_argument("--poll", type=float, default=0.1, help="pilot queue poll")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    r = run(args.jobs, args.stream, args.interval, args.poll)
    print("%d no-op jobs through submitter + 1 local pilot (%d pilot submission(s))"
          % (r["jobs"], r["pilots"]))
    print("  throughput      %7.1f jobs/s   (target >= 33: %.2fx of target)"
          % (r["jobs_per_s"], r["jobs_per_s"] / 33))
    print("  bash alone      %7.1f jobs/s   (pipeline = %.2fx of the bare-bash floor)"
          % (r["bash_floor_jobs_per_s"], r["jobs_per_s"] / r["bash_floor_jobs_per_s"]))
    print("  warm dispatch   p50 %.3f s  p95 %.3f s  (target p50 <= 0.5: %.2fx of target)"
          % (r["dispatch_p50_s"], r["dispatch_p95_s"], r["dispatch_p50_s"] / 0.5))
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
