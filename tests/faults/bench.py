"""The services of the fault matrix and one fresh site per repetition.

Our own Slurm cluster (short ``MessageTimeout`` for the controller outage) behind our own
sshd whose login PATH starts with an ``sbatch`` wrapper: armed, it queues the pilot for
real, says so in a file and holds its answer back, so the harness can kill the submitter
at the instant Slurm has the job and the submitter does not know it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpc_worker import protocol as p
from hpc_worker.records import Heartbeat, read_record
from hpc_worker.states import JobState
from tests.services.cluster import SlurmCluster, SshServer
from tests.sitekit import PROJECT
from tests.test_hpc_slurm import SlurmSite, hpc_sections

TEMPLATES = Path(__file__).resolve().parent / "templates"
ACTIVE = "PENDING,RUNNING,COMPLETING,CONFIGURING"
WRAPPER = """#!/bin/sh
# sbatch of the fault matrix: when {arm} exists, queue the job for real, write its
# answer to {fired} and hold it back (the harness kills the submitter now).
if mv {arm} {arm}.taken 2>/dev/null; then
    out=$({real} "$@"); rc=$?
    echo "$out" > {fired}.tmp && mv {fired}.tmp {fired}
    sleep 10
    echo "$out"
    exit $rc
fi
exec {real} "$@"
"""


class Bench:
    """Slurm + sshd for a whole matrix run; ``with Bench(dir) as bench: ...``."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.wrapper_dir = base / "bin"
        self.arm_file = base / "sbatch.arm"
        self.fired_file = base / "sbatch.fired"
        self.cluster = SlurmCluster(base / "slurm", extra_conf={"MessageTimeout": "2"})
        self.server: SshServer | None = None
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Bench:
        self.wrapper_dir.mkdir(parents=True, exist_ok=True)
        real = shutil.which("sbatch") or "/usr/bin/sbatch"
        wrapper = self.wrapper_dir / "sbatch"
        wrapper.write_text(WRAPPER.format(arm=self.arm_file, fired=self.fired_file, real=real))
        wrapper.chmod(0o755)
        self._stack.enter_context(self.cluster)
        path = "%s:%s" % (self.wrapper_dir, os.environ.get("PATH", "/usr/bin:/bin"))
        self.server = self._stack.enter_context(
            SshServer(self.base / "sshd", env=dict(self.cluster.env, PATH=path)))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    @property
    def env(self) -> dict[str, str]:
        return dict(os.environ, **self.cluster.env)

    def squeue(self, *args: str) -> list[list[str]]:
        """``squeue -h ARGS -o '%i %j'`` rows; [] while the controller does not answer."""
        proc = subprocess.run(["squeue", "-h", *args, "-o", "%i %j"], capture_output=True,
                              text=True, env=self.env, timeout=30)
        return [line.split() for line in proc.stdout.splitlines() if line.split()]

    def last_job_id(self) -> int:
        return max((int(row[0]) for row in self.squeue("-t", "all")), default=0)

    def scancel(self, job_id: str) -> None:
        subprocess.run(["scancel", job_id], env=self.env, capture_output=True, timeout=30)

    def sshd_sessions(self) -> list[int]:
        """Processes sshd forked for connections (killing them drops the connection)."""
        assert self.server is not None and self.server._sshd.proc is not None
        master = self.server._sshd.proc.pid
        found = []
        for entry in os.listdir("/proc"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path("/proc/%s/stat" % entry).read_text().rsplit(")", 1)[1].split()
                if entry.isdigit() and int(stat[1]) == master:
                    found.append(int(entry))
        return found


class Rep:
    """One repetition of a case: a fresh site, its jobs, its submitter loop."""

    def __init__(self, bench: Bench, root: Path, prefix: str, rng: random.Random,
                 **overrides: dict[str, str]) -> None:
        self.bench, self.prefix, self.rng = bench, prefix, rng
        self.orphans: list[int] = []  # processes of a killed attempt alive after its pilot
        self.loop_exits = 0  # the submitter loop ended by itself (it must not)
        sections = {"scheduler": {"max_pilots": "1", "failure_backoff": "1", "gres": "gpu:2"},
                    "pilot": {"slots": "2", "heartbeat": "1", "grace": "2",
                              "idle_timeout": "4", "poll": "0.1"},
                    "submitter": {"interval": "0.3"}}
        for section, values in overrides.items():
            sections.setdefault(section, {}).update(values)
        assert bench.server is not None
        self.site = SlurmSite(root, templates={"path": str(TEMPLATES)},
                              **hpc_sections(bench.server, **sections))
        self.first_job = bench.last_job_id() + 1
        self.jobs: dict[str, str] = {}  # name -> expected output text
        self.loop: subprocess.Popen[bytes] | None = None
        self.pilots_max = 0
        self._watching = True
        self._watcher = threading.Thread(target=self._watch_pilots, daemon=True)
        self._watcher.start()

    # -- jobs --------------------------------------------------------------------------
    def drop(self, name: str, seconds: float, size: int = 2000) -> None:
        data = "".join(self.rng.choice("ACGT") for _ in range(min(size, 4096)))
        data = (data * (size // len(data) + 1))[:size] + "\n"
        digest = hashlib.sha256(data.encode()).hexdigest()
        self.site.drop(name, {"script": "checked",
                              "args": {"seconds": seconds, "sha": digest},
                              "input_map": {"input": str(self.site.media(name + ".in", data))},
                              "output_map": {"output": str(self.site.out(name + ".out"))}})
        self.jobs[name] = data + digest + "\n"

    def ledger(self) -> list[tuple[str, str, str]]:
        """(event, job name, attempt) per ledger line."""
        prefix = self.site.key("")
        rows = []
        for line in self.site.ledger.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3:
                rows.append((parts[0], parts[1].replace(prefix, "", 1), parts[2]))
        return rows

    def started(self) -> int:
        return sum(1 for event, _, _ in self.ledger() if event == "start")

    # -- the submitter loop --------------------------------------------------------------
    def start_loop(self) -> None:
        log = open(self.site.root / "submitter.log", "ab")  # noqa: SIM115 (the child's)
        with log:
            self.loop = subprocess.Popen(
                [sys.executable, "-m", "galaxy_hpc_runner.cli", "submitter", "--config",
                 str(self.site.config_path)], cwd=PROJECT, stdout=log, stderr=log,
                env=dict(os.environ, PYTHONPATH=str(PROJECT)))

    def kill_loop(self) -> None:
        if self.loop is not None and self.loop.poll() is None:
            self.loop.send_signal(signal.SIGKILL)
        if self.loop is not None:
            self.loop.wait()
        self.loop = None

    def wait(self, predicate: Callable[[], object], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError("%s: not within %.0fs" % (what, timeout))
            if self.loop is not None and self.loop.poll() is not None:
                self.loop_exits += 1  # it must not end: counted, restarted
                if self.loop_exits > 3:
                    log = (self.site.root / "submitter.log").read_text()[-1500:]
                    raise RuntimeError("the submitter loop keeps ending: " + log)
                self.start_loop()
            time.sleep(0.05)

    def drain(self, timeout: float = 180.0) -> None:
        if self.loop is None:
            self.start_loop()
        self.wait(lambda: all(self.site.result_path(n).exists()
                              and self.site.state(n) == JobState.FINISHED for n in self.jobs),
                  timeout, "results of every job")

    # -- pilots ------------------------------------------------------------------------
    def slurm_pilots(self, states: str = "all") -> list[tuple[str, str]]:
        """(Slurm id, name) of this repetition's jobs."""
        return [(row[0], row[1] if len(row) > 1 else "")
                for row in self.bench.squeue("-t", states)
                if row[0].isdigit() and int(row[0]) >= self.first_job]

    def _watch_pilots(self) -> None:
        while self._watching:
            with contextlib.suppress(Exception):
                self.pilots_max = max(self.pilots_max, len(self.slurm_pilots(ACTIVE)))
            time.sleep(0.25)

    def running_pilot(self, timeout: float = 60.0) -> tuple[str, str]:
        """(pilot id, Slurm id) of the pilot that runs now."""
        found: list[Any] = []

        def running() -> bool:
            found[:] = [p_ for p_ in self.site.spool.pilots() if p_.scheduler_id
                        and (p_.scheduler_id, p_.pilot_id) in self.slurm_pilots("RUNNING")]
            return bool(found)

        self.wait(running, timeout, "a running pilot")
        return found[-1].pilot_id, found[-1].scheduler_id

    def pilot_pid(self, pilot_id: str, timeout: float = 30.0) -> int:
        path = p.pilot_path(self.site.cfg.workspace, pilot_id, p.HEARTBEAT)
        self.wait(lambda: os.path.exists(path), timeout, "the heartbeat of " + pilot_id)
        return int(read_record(Heartbeat, path).pid)

    def close(self) -> None:
        """Stop the loop, cancel what is left of this repetition in Slurm, wait for it."""
        self._watching = False
        self.kill_loop()
        for sid, _ in self.slurm_pilots(ACTIVE):
            self.bench.scancel(sid)
        deadline = time.monotonic() + 60
        while self.slurm_pilots(ACTIVE) and time.monotonic() < deadline:
            time.sleep(0.2)
        self._watcher.join(timeout=5)
        self.site.close()
