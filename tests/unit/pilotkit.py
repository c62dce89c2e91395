"""A real workspace and a real ``python -m hpc_worker`` for the pilot's tests (no submitter)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from hpc_worker import journal
from hpc_worker import protocol as p
from hpc_worker.records import JobSpec, Result, RunLine, read_record

PROJECT = Path(__file__).resolve().parents[2]


def wait_for(predicate: Callable[[], object], timeout: float = 20.0, what: str = "") -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError("timed out after %ss waiting for %s" % (timeout, what or
                                                                         predicate))
        time.sleep(0.02)


class Workspace:
    def __init__(self, root: Path) -> None:
        self.root = root
        p.ensure_layout(str(root))
        self.pilots: list[subprocess.Popen[bytes]] = []

    def job_dir(self, key: str) -> Path:
        return Path(p.job_dir(str(self.root), key))

    def stage(self, key: str, script: str, outputs: tuple[str, ...] = (),
              inputs: dict[str, bytes] | None = None, walltime: float | None = None,
              env: dict[str, str] | None = None, meta: str | None = None,
              ready: bool = True) -> None:
        """What staging does: job files first, the ready marker last."""
        directory = self.job_dir(key)
        directory.mkdir(parents=True)
        for name, data in (inputs or {}).items():
            (directory / name).write_bytes(data)
        (directory / p.SCRIPT).write_text("#!/bin/bash\n" + script)
        spec = JobSpec(key=key, script="t", walltime=walltime, inputs=sorted(inputs or {}),
                       outputs=list(outputs), env=env or {},
                       workspace=str(directory))
        (directory / p.META).write_text(meta if meta is not None else spec.dumps())
        if ready:
            self.ready(key)

    def ready(self, key: str) -> None:
        (self.root / p.READY / key).write_text("")

    def start(self, pilot_id: str = "P1", *args: str, env: dict[str, str] | None = None,
              idle: float = 30.0) -> subprocess.Popen[bytes]:
        base = {k: v for k, v in os.environ.items() if k not in (
            "CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS")}
        base["PYTHONPATH"] = str(PROJECT)
        base.update(env or {})
        proc = subprocess.Popen(
            [os.environ.get("PILOT_PYTHON", sys.executable), "-m", "hpc_worker",
             "--workspace", str(self.root),
             "--pilot-id", pilot_id, "--poll", "0.1", "--heartbeat", "1",
             "--idle-timeout", str(idle), "--grace", "2", *args],
            cwd=str(PROJECT), env=base, stdin=subprocess.DEVNULL)
        self.pilots.append(proc)
        return proc

    def log(self, pilot_id: str = "P1") -> str:
        path = Path(p.pilot_path(str(self.root), pilot_id, p.PILOT_LOG))
        return path.read_text() if path.exists() else ""

    def done(self, key: str) -> bool:
        return (self.root / p.DONE / key).exists()

    def claimed(self, key: str) -> bool:
        return any(p.split_claim(n)[0] == key for n in os.listdir(self.root / p.CLAIMED))

    def is_ready(self, key: str) -> bool:
        return (self.root / p.READY / key).exists()

    def journal(self, key: str) -> journal.Journal:
        """The run lines and the last result in the job's job.json."""
        path = self.job_dir(key) / p.META
        return journal.parse(path.read_bytes()) if path.exists() else journal.Journal([], None)

    def result(self, key: str) -> Result:
        """The journal's last result; result.json where there is none (a job the pilot
        could not run writes both, in case its journal is what could not be read)."""
        found = self.journal(key).result
        return found if found is not None else read_record(
            Result, p.result_path(str(self.root), key))

    def runs(self, key: str) -> list[RunLine]:
        return self.journal(key).runs

    def output(self, key: str, name: str) -> Path:
        return Path(p.output_path(str(self.root), key, name, self.result(key).attempt))

    def stop_all(self) -> None:
        for proc in self.pilots:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait()


def pids_in_group(pgid: int) -> Iterator[int]:
    """Live (non-zombie) processes whose process group is ``pgid``, from /proc."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            yield int(entry)


def pids_with_environ(marker: str) -> list[int]:
    """Live processes whose environment holds ``marker`` (a unique NAME=VALUE)."""
    found = []
    needle = marker.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/environ" % entry, "rb") as handle:
                environ = handle.read().split(b"\0")
            with open("/proc/%s/stat" % entry) as handle:
                state = handle.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in environ and state != "Z":
            found.append(int(entry))
    return found
