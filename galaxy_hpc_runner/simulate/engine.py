"""The discrete-event core: a scheduler with queue waits and the pilot and baseline models.

The decisions come from the real code: which pilots to submit from
:mod:`galaxy_hpc_runner.dropbox.policy` (called through the module, so the
simulator follows whatever the submitter follows), and so does whether a run given
back at a pilot's walltime is requeued or fails; which job a pilot starts and when it stops from
:mod:`hpc_worker.decisions`.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from galaxy_hpc_runner.dropbox import policy as shared
from galaxy_hpc_runner.simulate.model import DAY, Job, Policy, Site
from hpc_worker.decisions import job_fits, should_stop
from hpc_worker.states import PilotState

log = logging.getLogger(__name__)

EPS = 1e-6  # float slack: an idle check scheduled at last+timeout sees idle >= timeout

# Event priorities at equal times: jobs end before walltimes strike, arrivals come
# before the submitter pass that sees them, idle checks come last.
P_JOB_END, P_WALLTIME, P_ARRIVAL, P_START, P_PASS, P_IDLE = range(6)


SEPARATE = ("latencies", "makespan")  # Outcome fields merged apart from the summed counters


@dataclass
class Outcome:
    """What one simulated run produced (seconds throughout)."""

    latencies: list[float] = field(default_factory=list)
    submissions: int = 0
    held: float = 0.0  # GPU-seconds allocated by running scheduler jobs
    busy: float = 0.0  # GPU-seconds spent running tool runs (killed runs included)
    horizon: float = DAY
    makespan: float = 0.0
    rejected: int = 0  # declared walltime above the pilot walltime
    failed: int = 0  # overran its declared walltime, or released past max_releases
    released: int = 0  # runs cut off at a pilot's walltime (then requeued or failed)

    @property
    def idle(self) -> float:
        return max(0.0, self.held - self.busy)

    def merge(self, other: Outcome) -> None:
        self.latencies += other.latencies
        for f in dataclasses.fields(self):
            if f.name not in SEPARATE:
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        self.makespan = max(self.makespan, other.makespan)


class Loop:
    """A heap of (time, priority, sequence, action)."""

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, int, Callable[[], None]]] = []
        self._seq = 0

    def at(self, when: float, prio: int, action: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (when, prio, self._seq, action))

    def run(self) -> None:
        while self._heap:
            self.now, _, _, action = heapq.heappop(self._heap)
            action()


class Scheduler:
    """Each submission waits a drawn time, then runs when the per-user limit allows."""

    def __init__(self, loop: Loop, site: Site, rng: random.Random) -> None:
        self.loop, self.site, self.rng = loop, site, rng
        self.running = 0
        self.held: list[Callable[[], None]] = []
        self.submissions = 0

    def submit(self, on_start: Callable[[], None]) -> None:
        self.submissions += 1
        self.loop.at(self.loop.now + self.site.wait.sample(self.rng), P_START,
                     lambda: self._eligible(on_start))

    def _eligible(self, on_start: Callable[[], None]) -> None:
        if self.site.user_limit and self.running >= self.site.user_limit:
            self.held.append(on_start)
            return
        self.running += 1
        on_start()

    def release(self) -> None:
        """A running scheduler job ended: the oldest held one may start."""
        self.running -= 1
        if self.held:
            self.running += 1
            self.held.pop(0)()


def simulate_baseline(jobs: list[Job], site: Site, rng: random.Random,
                      horizon: float | None = None) -> Outcome:
    """One scheduler job per tool run, submitted when the run arrives."""
    loop, out = Loop(), Outcome(horizon=_horizon(jobs, horizon))
    sched = Scheduler(loop, site, rng)

    def start(job: Job) -> None:
        out.held += ran(job)
        out.busy += ran(job)
        loop.at(loop.now + ran(job), P_JOB_END, lambda: end(job))

    def end(job: Job) -> None:
        if overran(job):
            out.failed += 1
        else:
            out.latencies.append(loop.now - job.arrival)
        out.makespan = max(out.makespan, loop.now)
        sched.release()

    for job in jobs:
        loop.at(job.arrival, P_ARRIVAL, lambda j=job: sched.submit(lambda: start(j)))  # type: ignore[misc]
    loop.run()
    out.submissions = sched.submissions
    return out


def overran(job: Job) -> bool:
    """The run is killed at its declared walltime and reports an error."""
    return job.walltime is not None and job.runtime > job.walltime


def ran(job: Job) -> float:
    """How long the run occupies its GPU: its runtime, or its walltime when it overruns."""
    return job.walltime if job.walltime is not None and overran(job) else job.runtime


def _horizon(jobs: list[Job], horizon: float | None) -> float:
    if horizon is not None:
        return horizon
    return max(DAY, max((j.arrival for j in jobs), default=0.0))


@dataclass
class Pilot:
    ident: int
    state: PilotState = PilotState.PENDING  # then RUNNING, then GONE
    start: float = 0.0
    deadline: float = 0.0
    last_activity: float = 0.0
    running: dict[int, float] = field(default_factory=dict)  # job index -> start time


class PilotSim:
    """Pilots fed by the submitter's passes, draining one shared backlog."""

    def __init__(self, jobs: list[Job], policy: Policy, site: Site, rng: random.Random,
                 horizon: float | None = None) -> None:
        self.jobs, self.policy, self.site = jobs, policy, site
        self.loop = Loop()
        self.sched = Scheduler(self.loop, site, rng)
        self.out = Outcome(horizon=_horizon(jobs, horizon))
        self.backlog: list[int] = []
        self.pilots: list[Pilot] = []
        self.live: list[Pilot] = []  # pending or running
        self.releases = [0] * len(jobs)  # times a pilot's walltime cut each job off
        self.learned = [0.0] * len(jobs)  # the longest each ran before it was cut off
        self.open = len(jobs)  # tool runs neither finished nor given up

    def run(self) -> Outcome:
        for index, job in enumerate(self.jobs):
            self.loop.at(job.arrival, P_ARRIVAL, lambda i=index: self._arrive(i))  # type: ignore[misc]
        self.loop.at(0.0, P_PASS, self._pass)
        self.loop.run()
        self.out.submissions = self.sched.submissions
        return self.out

    # -- the submitter side ------------------------------------------------------------
    def _arrive(self, index: int) -> None:
        declared = self.jobs[index].walltime
        if declared is not None and declared > self.policy.walltime:
            self.out.rejected += 1  # description validation refuses it
            self._close()
            return
        self.backlog.append(index)
        for pilot in self.live:
            if pilot.state is PilotState.RUNNING:
                self._fill(pilot)

    def _pass(self) -> None:
        pol = self.policy
        count = shared.pilots_to_submit(len(self.backlog), len(self.live), 0, pol.max_pilots,
                                 pol.backlog_per_pilot, pol.min_pilots if self.open else 0)
        for _ in range(count):
            self._submit()
        pending = sum(1 for p in self.live if p.state is PilotState.PENDING)
        remaining = [p.deadline - self.loop.now for p in self.live
                     if p.state is PilotState.RUNNING]
        for _ in range(shared.resubmit_ahead(len(self.backlog), remaining, pending, pol.lead,
                                             pol.max_pilots, pol.backlog_per_pilot)):
            self._submit()
        if self.open or self.live:
            self.loop.at(self.loop.now + self.site.interval, P_PASS, self._pass)

    def _submit(self) -> None:
        pilot = Pilot(len(self.pilots))
        self.pilots.append(pilot)
        self.live.append(pilot)
        self.sched.submit(lambda: self._start(pilot))

    def _close(self) -> None:
        self.open -= 1
        self.out.makespan = max(self.out.makespan, self.loop.now)

    # -- the pilot side ----------------------------------------------------------------
    def _start(self, pilot: Pilot) -> None:
        now = self.loop.now
        pilot.state, pilot.start, pilot.last_activity = PilotState.RUNNING, now, now
        pilot.deadline = now + self.policy.walltime
        self.loop.at(pilot.deadline, P_WALLTIME, lambda: self._walltime(pilot))
        self._fill(pilot)
        self._maybe_idle(pilot)

    def _fill(self, pilot: Pilot) -> int:
        free = self.policy.slots - len(pilot.running)
        if free <= 0 or not self.backlog:
            return 0
        now, remaining = self.loop.now, pilot.deadline - self.loop.now
        positions: list[int] = []
        for pos, index in enumerate(self.backlog):
            if job_fits(self.jobs[index].walltime, remaining):
                positions.append(pos)
                if len(positions) == free:
                    break
        if not positions:
            return 0
        taken = [self.backlog[pos] for pos in positions]
        for pos in reversed(positions):
            del self.backlog[pos]
        for index in taken:
            pilot.running[index] = now
            end = now + ran(self.jobs[index])
            self.loop.at(end, P_JOB_END, lambda p=pilot, i=index: self._job_end(p, i))  # type: ignore[misc]
        pilot.last_activity = now
        return len(taken)

    def _job_end(self, pilot: Pilot, index: int) -> None:
        if pilot.running.pop(index, None) is None:
            return  # cut off at the pilot's walltime
        job = self.jobs[index]
        self.out.busy += ran(job)
        if overran(job):
            self.out.failed += 1
        else:
            self.out.latencies.append(self.loop.now - job.arrival)
        self._close()
        pilot.last_activity = self.loop.now
        self._fill(pilot)
        self._maybe_idle(pilot)

    def _maybe_idle(self, pilot: Pilot) -> None:
        if not pilot.running:
            self.loop.at(self.loop.now + self.policy.idle_timeout, P_IDLE,
                         lambda: self._idle_check(pilot))

    def _idle_check(self, pilot: Pilot) -> None:
        if pilot.state is not PilotState.RUNNING:
            return
        idle_for = self.loop.now - pilot.last_activity + EPS
        if should_stop(idle_for, self.policy.idle_timeout, len(pilot.running)):
            self._stop(pilot)

    def _walltime(self, pilot: Pilot) -> None:
        """Runs still going at the walltime are given back: requeued while the submitter's
        own rule allows (``policy.release_verdict``: at most max_releases times, and a run
        that had a whole pilot is not rerun), else they fail."""
        if pilot.state is not PilotState.RUNNING:
            return
        requeue = []
        for index, started in pilot.running.items():
            self.out.busy += self.loop.now - started
            self.out.released += 1
            self.releases[index] += 1
            self.learned[index] = max(self.learned[index], self.loop.now - started)
            if shared.release_verdict(self.releases[index], self.site.max_releases,
                                      self.learned[index], self.policy.walltime, 0.0,
                                      "pilot %d" % pilot.ident) is None:
                requeue.append(index)
            else:
                self.out.failed += 1
                self._close()
        pilot.running.clear()
        self.backlog[:0] = requeue  # reclaimed runs are the oldest in the queue
        self._stop(pilot)

    def _stop(self, pilot: Pilot) -> None:
        pilot.state = PilotState.GONE
        self.live.remove(pilot)
        self.out.held += self.policy.slots * (self.loop.now - pilot.start)
        self.sched.release()


def simulate_pilots(jobs: list[Job], policy: Policy, site: Site, rng: random.Random,
                    horizon: float | None = None) -> Outcome:
    """Tool runs drained by pilots under ``policy``."""
    return PilotSim(jobs, policy, site, rng, horizon).run()
