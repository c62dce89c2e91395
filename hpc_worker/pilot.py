"""The pilot: one scheduler job that drains every staged job description it can find.

Signals. SIGTERM and SIGINT stop the pilot: every running job is given back
(released) for the next pilot, never reported as failed. SIGUSR1 and SIGUSR2 are
the scheduler's walltime warning (Slurm ``--signal=B:USR1@N``): the pilot drains
(heartbeat DRAINING, no new jobs) and lets running jobs go on until its release
point, ``release_margin`` before its own hard end (start + ``--walltime``); there it
releases what still runs, and it releases earlier any job an earlier attempt showed
cannot finish in time. It drains by itself at the release point without a warning.

A job that ends by itself frees its slot at once and is reported once ``--settle``
seconds (``decisions.SETTLE`` when it died of a stop signal) passed without a stop
signal reaching the pilot: the scheduler signals the job and the pilot at once, in
either order, and a script may carry on and exit 0 after its tool was killed. While
other jobs run, jobs whose settle time is over are reported together, once the first
of them has waited ``reporting.GATHER`` seconds more: their results are made durable
together.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import time
from typing import Dict, List, Optional

from . import decisions as d
from . import gpu, reporting
from . import protocol as p
from .attempt import JobInvalid, kept_env, load_job
from .guard import GroupGuard
from .jobrun import HOST, JobRun, report_unrunnable, seal_descriptors
from .readyq import ReadyQueue
from .records import RunLine, learned_runtime
from .settings import PilotSettings
from .states import HeartbeatState, Reason, ReleaseReason
from .wake import Handler, Waker

log = logging.getLogger(__name__)

STOP_SIGNALS = frozenset((signal.SIGTERM, signal.SIGINT, signal.SIGHUP))
DRAIN_SIGNALS = frozenset((signal.SIGUSR1, signal.SIGUSR2))
SIGNALLED = frozenset(STOP_SIGNALS | DRAIN_SIGNALS)
__all__ = ["Pilot", "PilotSettings"]
TICK = 0.05  # seconds between looks at ready/ while slots are free (a stat each)
BEAT_GAP = 1.0  # seconds: jobs starting and ending bring the heartbeat forward, this often


class Pilot:
    def __init__(self, settings: PilotSettings) -> None:
        self.s = settings
        self.started = time.time()
        self.deadline = None if settings.walltime is None else self.started + settings.walltime
        self.margin = d.release_margin(settings.walltime, settings.grace)
        self.release_at = None if self.deadline is None else self.deadline - self.margin
        self.kill_grace = min(settings.grace, self.margin / 2) if self.deadline else settings.grace
        self.alloc = gpu.allocation(os.environ, settings.slots, settings.slots_per_gpu)
        self.gpus = [self.alloc.device(slot) for slot in range(self.alloc.slots)]
        self.running: Dict[int, JobRun] = {}
        self.settling: List[JobRun] = []  # ended by themselves, reported after settle time
        self.stopping = ""
        self.draining = ""
        self.last_activity = self.started
        self.last_heartbeat = 0.0
        self._changed = False  # a job started or ended since the last heartbeat
        self._urgent = False  # the heartbeat's state changed: write it at once
        self.done_count = 0
        self.waker = Waker()
        self._env = kept_env(os.environ, settings.keep_env)  # once, not per job
        self.queue = ReadyQueue(os.path.join(self.s.root, p.READY), min_rescan=settings.poll,
                                rescan_every=max(10.0, 10 * settings.poll))
        self.guard = GroupGuard()
        self.sampler = gpu.Sampler(settings.gpu_sample if self.alloc.real else 0.0)
        self.ledger = gpu.Ledger(self.alloc)

    # -- main loop -------------------------------------------------------------------
    def run(self) -> int:
        p.ensure_layout(self.s.root)
        seal_descriptors()  # jobs get stdin, stdout and stderr only
        self._install_signals()
        self.guard.start()
        self._log_start()
        try:
            while not self.stopping:
                if not self._step():
                    break
        finally:
            self._shutdown()
        return 0

    def _log_start(self) -> None:
        log.info("pilot %s (%s) on %s: %d slot(s), gpus %s (%s), idle timeout %ss, "
                 "walltime %s, releases at %s", self.s.pilot_id, self.s.scheduler_id,
                 HOST, self.alloc.slots, ",".join(self.gpus),
                 self.alloc.source or "no GPU variable set: nominal", self.s.idle_timeout,
                 self.s.walltime, p.epoch_iso(self.release_at))
        refused = self.alloc.refused_slots_message()
        if refused:
            log.error("%s", refused)

    def _step(self) -> bool:
        """One turn of the loop; False when the pilot should leave."""
        now = time.time()
        self._reap(now)
        self._supervise(now)
        started = 0 if self.draining or self.stopping else self._fill_slots(now)
        self._report_settled(now)  # after the starts: the next job runs while we report
        self._account(now)
        self._heartbeat()
        held = len(self.running) + len(self.settling)
        if self.draining and not held:
            log.info("drained: stopping")
            return False
        idle = self._idle_for()
        if not started and d.should_stop(idle, self.s.idle_timeout, held):
            log.info("idle for %.0fs: stopping", idle)
            return False
        if not started:
            self.waker.sleep(self._nap())
        return True

    def _nap(self) -> float:
        nap = self.s.poll
        if len(self.running) < self.alloc.slots and not self.draining:
            nap = min(nap, TICK)
        if any(job.kill_due for job in self.running.values()):
            nap = min(nap, 0.1)
        report_at = reporting.due_at(self.settling, bool(self.running))
        if report_at is not None:
            nap = min(nap, max(0.01, report_at - time.time()))
        if self.release_at is not None and self.release_at > time.time():
            nap = min(nap, self.release_at - time.time() + 0.01)
        return nap

    def _idle_for(self) -> float:
        return time.time() - self.last_activity

    def _install_signals(self) -> None:
        handlers: Dict[int, Handler] = {sig: self._on_stop_signal for sig in STOP_SIGNALS}
        handlers.update({sig: self._on_drain_signal for sig in DRAIN_SIGNALS})
        self.waker.install(handlers)

    def _on_stop_signal(self, signum: int, _frame: object) -> None:
        self.stopping = signal.Signals(signum).name

    def _on_drain_signal(self, signum: int, _frame: object) -> None:
        if not self.draining:
            self.draining = signal.Signals(signum).name
            self._urgent = True

    # -- jobs ending -------------------------------------------------------------------
    def _reap(self, now: float) -> None:
        for slot, job in list(self.running.items()):
            rc = job.poll()
            if rc is None:
                continue
            if self.stopping and not job.kill_reason:
                continue  # may be cut short by the same stop signal: _shutdown releases it
            if isinstance(job.kill_reason, ReleaseReason):
                self._end(slot, job, release=job.kill_reason)
            elif job.kill_reason:
                self._end(slot, job)
            else:
                self._settle(slot, job, rc, now)

    def _report_settled(self, now: float) -> None:
        """Report the jobs whose settle time is over, together (``reporting.due_at``)."""
        if self.stopping:
            return  # what settles was maybe cut short by the stop: _shutdown releases it
        for job in list(self.settling):
            if self.draining and d.stop_signalled(job.poll() or 0, DRAIN_SIGNALS):
                self._close(job, release=ReleaseReason.PILOT_WALLTIME)
        report_at = reporting.due_at(self.settling, bool(self.running))
        if report_at is not None and now >= report_at:
            self._report([job for job in self.settling if now >= (job.settle_until or 0)])

    def _settle(self, slot: int, job: JobRun, rc: int, now: float) -> None:
        """A job that ended by itself frees its slot, but is reported only once no stop
        signal of our own followed within the settle time (the scheduler signals the job's
        processes and the pilot at once; a script may even carry on and exit 0)."""
        self._detach(slot, job)
        signalled = d.stop_signalled(rc, SIGNALLED)
        job.settle_until = now + (max(d.SETTLE, self.s.settle) if signalled else self.s.settle)
        self.settling.append(job)

    def _detach(self, slot: int, job: JobRun) -> None:
        del self.running[slot]
        job.end_group()
        job.ended = time.time()
        if job.proc is not None:
            self.guard.remove(job.proc.pid)

    def _end(self, slot: int, job: JobRun, release: Optional[ReleaseReason] = None) -> None:
        self._detach(slot, job)
        self._close(job, release)

    def _close(self, job: JobRun, release: Optional[ReleaseReason] = None) -> None:
        """Report or release a job whose processes are gone."""
        if release is None:
            self._report([job])
            return
        if job in self.settling:
            self.settling.remove(job)
        try:
            job.release(release)
        except OSError as exc:  # a full disk, its directory withdrawn under us
            log.error("(%s) cannot be released: %s", job.key, exc)
        self.last_activity, self._changed = time.time(), True

    def _report(self, jobs: List[JobRun]) -> None:
        """Report ``jobs`` together (``reporting``); one that cannot be is given back."""
        self.settling = [job for job in self.settling if job not in jobs]
        done, refused = reporting.report(jobs, self.s.scheduler_id, self.alloc, time.time(),
                                         self._between)
        self.done_count += done
        for key in refused:
            self.queue.never(key)
        self.last_activity, self._changed = time.time(), True

    def _between(self) -> None:
        """Between the steps of a report (``reporting.report``): a job that ended by itself
        meanwhile settles and its slot takes the next job at once, not after the batch.
        Whatever else ended (a job we stopped, one cut short by a stop) waits for the loop.
        Nothing here reports, so a report never nests."""
        if self.stopping or self.draining:
            return
        now, freed = time.time(), False
        for slot, job in list(self.running.items()):
            rc = None if job.kill_reason else job.poll()
            if rc is not None:
                self._settle(slot, job, rc, now)
                freed = True
        if freed:
            self._fill_slots(now)

    def _supervise(self, now: float) -> None:
        for job in self.running.values():
            if os.path.exists(p.marker(self.s.root, p.CANCEL, job.key)):
                job.terminate(Reason.CANCELLED, self.s.grace, now)
            elif job.overdue(now):
                job.terminate(Reason.WALLTIME, self.s.grace, now)
            job.escalate(now)
        if self.release_at is None:
            return
        left = self.release_at - now
        if left <= 0:
            self._release_all(now)
        elif self.draining:
            for job in self.running.values():
                if not job.kill_reason and d.cannot_finish(job.elapsed(now), job.learned, left):
                    log.info("(%s) ran %.0fs before, cannot finish in the %.0fs left",
                             job.key, job.learned or 0, left)
                    job.terminate(ReleaseReason.PILOT_WALLTIME, self.kill_grace, now)

    def _release_all(self, now: float) -> None:
        """The release point: give back what still runs, take nothing new."""
        if not self.draining:
            self.draining = "release point"
            self._urgent = True
        pending = [job for job in self.running.values() if not job.kill_reason]
        if pending:
            cause = self.draining + (" received" if self.draining.startswith("SIG") else "")
            log.info("%s: releasing %d running job(s) before the pilot's walltime ends",
                     cause, len(pending))
        for job in pending:
            job.terminate(ReleaseReason.PILOT_WALLTIME, self.kill_grace, now)

    # -- jobs starting -----------------------------------------------------------------
    def _fill_slots(self, now: float) -> int:
        free = [slot for slot in range(self.alloc.slots) if slot not in self.running]
        if not free:
            return 0
        self.queue.refresh(now)
        started = 0
        while free and not self.stopping:
            key = self.queue.pop()
            if key is None:
                break
            if self._try(key, free[0]):
                free.pop(0)
                started += 1
        return started

    def _try(self, key: str, slot: int) -> bool:
        """Claim ``key`` and start it on ``slot`` if it fits; True when it started."""
        try:
            spec, runs = load_job(self.s.root, key)
        except JobInvalid as exc:
            if self._claim(key):
                report_unrunnable(self.s.root, key, self.s.pilot_id, self.s.scheduler_id, exc)
                self.last_activity, self._changed = time.time(), True
            return False
        if not self._fits(key, spec.walltime, runs):
            self.queue.never(key)
            return False
        if not self._claim(key):
            return False
        return self._start(JobRun(self.s.root, key, self.s.pilot_id, slot, self.gpus[slot],
                                  spec, runs))

    def _fits(self, key: str, walltime: Optional[float], runs: List[RunLine]) -> bool:
        """A job that needs more than our usable time left is left for a fresh pilot."""
        if self.release_at is None:
            return True
        why = d.why_not_taken(walltime, learned_runtime(runs), self.release_at - time.time())
        if why:
            log.info("(%s) %s: not taken", key, why)
        return not why

    def _claim(self, key: str) -> bool:
        src = p.marker(self.s.root, p.READY, key)
        dst = p.marker(self.s.root, p.CLAIMED, p.claim_name(key, self.s.pilot_id))
        return p.try_rename(src, dst)

    def _start(self, job: JobRun) -> bool:
        try:
            job.start(self._env, gpu.env_for(job.gpu), self.s.root_as_given,
                      self.s.keep_env, announce=self.guard.add)
        except JobInvalid as exc:
            report_unrunnable(self.s.root, job.key, self.s.pilot_id, self.s.scheduler_id, exc)
            self.last_activity, self._changed = time.time(), True
            return False
        except (OSError, ValueError) as exc:
            if isinstance(exc, OSError) and exc.errno == errno.EMFILE:
                raise
            log.exception("(%s) could not be started", job.key)
            with contextlib.suppress(OSError):
                job.release(ReleaseReason.START_FAILED)
            self.queue.never(job.key)  # another pilot may; this one does not loop on it
            return False
        self.running[job.slot] = job
        self.last_activity = time.time()
        self._changed = True
        return True

    # -- GPUs, heartbeat and shutdown -------------------------------------------------
    def _account(self, now: float) -> None:
        self.ledger.account(now, [job.gpu for job in self.running.values()])
        figures = self.sampler.tick(now)
        if figures:
            for job in self.running.values():
                sample = figures.get(job.gpu)
                if sample is not None:
                    job.usage.add(sample)

    def _heartbeat(self) -> None:
        """Every --heartbeat seconds; sooner (at most every BEAT_GAP) when jobs started or
        ended, at once when the pilot began to drain or its last job ended (idle: the
        write costs nothing then, and `status` is current at once)."""
        now = time.time()
        since = now - self.last_heartbeat
        idle_now = self._changed and not self.running and not self.settling
        if since < self.s.heartbeat and not self._urgent and not idle_now and \
                not (self._changed and since >= BEAT_GAP):
            return
        self.last_heartbeat, self._changed, self._urgent = now, False, False
        state = HeartbeatState.DRAINING if self.draining else HeartbeatState.RUNNING
        reporting.heartbeat(self, state, now)

    def _shutdown(self) -> None:
        now = time.time()
        self._reap(now)  # reports what ended before a stop signal, or that we killed
        self._report_settled(now)
        if self.stopping and (self.running or self.settling):
            log.info("%s received: releasing %d running job(s)", self.stopping,
                     len(self.running) + len(self.settling))
        for job in self.running.values():
            job.terminate(ReleaseReason.STOP, self.kill_grace, now)
        self._wait_for_jobs(now + self.kill_grace)
        for slot, job in list(self.running.items()):
            if job.kill_reason in (Reason.CANCELLED, Reason.WALLTIME):
                self._end(slot, job)  # it was ending anyway: report why
            else:
                reason = job.kill_reason if isinstance(job.kill_reason, ReleaseReason) \
                    else ReleaseReason.STOP
                self._end(slot, job, release=reason)
        for job in list(self.settling):
            self._close(job, release=ReleaseReason.STOP)
        self._account(time.time())
        reporting.heartbeat(self, HeartbeatState.STOPPED, time.time())
        self.guard.stop()
        self.sampler.close()
        log.info("pilot %s stopped after %d job(s)", self.s.pilot_id, self.done_count)

    def _wait_for_jobs(self, until: float) -> None:
        while any(job.poll() is None for job in self.running.values()):
            if time.time() >= until:
                for job in self.running.values():
                    job.end_group()
                for job in self.running.values():
                    if job.proc is not None:
                        job.proc.wait()
                return
            self.waker.sleep(0.05)

