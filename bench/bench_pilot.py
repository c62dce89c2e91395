"""The pilot's own cost per job: CPU, wall time and system calls while it drains a backlog.

    python bench/bench_pilot.py [--jobs 1000] [--slots 1] [--rounds 3]
                                [--profile FILE] [--strace]

The submitter stages JOBS jobs of the bench's no-op template (``bench_local.NOOP``: the
shipped job.json/job.sh shape, one declared output) into a fresh workspace with no pilot
(its pilot management is switched off for the bench), then one pilot at the shipped
defaults (poll 0.5 s, heartbeat 10 s, --settle 0.2 s; ``--slots``) drains them in this
process. Reported per round: jobs/s from the pilot's start to its last ``done`` marker,
the pilot's OWN CPU per job (user + system of the pilot process, not of its jobs), and
with ``--strace`` the pilot's system calls per job (``strace -c``, pilot only: ``-f``
would count bash). ``--profile FILE`` writes a cProfile of the last round.
``--pilot-python PATH`` drains with a pilot process under that interpreter (its own CPU
read inside it), e.g. Python 3.8, whose ``subprocess`` forks where 3.10+ uses ``vfork``.
``BENCH_WORKER_PATH=DIR`` takes ``hpc_worker`` from DIR (e.g. an older release unpacked
with ``git archive REV hpc_worker | tar -x -C DIR``) for a before/after on one machine.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
WORKER_PATH = os.environ.get("BENCH_WORKER_PATH", str(HERE.parent))
sys.path.insert(0, WORKER_PATH)
importlib.import_module("hpc_worker")  # from WORKER_PATH, before bench_local puts the project first
import bench_local as bl  # noqa: E402

import hpc_worker  # noqa: E402
from galaxy_hpc_runner.config import load_config  # noqa: E402
from galaxy_hpc_runner.dropbox.submitter import Submitter  # noqa: E402
from hpc_worker import protocol as p  # noqa: E402
from hpc_worker.pilot import Pilot, PilotSettings  # noqa: E402


def stage(root: Path, jobs: int) -> Path:
    """A workspace with ``jobs`` ready jobs staged by the real submitter, no pilot."""
    sub = Submitter(load_config(bl.write_site(root)))
    sub._manage_pilots = lambda *_a, **_k: None  # type: ignore[method-assign]
    for i in range(jobs):
        bl.drop(root, "j%05d" % i)
    ws = root / "ws"
    ready = 0
    for _ in range(1 + jobs // 100):  # a pass receives a bounded number of drops
        sub.run_pass()
        ready = len(os.listdir(ws / p.READY))
        if ready == jobs:
            break
    if ready != jobs:
        raise SystemExit("staged %d of %d jobs" % (ready, jobs))
    return ws


def last_result(ws: Path, done: list[str]) -> float:
    """When the last result was written: the last write to a job's journal is its result."""
    return max(os.stat(os.path.join(p.job_dir(str(ws), name), p.META)).st_mtime
               for name in done)


def drain(ws: Path, jobs: int, slots: int, profile: str | None) -> dict[str, float]:
    settings = PilotSettings(str(ws), "P%d" % time.time_ns(), slots=slots, idle_timeout=0.3)
    pilot = Pilot(settings)
    before = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    if profile:
        prof = cProfile.Profile()
        prof.runcall(pilot.run)
        prof.dump_stats(profile)
    else:
        pilot.run()
    after = resource.getrusage(resource.RUSAGE_SELF)
    done = os.listdir(ws / p.DONE)
    if len(done) != jobs:
        raise SystemExit("drained %d of %d jobs" % (len(done), jobs))
    last = last_result(ws, done)
    started = pilot.started
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"jobs_per_s": jobs / (last - started),
            "pilot_cpu_ms_per_job": 1000 * cpu / jobs,
            "user_ms_per_job": 1000 * (after.ru_utime - before.ru_utime) / jobs,
            "sys_ms_per_job": 1000 * (after.ru_stime - before.ru_stime) / jobs,
            "wall_s": time.monotonic() - t0}


