"""The fault cases of issue 9, each one repetition's story; :data:`CASES` says how many
repetitions CI runs (``ci``) and the long variant runs (``long``)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hpc_worker import protocol as p
from tests.faults.bench import ACTIVE, Rep
from tests.faults.checks import orphans_after

IN_FLIGHT_TIMEOUT = 120.0


@dataclass
class Case:
    name: str
    run: Callable[[Rep], None]
    ci: int  # repetitions in CI (tests/test_fault_matrix.py)
    long: int  # repetitions in the long variant
    about: str = ""
    overrides: dict[str, dict[str, str]] = field(default_factory=dict)


def _jobs(rep: Rep, count: int, seconds: float, size: int = 2000, first: int = 0) -> None:
    for i in range(first, first + count):
        rep.drop("%s-%d" % (rep.prefix, i), seconds, size)


def _in_flight(rep: Rep) -> list[tuple[str, str | None]]:
    """(job key, attempt) of every tool started and not ended."""
    ledger = rep.ledger()
    ended = {(job, attempt) for event, job, attempt in ledger if event == "end"}
    return [(rep.site.key(job), attempt) for event, job, attempt in ledger
            if event == "start" and (job, attempt) not in ended]


def _kill_in_flight(rep: Rep, kill: Callable[[str, str], None], at_start: bool = False) -> None:
    """Start jobs; when two run (or the instant the first starts), ``kill(pilot id, Slurm
    id)``; check the dead attempts' processes go with their pilot; then drain."""
    _jobs(rep, 4, 3.0)
    rep.start_loop()
    pilot_id, sid = rep.running_pilot(IN_FLIGHT_TIMEOUT)
    if at_start:
        deadline = time.monotonic() + IN_FLIGHT_TIMEOUT
        while not rep.site.ledger.stat().st_size and time.monotonic() < deadline:
            time.sleep(0.001)
    else:
        rep.wait(lambda: rep.started() >= 2, IN_FLIGHT_TIMEOUT, "two jobs in flight")
        time.sleep(rep.rng.uniform(0.0, 1.0))
    doomed = _in_flight(rep)
    kill(pilot_id, sid)
    rep.wait(lambda: (sid, pilot_id) not in rep.slurm_pilots(ACTIVE), 60, "the pilot to end")
    rep.orphans += orphans_after(doomed)
    rep.drain()


def baseline(rep: Rep) -> None:
    _jobs(rep, 6, 0.5)
    rep.drain()


def _kill_9(rep: Rep) -> Callable[[str, str], None]:
    def kill(pilot_id: str, sid: str) -> None:
        with contextlib.suppress(ProcessLookupError):  # the node is this host
            os.kill(rep.pilot_pid(pilot_id), signal.SIGKILL)

    return kill


def kill_9(rep: Rep) -> None:
    _kill_in_flight(rep, _kill_9(rep))


def kill_9_at_start(rep: Rep) -> None:
    """kill -9 of the pilot the instant its first job logs its start (the guard may not
    know that job's process group yet)."""
    _kill_in_flight(rep, _kill_9(rep), at_start=True)


def scancel(rep: Rep) -> None:
    _kill_in_flight(rep, lambda pilot_id, sid: rep.bench.scancel(sid))


def sbatch_kill(rep: Rep) -> None:
    """The submitter is killed once Slurm has queued its pilot, before it hears the id."""
    bench = rep.bench
    with contextlib.suppress(FileNotFoundError):
        bench.fired_file.unlink()
    bench.arm_file.touch()
    try:
        _jobs(rep, 3, 0.5)
        rep.start_loop()
        rep.wait(bench.fired_file.exists, IN_FLIGHT_TIMEOUT, "sbatch to queue a pilot")
        rep.kill_loop()
    finally:
        with contextlib.suppress(FileNotFoundError):
            bench.arm_file.unlink()
    time.sleep(rep.rng.uniform(0.0, 2.0))
    rep.drain()


def ssh_drop(rep: Rep) -> None:
    """Every ssh connection of the submitter cut once its uploads began, and again later."""
    _jobs(rep, 4, 0.5, size=8 << 20)
    jobs_dir = Path(rep.site.cfg.workspace) / p.JOBS
    rep.start_loop()
    rep.wait(lambda: jobs_dir.is_dir() and any(jobs_dir.iterdir()), IN_FLIGHT_TIMEOUT,
             "the first upload")
    for pause in (rep.rng.uniform(0.0, 0.3), rep.rng.uniform(0.2, 1.5)):
        time.sleep(pause)
        for pid in rep.bench.sshd_sessions():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    rep.drain()


def controller_down(rep: Rep) -> None:
    """slurmctld stops while a job runs and more arrive; no second pilot meanwhile."""
    _jobs(rep, 2, 3.0)
    rep.start_loop()
    rep.wait(lambda: rep.started() >= 1, IN_FLIGHT_TIMEOUT, "a job in flight")
    rep.bench.cluster.stop_controller()
    try:
        _jobs(rep, 3, 0.5, first=2)
        time.sleep(rep.rng.uniform(4.0, 8.0))
    finally:
        rep.bench.cluster.start_controller()
    rep.drain()


def walltime(rep: Rep) -> None:
    """A 60 s pilot warned 15 s before its end (Slurm may warn up to a minute early):
    jobs that fit finish in it, the 45 s one started late cannot and is released, then
    runs once in the next pilot."""
    _jobs(rep, 2, 20.0)
    rep.start_loop()
    rep.wait(lambda: rep.started() >= 2, IN_FLIGHT_TIMEOUT, "two jobs in flight")
    _jobs(rep, 1, 45.0, first=2)
    _jobs(rep, 2, 5.0, first=3)
    rep.drain(timeout=400)


CASES = [
    Case("baseline", baseline, ci=1, long=3, about="6 jobs, no fault"),
    Case("kill-9 pilot", kill_9, ci=1, long=10, about="kill -9 of the pilot, 2 jobs in flight"),
    Case("kill-9 at start", kill_9_at_start, ci=0, long=10,
         about="kill -9 of the pilot the instant its first job starts"),
    Case("scancel", scancel, ci=2, long=50, about="scancel of the pilot, 2 jobs in flight"),
    Case("sbatch kill", sbatch_kill, ci=2, long=20,
         about="submitter kill -9 once Slurm queued its pilot"),
    Case("ssh drop", ssh_drop, ci=2, long=10,
         about="every ssh connection cut as 4 x 8 MiB upload, then again"),
    Case("slurmctld down", controller_down, ci=1, long=3,
         about="controller stopped 4-8 s with a job in flight and 3 arriving"),
    Case("walltime warn", walltime, ci=0, long=2,
         about="60 s pilot warned @15: jobs that fit and one that does not",
         overrides={"pilot": {"walltime": "60", "idle_timeout": "5"},
                    "scheduler": {"signal": "B:USR1@15"}}),
]
