"""Throughput and dispatch of the submitter + local pilot at the SHIPPED defaults, beside
``xargs -P 2`` and Parsl's HighThroughputExecutor, plus a backlog scaling curve.

    python bench/bench_throughput.py [--jobs 1000] [--rounds 4] [--stream 50]
                                     [--scale 1000,10000] [--window 30] [--json FILE]

1. Throughput, interleaved rounds: JOBS jobs of ``true`` through ``xargs -P 2`` (the
   floor: ``true`` alone), Parsl HTEX (``parsl_burst.py``: 2 workers, local provider,
   warmed up first; from the venv ``bench/.venv-parsl``: ``python3 -m venv bench/.venv-parsl &&
   bench/.venv-parsl/bin/pip install -r bench/requirements-parsl.txt``, the version pinned
   so that runs on different days compare the same Parsl; the column is skipped when it is
   missing)
   and ours. Parsl runs the job ours runs: a bash script that runs ``true`` and writes an
   output file, with its stdout and stderr in files of their own (``bash job.sh OUT``,
   ``stdout=``, ``stderr=``). It also runs a bare ``true`` (its bash_app's ``/bin/sh -c
   true``: dash here, no files, about half the CPU of the job), printed beside for
   comparison with the figures measured that way before 2026-11-27. Ours: the
   ``hpc-batch submitter`` loop (its own process, shipped defaults: no
   [submitter]/[pilot] settings) with the local backend, from the first drop to the
   last ``.finished``, once the loop made its first pass (the submitter is a service
   that is up before the jobs come; its preflight of the pilot program is done then):
   with a cold pilot (its submission and start-up included), with a
   warm one (one job went through first, as Parsl's workers are warmed up), and cold
   with ``slots = 2`` (Parsl's two workers). For the warm round also the rate from the
   first job's start to the last one's (the pilot's clock): what the burst costs without
   the fixed parts at its ends, the pilot's start and the last report's ``--settle``.
2. Warm dispatch at the shipped defaults: with the pilot running, STREAM jobs dropped
   one at a time: drop -> job start (the pilot's clock) and drop -> ``.finished`` seen.
   Parsl: submit -> result of one task at a time.
3. Scaling: a backlog of N descriptions waiting when the submitter starts: first job
   start, drain rate over WINDOW seconds, the submitter's peak RSS, and an idle pass at
   that backlog (pilots stopped, the spool paused, a second pass timed).

Every round also prints what a new file cost in the bench's temporary directory (CPU
per ``open(O_CREAT)`` of 200 new files in a fresh directory there) as each contender
began; before each one the bench waits until that cost is back near its best, up to 45 s.
That, not Python, is what a durable spool pays most for: each job makes about 10 new files
and directories on the two sides (its spool record, job directory and job.json, result
document and output copy; attempt directory and script, logs), and on some file systems
a new inode costs 30x more than on others (ext4 without a journal, which will not reuse
an inode freed in the last 60-360 s and checks the free ones one by one: 0.3-1 ms after
many files were removed nearby, see docs/throughput.md). Hence the contenders take turns: each
round starts one further along the list (Parsl, ours cold, warm, 2 slots), so none
always follows the same one; and no tree is removed before the run ends, so no
contender pays for the bench's own removals.
``--tmpdir DIR`` puts every site, Parsl's run directory and that probe in DIR (e.g.
``/dev/shm``, a tmpfs) instead of ``$TMPDIR``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import bench_local as bl  # noqa: E402
import throughput_report as report  # noqa: E402

from galaxy_hpc_runner.config import load_config  # noqa: E402
from galaxy_hpc_runner.dropbox import control  # noqa: E402
from galaxy_hpc_runner.dropbox.submitter import Submitter  # noqa: E402

PARSL_PY = HERE / ".venv-parsl" / "bin" / "python"
TRUE = "#!/bin/bash\ntrue\n: > <<output>>\n"
PARSL_JOB = TRUE.replace("<<output>>", '"$1"')  # the same job under Parsl: bash, logs, output
PARSL_BURST = HERE / "parsl_burst.py"  # run by the Parsl venv's Python


def fresh_dir() -> Path:
    """A new directory for one contender or probe, kept until the run ends (main)."""
    if not _KEPT:
        _KEPT.append(Path(tempfile.mkdtemp(prefix="bench-throughput-")))
    return Path(tempfile.mkdtemp(dir=_KEPT[0]))


_KEPT: list[Path] = []


def create_cost_ms(files: int = 200) -> float:
    """CPU milliseconds per new file in a fresh directory of the temporary directory."""
    tmp = fresh_dir()
    started = time.process_time()
    for i in range(files):
        os.close(os.open(os.path.join(tmp, "f%d" % i), os.O_CREAT | os.O_WRONLY, 0o600))
    return (time.process_time() - started) * 1000 / files


def settle_fs(limit: float = 45.0) -> float:
    """Wait (up to ``limit`` s) until a new file costs about what it cost at best so far:
    on ext4 without a journal a new file costs far more for a while after many files were
    removed nearby (docs/throughput.md), so a contender that follows one that removed
    thousands of files would pay for them.
    Returns the cost (ms) at the start."""
    deadline = time.monotonic() + limit
    cost = create_cost_ms()
    _BEST[0] = min(_BEST[0], cost)
    while cost > max(0.05, 1.5 * _BEST[0]) and time.monotonic() < deadline:
        time.sleep(3.0)
        cost = create_cost_ms()
        _BEST[0] = min(_BEST[0], cost)
    return cost


_BEST = [float("inf")]


# -- the three contenders ------------------------------------------------------------------
def run_xargs(jobs: int) -> float:
    started = time.monotonic()
    subprocess.run(["xargs", "-P", "2", "-n", "1", "true"], input=("x\n" * jobs).encode(),
                   check=True)
    return jobs / (time.monotonic() - started)


def run_parsl(jobs: int, stream: int) -> dict[str, float] | None:
    if not PARSL_PY.exists():
        return None
    tmp = fresh_dir()
    env = dict(os.environ, PATH="%s:%s" % (PARSL_PY.parent, os.environ.get("PATH", "")),
               TMPDIR=str(tmp))  # its multiprocessing leftovers go with its tree
    logs = [tmp / name for name in ("parsl.out", "parsl.err")]
    with logs[0].open("w") as out_file, logs[1].open("w") as err_file:
        proc = subprocess.Popen([str(PARSL_PY), str(PARSL_BURST), str(jobs), str(stream),
                                 str(tmp), PARSL_JOB], stdout=out_file, stderr=err_file,
                                cwd=tmp, env=env, start_new_session=True)
    try:  # files, not pipes: its interchange and workers may outlive a failed script
        proc.wait(timeout=900)
    finally:  # they leave with it
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    out, err = (path.read_text() for path in logs)
    lines = out.strip().splitlines()
    if proc.returncode != 0 or not lines:
        print("parsl failed:\n" + err[-2000:], file=sys.stderr)
        return None
    return json.loads(lines[-1])  # type: ignore[no-any-return]


class Ours:
    """A bench site at the shipped defaults and its ``hpc-batch submitter`` process."""

    def __init__(self, root: Path, extra: str = "") -> None:
        self.root = root
        self.config = bl.write_site(root, extra)  # no settings: the shipped defaults
        (root / "templates" / "noop.sh").write_text(TRUE)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(HERE.parent))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "galaxy_hpc_runner.cli", "submitter", "--config",
             str(self.config)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def wait_ready(self, timeout: float = 60) -> None:
        """Until the loop's first pass is recorded: the submitter is a long-running
        service, so its own start (Python, imports, the pilot program's preflight) is not
        part of a round; the pilot's submission and start are, in the cold rounds."""
        deadline = time.monotonic() + timeout
        while not (self.root / "spool" / "last_pass.json").exists():
            if time.monotonic() > deadline:
                raise SystemExit("the submitter made no pass in %.0f s" % timeout)
            time.sleep(0.01)

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the submitter process has used so far."""
        assert self.proc is not None
        fields = Path("/proc/%d/stat" % self.proc.pid).read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_mb(self) -> float:
        assert self.proc is not None
        for line in Path("/proc/%d/status" % self.proc.pid).read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)
            self.proc = None
        sub = Submitter(load_config(self.config))
        for pilot in sub.spool.pilots():
            sub.backend.cancel(pilot.scheduler_id)

    def finished(self) -> int:
        return sum(1 for n in os.listdir(self.root / "dropbox") if n.endswith(".job.finished"))

    def wait_finished(self, count: int, timeout: float = 1800) -> None:
        deadline = time.monotonic() + timeout
        while (seen := self.finished()) < count:
            if time.monotonic() > deadline:
                raise SystemExit("timed out waiting for %d results" % count)
            time.sleep(0.05 if count - seen > 20 else 0.005)  # the end seen within 5 ms


def run_ours(jobs: int, stream: int, extra: str = "", warm: bool = False) -> dict[str, float]:
    """JOBS dropped at once, from the first drop to the last result; ``warm``: the pilot
    is already running (one job went through first and the loop is idle), as Parsl's
    workers are."""
    ours = Ours(fresh_dir(), extra)
    ours.start()
    try:
        ours.wait_ready()
        if warm:
            bl.drop(ours.root, "warmup")
            ours.wait_finished(1)
            time.sleep(1.0)  # its files cleaned up, the loop waiting for a change
        started, cpu = time.monotonic(), ours.cpu_s()
        for i in range(jobs):
            bl.drop(ours.root, "burst%05d" % i)
        ours.wait_finished(jobs + (1 if warm else 0))
        rate = jobs / (time.monotonic() - started)
        cpu_ms = (ours.cpu_s() - cpu) * 1000 / jobs
        begun = [bl.start_time(ours.root, "burst%05d" % i) for i in range(jobs)]
        steady = (jobs - 1) / max(max(begun) - min(begun), 1e-6)
        starts, ends = _stream(ours, stream) if stream else ([0.0], [0.0])
    finally:
        ours.stop()
    return {"jobs_per_s": rate, "submitter_cpu_ms_per_job": cpu_ms, "steady_jobs_per_s": steady,
            "dispatch_p50_s": statistics.median(starts),
            "dispatch_p95_s": _p95(starts), "finished_p50_s": statistics.median(ends),
            "finished_p95_s": _p95(ends)}


def _stream(ours: Ours, stream: int) -> tuple[list[float], list[float]]:
    """Warm dispatch: one job at a time; drop -> start, drop -> .finished seen."""
    starts, ends = [], []
    for i in range(stream):
        name = "stream%04d" % i
        result = ours.root / "dropbox" / (name + ".job.finished")
        dropped = bl.drop(ours.root, name)
        while not result.exists():
            time.sleep(0.002)
        ends.append(time.time() - dropped)
        starts.append(bl.start_time(ours.root, name) - dropped)
        time.sleep(0.2)  # a pause between jobs, as a chaining client has
    return starts, ends


def _p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[18] if len(values) > 1 else values[0]


# -- scaling ---------------------------------------------------------------------------
def run_scale(backlog: int, window: float) -> dict[str, float]:
    ours = Ours(fresh_dir())
    for i in range(backlog):
        bl.drop(ours.root, "b%06d" % i)
    started = time.time()
    ours.start()
    try:
        while ours.finished() == 0:
            time.sleep(0.05)
        first = min(bl.start_time(ours.root, n[: -len(".job.finished")])
                    for n in os.listdir(ours.root / "dropbox") if n.endswith(".finished"))
        time.sleep(2.0)  # past the start-up
        n0, t0, c0 = ours.finished(), time.monotonic(), ours.cpu_s()
        n1 = n0
        while time.monotonic() - t0 < window and n1 < backlog:  # ends with the backlog
            time.sleep(0.2)
            n1 = ours.finished()
        rate = (n1 - n0) / (time.monotonic() - t0)
        cpu_ms = (ours.cpu_s() - c0) * 1000 / max(n1 - n0, 1)
        rss = ours.peak_rss_mb()
    finally:
        ours.stop()
    idle = json.loads(subprocess.run(
        [sys.executable, __file__, "--idle-pass", str(ours.config)], check=True,
        capture_output=True, text=True).stdout.strip().splitlines()[-1])
    return {"backlog": backlog, "first_start_s": first - started, "drain_jobs_per_s": rate,
            "drain_submitter_cpu_ms_per_job": cpu_ms, "load_average": os.getloadavg()[0],
            "peak_rss_mb": rss, "idle_pass_s": idle["idle_pass_s"],
            "idle_rss_mb": idle["rss_mb"], "idle_records": idle["records"]}


def idle_pass(config: str) -> None:
    """In its own process: every description received (paused: nothing staged, no pilot),
    then the time of an idle pass over them and this process's peak RSS, as JSON."""
    cfg = load_config(config)
    control.set_mode(cfg.spool, control.Mode.PAUSED, "benchmark")
    sub = Submitter(cfg)
    while sub.run_pass().more:  # receive the rest of the backlog
        pass
    sub.run_pass()  # requeues what the stopped pilot held
    times = []
    for _ in range(3):
        t0 = time.monotonic()
        sub.run_pass()
        times.append(time.monotonic() - t0)
    hwm = [ln for ln in Path("/proc/self/status").read_text().splitlines()
           if ln.startswith("VmHWM:")]
    print(json.dumps({"idle_pass_s": min(times), "records": len(sub.spool.active_names()),
                      "rss_mb": int(hwm[0].split()[1]) / 1024 if hwm else float("nan")}))


# -- report ----------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=4,
                    help="4 (or a multiple) puts each contender once in each place")
    ap.add_argument("--stream", type=int, default=50)
    ap.add_argument("--scale", default="1000,10000", help="backlogs, comma-separated")
    ap.add_argument("--window", type=float, default=30.0, help="seconds of drain measured")
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--tmpdir", help="where the sites go (default: $TMPDIR or /tmp)")
    ap.add_argument("--idle-pass", help=argparse.SUPPRESS)  # internal: one site's idle pass
    args = ap.parse_args()
    if args.tmpdir:
        tempfile.tempdir = os.environ["TMPDIR"] = args.tmpdir  # the children's too
    if args.idle_pass:
        idle_pass(args.idle_pass)
        return 0
    out: dict[str, Any] = {"date": datetime.datetime.now().astimezone().isoformat(
        timespec="seconds"), "cpus": os.cpu_count(), "jobs": args.jobs,
        "settings": "shipped defaults (no [submitter]/[pilot] settings; local backend)",
        "tmpdir": tempfile.gettempdir(), "rounds": []}
    print("%s  %d CPUs  %d jobs of `true`  sites in %s" % (
        out["date"], out["cpus"], args.jobs, out["tmpdir"]))
    if shutil.which("xargs") is None:
        raise SystemExit("xargs is needed")
    try:
        for r in range(args.rounds):  # interleaved, so load changes hit all alike
            one_round(r, args, out)
        if "dispatch" in out and args.stream:
            report.print_dispatch(out["dispatch"])
        out["scale"] = [one_backlog(int(n), args.window) for n in args.scale.split(",") if n]
    finally:
        for tree in _KEPT:
            shutil.rmtree(tree, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


def one_round(r: int, args: argparse.Namespace, out: dict[str, Any]) -> None:
    """xargs, then Parsl and ours three ways, each on a settled file system, in an order
    that turns by one each round."""
    floor = run_xargs(args.jobs)
    stream = args.stream if r == 0 else 0
    runs: dict[str, Callable[[], Any]] = {
        "parsl": lambda: run_parsl(args.jobs, stream),
        "ours": lambda: run_ours(args.jobs, stream),
        "warm": lambda: run_ours(args.jobs, 0, warm=True),  # as warm as Parsl's workers
        "two": lambda: run_ours(args.jobs, 0, "[pilot]\nslots = 2\n")}  # their parallelism
    order = list(runs)[r % len(runs):] + list(runs)[:r % len(runs)]
    got: dict[str, Any] = {}
    cost: dict[str, float] = {}
    for name in order:
        cost[name] = settle_fs()  # each contender starts on a file system in the same state
        got[name] = runs[name]()
    parsl, ours, warm, two = (got[name] for name in runs)
    out["rounds"].append({"xargs": floor, "parsl": parsl["jobs_per_s"] if parsl else None,
                          "parsl_sh_true": parsl["true_jobs_per_s"] if parsl else None,
                          "ours": ours["jobs_per_s"], "ours_warm": warm["jobs_per_s"],
                          "ours_2_slots": two["jobs_per_s"],
                          "ours_warm_steady": warm["steady_jobs_per_s"],
                          "submitter_cpu_ms_per_job": ours["submitter_cpu_ms_per_job"],
                          "load_average": os.getloadavg()[0], "order": order,
                          "create_ms": cost})
    if r == 0:
        out["dispatch"] = {"ours": ours, "parsl": parsl}
    report.print_round(r + 1, floor, got, order, cost, out["tmpdir"])


def one_backlog(backlog: int, window: float) -> dict[str, float]:
    settle_fs()
    s = run_scale(backlog, window)
    print("backlog %6d: first start %.2f s, drain %.1f jobs/s (submitter CPU %.2f ms/job), "
          "submitter peak RSS %.0f MB; idle pass over %d records %.3f s (peak RSS %.0f MB); "
          "load average %.2f" % (
              backlog, s["first_start_s"], s["drain_jobs_per_s"],
              s["drain_submitter_cpu_ms_per_job"], s["peak_rss_mb"], s["idle_records"],
              s["idle_pass_s"], s["idle_rss_mb"], s["load_average"]))
    return s


if __name__ == "__main__":
    sys.exit(main())