PILOT_RUSAGE = """
import resource, sys
from hpc_worker.__main__ import main
main(sys.argv[1:])
usage = resource.getrusage(resource.RUSAGE_SELF)
print("RUSAGE %f %f" % (usage.ru_utime, usage.ru_stime))
"""


def drain_with(python: str, ws: Path, jobs: int, slots: int) -> dict[str, float]:
    """The drain by a pilot process under another interpreter (e.g. python3.8, whose
    subprocess forks where 3.10+ uses vfork); its own CPU from inside it."""
    env = dict(os.environ, PYTHONPATH=WORKER_PATH)
    t0 = time.time()
    out = subprocess.run([python, "-c", PILOT_RUSAGE, "--workspace", str(ws), "--pilot-id",
                          "PX", "--slots", str(slots), "--idle-timeout", "0.3"], env=env,
                         cwd=str(ws.parent), check=True, capture_output=True, text=True).stdout
    user, system = (float(x) for x in out.split("RUSAGE ")[1].split())
    done = os.listdir(ws / p.DONE)
    if len(done) != jobs:
        raise SystemExit("drained %d of %d jobs" % (len(done), jobs))
    last = last_result(ws, done)
    return {"jobs_per_s": jobs / (last - t0), "pilot_cpu_ms_per_job": 1000 * (user + system) / jobs,
            "user_ms_per_job": 1000 * user / jobs, "sys_ms_per_job": 1000 * system / jobs,
            "wall_s": time.time() - t0}


def syscalls(ws: Path, jobs: int, slots: int) -> dict[str, Any]:
    """``strace -c`` of a pilot process (not its children) draining the workspace."""
    out = ws.parent / "strace.txt"
    env = dict(os.environ, PYTHONPATH=WORKER_PATH)
    subprocess.run(["strace", "-c", "-o", str(out), sys.executable, "-m", "hpc_worker",
                    "--workspace", str(ws), "--pilot-id", "PS", "--slots", str(slots),
                    "--idle-timeout", "0.3"], env=env, cwd=str(ws.parent), check=True)
    counts: dict[str, int] = {}
    for line in out.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 5 and re.match(r"^[0-9.]+$", fields[0]) and fields[-1] != "total":
            counts[fields[-1]] = int(fields[3])
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:15]
    return {"syscalls_per_job": round(sum(counts.values()) / jobs, 1),
            "fsync_per_job": round(counts.get("fsync", 0) / jobs, 2),
            "top_per_job": {name: round(n / jobs, 2) for name, n in top}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--slots", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--profile", default=None)
    ap.add_argument("--strace", action="store_true")
    ap.add_argument("--pilot-python", default=None,
                    help="run the pilot with this interpreter (jobs/s counted from its launch)")
    args = ap.parse_args()
    rows = []
    for round_ in range(args.rounds):
        tmp = Path(tempfile.mkdtemp(prefix="bench-pilot-"))
        try:
            ws = stage(tmp, args.jobs)
            last = round_ == args.rounds - 1
            if args.pilot_python:
                row = drain_with(args.pilot_python, ws, args.jobs, args.slots)
            else:
                row = drain(ws, args.jobs, args.slots, args.profile if last else None)
            print(json.dumps({k: round(v, 3) for k, v in row.items()}), flush=True)
            rows.append(row)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.strace and shutil.which("strace"):
        tmp = Path(tempfile.mkdtemp(prefix="bench-pilot-"))
        try:
            print(json.dumps(syscalls(stage(tmp, args.jobs), args.jobs, args.slots)))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    best = min(rows, key=lambda r: r["pilot_cpu_ms_per_job"])
    print(json.dumps({"worker": hpc_worker.__file__, "jobs": args.jobs,
                      "slots": args.slots, "rounds": args.rounds,
                      "best_pilot_cpu_ms_per_job": round(best["pilot_cpu_ms_per_job"], 3),
                      "best_jobs_per_s": round(max(r["jobs_per_s"] for r in rows), 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
