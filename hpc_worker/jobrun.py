"""One job run by the pilot: start it, watch it, end it, report it."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from typing import Any, Callable, Dict, List, Optional

from . import protocol as p
from .states import Reason, ResultStatus

log = logging.getLogger(__name__)


def _parent_death_signal() -> Optional[Callable[[], None]]:
    """A preexec_fn that kills the job's shell when the pilot dies (Linux)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None

    def set_pdeathsig() -> None:
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

    return set_pdeathsig


_PREEXEC = _parent_death_signal()


class JobRun:
    """A claimed job's process and what the pilot knows about it."""

    def __init__(self, root: str, key: str, pilot: str, slot: int, gpu: str) -> None:
        self.root = root
        self.key = key
        self.pilot = pilot
        self.slot = slot
        self.gpu = gpu
        self.dir = p.job_dir(root, key)
        self.meta: Dict[str, Any] = p.read_json(os.path.join(self.dir, p.META))
        self.proc: Optional["subprocess.Popen[bytes]"] = None
        self.start_time = 0.0
        self.start_iso = ""
        self.kill_reason = ""

    @property
    def claim_path(self) -> str:
        return p.marker(self.root, p.CLAIMED, p.claim_name(self.key, self.pilot))

    def walltime(self) -> Optional[float]:
        return p.optional_float(self.meta.get("walltime"))

    def start(self, env: Dict[str, str]) -> None:
        """Start ``bash job.sh`` in the job's directory, in its own session."""
        for name in self.meta.get("outputs", []):
            _remove(os.path.join(self.dir, name))  # leftovers of a lost attempt
        _remove(os.path.join(self.dir, p.RESULT))
        env = dict(env, CUDA_VISIBLE_DEVICES=self.gpu, HPC_BATCH_JOB=self.key,
                   HPC_BATCH_SLOT=str(self.slot))
        self.start_time = time.time()
        self.start_iso = p.now_iso()
        p.append_jsonl(os.path.join(self.dir, p.RUNS), {
            "pilot": self.pilot, "host": socket.gethostname(), "start": self.start_iso,
            "slot": self.slot, "gpu": self.gpu})
        with open(os.path.join(self.dir, p.STDOUT), "wb") as out, \
                open(os.path.join(self.dir, p.STDERR), "wb") as err:
            self.proc = subprocess.Popen(
                ["bash", p.SCRIPT], cwd=self.dir, env=env, stdin=subprocess.DEVNULL,
                stdout=out, stderr=err, start_new_session=True, preexec_fn=_PREEXEC)
        log.info("(%s) started on slot %s (gpu %s), pid %s", self.key, self.slot, self.gpu,
                 self.proc.pid)

    def poll(self) -> Optional[int]:
        return None if self.proc is None else self.proc.poll()

    def overdue(self, now: float) -> bool:
        limit = self.walltime()
        return limit is not None and now - self.start_time > limit

    def kill(self, reason: str, grace: float) -> None:
        """End the job's whole process group: SIGTERM, then SIGKILL after ``grace``."""
        self.kill_reason = self.kill_reason or reason
        if self.proc is None or self.proc.poll() is not None:
            return
        log.info("(%s) stopping: %s", self.key, reason)
        _killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            _killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        _killpg(self.proc.pid, signal.SIGKILL)  # stragglers left in the group

    def finish(self, scheduler_id: str) -> None:
        """Write result.json, then move the claim to done/ (the marker last)."""
        rc = self.poll()
        result = self._result(-1 if rc is None else rc)
        result.update(start=self.start_iso, end=p.now_iso(), host=socket.gethostname(),
                      pilot=self.pilot, scheduler_id=scheduler_id, slot=self.slot)
        p.write_json(os.path.join(self.dir, p.RESULT), result)
        p.try_rename(self.claim_path, p.marker(self.root, p.DONE, self.key))
        log.info("(%s) finished: %s (rc %s)", self.key, result["status"], result["rc"])

    def release(self) -> None:
        """Give a killed job back to the queue for the next pilot."""
        p.try_rename(self.claim_path, p.marker(self.root, p.READY, self.key))
        p.append_jsonl(os.path.join(self.dir, p.RUNS), {
            "pilot": self.pilot, "released": p.now_iso()})
        log.info("(%s) released for the next pilot", self.key)

    def _result(self, rc: int) -> Dict[str, Any]:
        if self.kill_reason == Reason.CANCELLED:
            return _error(rc, Reason.CANCELLED, "Cancelled while running")
        if self.kill_reason == Reason.WALLTIME:
            return _error(rc, Reason.WALLTIME,
                          "Killed after exceeding its walltime of %ss" % self.walltime())
        if rc < 0:
            return _error(rc, Reason.KILLED, "Remote command was killed by signal %s"
                          % _signal_name(-rc))
        if rc != 0:
            return _error(rc, Reason.FAILED, "Remote command failed with return code %d" % rc)
        missing = self.missing_outputs()
        if missing:
            return _error(rc, Reason.MISSING_OUTPUT,
                          "Remote command succeeded but did not produce: %s" % ", ".join(missing))
        return {"status": ResultStatus.OK, "message": "processed OK", "rc": 0, "reason": None}

    def missing_outputs(self) -> List[str]:
        return [name for name in self.meta.get("outputs", [])
                if not os.path.isfile(os.path.join(self.dir, name))]


def _error(rc: int, reason: str, message: str) -> Dict[str, Any]:
    return {"status": ResultStatus.ERROR, "message": message, "rc": rc, "reason": reason}


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
