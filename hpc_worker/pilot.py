"""The pilot: one scheduler job that drains every staged job description it can find."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import signal
import socket
import time
from typing import Dict, List, Optional

from . import protocol as p
from .decisions import job_fits, should_stop
from .jobrun import JobRun
from .states import HeartbeatState, Reason

log = logging.getLogger(__name__)


class PilotSettings:
    """What a pilot is told on its command line."""

    def __init__(self, root: str, pilot_id: str, slots: int = 1, idle_timeout: float = 300.0,
                 walltime: Optional[float] = None, poll: float = 0.5, heartbeat: float = 10.0,
                 grace: float = 10.0, scheduler_id: str = "") -> None:
        self.root = os.path.abspath(root)
        self.pilot_id = pilot_id
        self.slots = slots
        self.idle_timeout = idle_timeout
        self.walltime = walltime
        self.poll = poll
        self.heartbeat = heartbeat
        self.grace = grace
        self.scheduler_id = scheduler_id or _scheduler_id_from_env()


def _scheduler_id_from_env() -> str:
    for name in ("SLURM_JOB_ID", "JOB_ID", "PBS_JOBID"):
        if os.environ.get(name):
            return os.environ[name]
    return str(os.getpid())  # the local backend's id for us


def gpu_list(slots: int) -> List[str]:
    """Slot i gets the i-th device Slurm gave us, or ``i`` when none is set."""
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return [visible[i] if i < len(visible) else str(i) for i in range(slots)]


class Pilot:
    def __init__(self, settings: PilotSettings) -> None:
        self.s = settings
        self.started = time.time()
        self.deadline = None if settings.walltime is None else self.started + settings.walltime
        self.gpus = gpu_list(settings.slots)
        self.running: Dict[int, JobRun] = {}
        self.stopping = ""
        self.last_activity = self.started
        self.last_heartbeat = 0.0
        self._changed = False  # a job started or ended since the last heartbeat
        self.done_count = 0
        self._wake_r, self._wake_w = os.pipe()
        self._env = dict(os.environ)

    # -- main loop -------------------------------------------------------------------
    def run(self) -> int:
        p.ensure_layout(self.s.root)
        self._install_signals()
        log.info("pilot %s (%s) on %s: %d slot(s), gpus %s, idle timeout %ss, walltime %s",
                 self.s.pilot_id, self.s.scheduler_id, socket.gethostname(), self.s.slots,
                 ",".join(self.gpus), self.s.idle_timeout, self.s.walltime)
        try:
            while not self.stopping:
                self._reap()
                self._check_cancel_and_walltime()
                started = self._fill_slots()
                self._heartbeat(HeartbeatState.RUNNING, force=self._changed)
                idle = self._idle_for()
                if not started and should_stop(idle, self.s.idle_timeout, len(self.running)):
                    log.info("idle for %.0fs: stopping", idle)
                    break
                if not started:
                    self._sleep(self.s.poll)
        finally:
            self._shutdown()
        return 0

    def _idle_for(self) -> float:
        return time.time() - self.last_activity

    def _sleep(self, seconds: float) -> None:
        """Sleep until the timeout, a child exit or a signal, whichever comes first."""
        try:
            ready, _, _ = select.select([self._wake_r], [], [], seconds)
        except InterruptedError:
            return
        if ready:
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 4096)

    def _install_signals(self) -> None:
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)
        signal.set_wakeup_fd(self._wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT):
            signal.signal(sig, self._on_stop_signal)

    def _on_stop_signal(self, signum: int, _frame: object) -> None:
        self.stopping = signal.Signals(signum).name

    # -- jobs --------------------------------------------------------------------------
    def _reap(self) -> None:
        for slot, job in list(self.running.items()):
            # Once a stop signal came, a job that ended may have been cut short by the
            # same signal (Slurm signals every process of the job; a script without
            # `set -e` then carries on and exits 0): its result is not trusted, and
            # _shutdown releases it. Jobs we killed ourselves are reported.
            if job.poll() is not None and (not self.stopping or job.kill_reason):
                self._report(slot, job)

    def _report(self, slot: int, job: JobRun) -> None:
        try:
            job.finish(self.s.scheduler_id)
        except OSError as exc:  # its directory was withdrawn under us
            log.error("(%s) cannot report its result: %s", job.key, exc)
        del self.running[slot]
        self.done_count += 1
        self.last_activity = time.time()
        self._changed = True

    def _check_cancel_and_walltime(self) -> None:
        now = time.time()
        for job in self.running.values():
            if os.path.exists(p.marker(self.s.root, p.CANCEL, job.key)):
                job.kill(Reason.CANCELLED, self.s.grace)
            elif job.overdue(now):
                job.kill(Reason.WALLTIME, self.s.grace)

    def _fill_slots(self) -> int:
        free = [slot for slot in range(self.s.slots) if slot not in self.running]
        if not free:
            return 0
        started = 0
        for key in p.listdir(os.path.join(self.s.root, p.READY)):
            if not free or self.stopping:
                break
            if not self._fits(key) or not self._claim(key):
                continue
            slot = free.pop(0)
            if self._start(key, slot):
                started += 1
        return started

    def _fits(self, key: str) -> bool:
        """A job whose walltime exceeds our remaining time is left for a fresh pilot."""
        if self.deadline is None:
            return True
        try:
            meta = p.read_json(os.path.join(p.job_dir(self.s.root, key), p.META))
        except (OSError, ValueError):
            return False
        walltime = p.optional_float(meta.get("walltime"))
        remaining = self.deadline - time.time()
        if not job_fits(walltime, remaining):
            log.info("(%s) walltime %ss exceeds the %.0fs this pilot has left: not taken",
                     key, walltime, remaining)
            return False
        return True

    def _claim(self, key: str) -> bool:
        src = p.marker(self.s.root, p.READY, key)
        dst = p.marker(self.s.root, p.CLAIMED, p.claim_name(key, self.s.pilot_id))
        return p.try_rename(src, dst)

    def _start(self, key: str, slot: int) -> bool:
        try:
            job = JobRun(self.s.root, key, self.s.pilot_id, slot, self.gpus[slot])
            job.start(self._env)
        except OSError as exc:
            if exc.errno == errno.EMFILE:
                raise
            log.exception("(%s) could not be started", key)
            p.try_rename(p.marker(self.s.root, p.CLAIMED, p.claim_name(key, self.s.pilot_id)),
                         p.marker(self.s.root, p.READY, key))
            return False
        self.running[slot] = job
        self.last_activity = time.time()
        self._changed = True
        return True

    # -- heartbeat and shutdown -------------------------------------------------------
    def _heartbeat(self, state: HeartbeatState, force: bool = False) -> None:
        now = time.time()
        if not force and now - self.last_heartbeat < self.s.heartbeat:
            return
        self.last_heartbeat, self._changed = now, False
        try:
            self._write_heartbeat(state, now)
        except OSError as exc:  # a file system hiccup must not end the pilot
            log.warning("cannot write heartbeat: %s", exc)

    def _write_heartbeat(self, state: HeartbeatState, now: float) -> None:
        p.write_json(os.path.join(self.s.root, p.PILOTS, self.s.pilot_id + ".hb"), {
            "pilot": self.s.pilot_id, "scheduler_id": self.s.scheduler_id, "state": state,
            "host": socket.gethostname(), "pid": os.getpid(), "time": p.now_iso(),
            "epoch": now, "started": self.started, "deadline": self.deadline,
            "running": sorted(job.key for job in self.running.values()),
            "done": self.done_count, "slots": self.s.slots})

    def _shutdown(self) -> None:
        self._reap()  # reports what ended before a stop signal, or that we killed
        if self.stopping:
            log.info("%s received: releasing %d running job(s)", self.stopping, len(self.running))
        for job in self.running.values():
            job.kill("pilot stopping", self.s.grace)
            job.release()
        self.running.clear()
        self._heartbeat(HeartbeatState.STOPPED, force=True)
        log.info("pilot %s stopped after %d job(s)", self.s.pilot_id, self.done_count)
