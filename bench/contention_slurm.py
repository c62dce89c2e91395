"""Slurm side of the contention benchmark: client calls, "other users", one-sbatch-per-job.

Every command is an argument list run with ``SLURM_CONF`` from the environment
(the benchmark sets it to its private test cluster); nothing goes through a shell.
"""

from __future__ import annotations

import datetime
import logging
import random
import subprocess
import threading
import time
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

OTHER_NAME = "other-user"
AMP_NAME = "amp-sbatch"
PILOT_NAME = "pilot-*"  # pilots are named by their id (pilot-SERVER-TIME-RANDOM)


def slurm(argv: list[str], stdin: str | None = None, timeout: float = 30.0) -> str:
    """Run one Slurm client command; its stdout (RuntimeError when it fails)."""
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True,
                          timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError("%s failed (%d): %s" % (argv[0], proc.returncode, proc.stderr.strip()))
    return proc.stdout


def sbatch(name: str, script: str, gres: str = "gpu:1", output: str = "/dev/null",
           minutes: int = 5) -> str:
    """Submit ``script`` (batch script text on stdin); the job id."""
    out = slurm(["sbatch", "--parsable", "--job-name=%s" % name, "--gres=%s" % gres,
                 "--cpus-per-task=1", "--time=%d" % minutes, "--output=%s" % output],
                stdin=script)
    return out.strip().split(";")[0]


def job_ids(name: str, states: str = "PENDING") -> list[str]:
    """Jobs called ``name`` (``prefix*``: whose name starts with it) in ``states``."""
    if not name.endswith("*"):
        return slurm(["squeue", "--noheader", "--states=%s" % states, "--name=%s" % name,
                      "--format=%i"]).split()
    out = slurm(["squeue", "--noheader", "--states=%s" % states, "--format=%i %j"])
    return [line.split()[0] for line in out.splitlines()
            if len(line.split()) > 1 and line.split()[1].startswith(name[:-1])]


def count_jobs(name: str, states: str = "PENDING") -> int:
    """Jobs called ``name`` (or ``prefix*``) in ``states`` (a squeue --states list)."""
    return len(job_ids(name, states))


def wait_no_jobs(names: list[str], timeout: float) -> None:
    """Wait until no job with one of ``names`` is pending or running; scancel the rest."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(count_jobs(n, "PENDING,RUNNING,COMPLETING") for n in names):
            return
        time.sleep(0.5)
    log.warning("jobs %s still queued after %.0fs: cancelling them", names, timeout)
    for name in names:
        ids = job_ids(name, "PENDING,RUNNING,COMPLETING")
        if ids:
            slurm(["scancel", *ids])


def _epoch(text: str) -> float | None:
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None  # "N/A", "Unknown"


def job_times(ids: list[str]) -> dict[str, tuple[float | None, float | None, float | None]]:
    """(submit, start, end) epochs per job id, at Slurm's one-second resolution."""
    if not ids:
        return {}
    out = slurm(["squeue", "--noheader", "--states=all", "--jobs=%s" % ",".join(ids),
                 "--format=%i|%V|%S|%e"])
    times = {}
    for line in out.splitlines():
        jid, submit, start, end = line.strip().split("|")
        times[jid] = (_epoch(submit), _epoch(start), _epoch(end))
    return times


@dataclass
class OtherUsers:
    """Keeps ``pending`` jobs of other users queued, each holding one GPU for a while.

    Bounded: it submits at most ``max_jobs`` jobs and stops after ``max_seconds``
    (or on :meth:`stop`), whichever comes first.
    """

    pending: int
    runtime: tuple[float, float]
    max_jobs: int = 1000
    max_seconds: float = 900.0
    seed: int = 5
    submitted: int = 0
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._rng = random.Random(self.seed)
        self._thread = threading.Thread(target=self._run, name="other-users", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                self._top_up()
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                self.errors.append(str(exc))
                log.warning("other users: %s", exc)
            if self.submitted >= self.max_jobs:
                log.warning("other users: %d jobs submitted, stopping", self.submitted)
                return
            self._stop.wait(0.2)

    def _top_up(self) -> None:
        missing = self.pending - count_jobs(OTHER_NAME)
        for _ in range(max(0, min(missing, self.max_jobs - self.submitted))):
            seconds = self._rng.uniform(*self.runtime)
            sbatch(OTHER_NAME, "#!/bin/bash\nsleep %.1f\n" % seconds)
            self.submitted += 1

    def wait_steady(self, timeout: float = 60.0) -> None:
        """Wait until ``pending`` of their jobs are queued behind running ones."""
        deadline = time.monotonic() + timeout
        while count_jobs(OTHER_NAME) < self.pending:
            if time.monotonic() > deadline:
                raise TimeoutError("other users never reached %d pending jobs" % self.pending)
            time.sleep(0.2)

    def stop(self) -> None:
        """Stop submitting and cancel their jobs still in the queue."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        try:
            slurm(["scancel", "--name=%s" % OTHER_NAME])
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            log.warning("cannot cancel other users' jobs: %s", exc)
