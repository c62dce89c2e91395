"""The simulator's inputs: distributions, traffic, the site and the pilot policy."""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass

from galaxy_hpc_runner.config import parse_duration

HOUR = 3600.0
DAY = 86400.0


@dataclass(frozen=True)
class Dist:
    """A distribution of seconds (or counts): fixed, uniform, lognormal or exponential."""

    kind: str
    a: float
    b: float = 0.0
    text: str = ""

    def sample(self, rng: random.Random) -> float:
        if self.kind == "fixed":
            return self.a
        if self.kind == "uniform":
            return rng.uniform(self.a, self.b)
        if self.kind == "lognormal":
            return rng.lognormvariate(math.log(self.a), self.b)
        return rng.expovariate(1.0 / self.a) if self.a > 0 else 0.0

    def __str__(self) -> str:
        return self.text or "%s:%g:%g" % (self.kind, self.a, self.b)


KINDS = ("fixed", "uniform", "lognormal", "exp", "exponential")


def parse_dist(text: str) -> Dist:
    """``fixed:30m`` (or ``30m``), ``uniform:12h:24h``, ``lognormal:MEDIAN:SIGMA``, ``exp:MEAN``."""
    parts = text.strip().split(":")
    kind, args = parts[0].lower(), parts[1:]
    usage = ("distribution %r: use fixed:D, uniform:LOW:HIGH, lognormal:MEDIAN:SIGMA or exp:MEAN"
             % text)
    if kind not in KINDS:
        try:
            return Dist("fixed", parse_duration(text), text=text)
        except ValueError:
            raise ValueError(usage) from None
    try:
        if kind == "fixed" and len(args) == 1:
            return Dist("fixed", parse_duration(args[0]), text=text)
        if kind == "uniform" and len(args) == 2:
            low, high = parse_duration(args[0]), parse_duration(args[1])
            if high < low:
                raise ValueError("uniform: the high end %r is below the low end %r" % (
                    args[1], args[0]))
            return Dist("uniform", low, high, text=text)
        if kind == "lognormal" and len(args) == 2:
            median, sigma = parse_duration(args[0]), float(args[1])
            if median <= 0 or sigma < 0:
                raise ValueError("lognormal needs a positive median and sigma >= 0")
            return Dist("lognormal", median, sigma, text=text)
        if kind in ("exp", "exponential") and len(args) == 1:
            return Dist("exp", parse_duration(args[0]), text=text)
    except ValueError as exc:
        raise ValueError("distribution %r: %s" % (text, exc)) from exc
    raise ValueError(usage)


def parse_optional_dist(text: str) -> Dist | None:
    """A distribution, or None for ``none``/``off``/``0``."""
    return None if text.strip().lower() in ("none", "off", "0", "") else parse_dist(text)


@dataclass(frozen=True)
class Job:
    """One tool run: when it arrives, how long it runs, the walltime it declares."""

    arrival: float
    runtime: float
    walltime: float | None = None


@dataclass(frozen=True)
class Traffic:
    """How tool runs arrive at the site: bulk bursts and one-offs."""

    days: float = 7.0
    runtime: Dist = dataclasses.field(default_factory=lambda: parse_dist("lognormal:10m:0.8"))
    burst_every: Dist | None = dataclasses.field(default_factory=lambda: parse_dist("exp:3d"))
    burst_size: Dist = dataclasses.field(default_factory=lambda: parse_dist("uniform:50:300"))
    burst_gap: Dist = dataclasses.field(default_factory=lambda: parse_dist("exp:5s"))
    oneoff_every: Dist | None = dataclasses.field(default_factory=lambda: parse_dist("exp:4h"))
    job_walltime: str = "none"  # none, exact (the true runtime) or a duration

    def declared(self, runtime: float) -> float | None:
        mode = self.job_walltime.strip().lower()
        if mode in ("none", ""):
            return None
        if mode == "exact":
            return runtime
        return parse_duration(self.job_walltime)


def generate(traffic: Traffic, rng: random.Random) -> list[Job]:
    """The tool runs of ``traffic.days`` of site traffic, sorted by arrival."""
    horizon = traffic.days * DAY
    arrivals: list[float] = []
    if traffic.burst_every is not None:
        t = traffic.burst_every.sample(rng)
        while t < horizon:
            at = t
            for _ in range(max(1, round(traffic.burst_size.sample(rng)))):
                arrivals.append(at)
                at += traffic.burst_gap.sample(rng)
            t += max(1.0, traffic.burst_every.sample(rng))
    if traffic.oneoff_every is not None:
        t = traffic.oneoff_every.sample(rng)
        while t < horizon:
            arrivals.append(t)
            t += max(1.0, traffic.oneoff_every.sample(rng))
    arrivals.sort()
    runtimes = [max(1.0, traffic.runtime.sample(rng)) for _ in arrivals]
    return [Job(a, r, traffic.declared(r)) for a, r in zip(arrivals, runtimes, strict=True)]


@dataclass(frozen=True)
class Site:
    """The scheduler as one user sees it."""

    wait: Dist = dataclasses.field(default_factory=lambda: parse_dist("uniform:12h:24h"))
    user_limit: int = 0  # running scheduler jobs per user; 0: no limit
    interval: float = 60.0  # seconds between submitter passes
    max_releases: int = 3  # [pilot] max_releases: walltime cut-offs of a job before it fails


@dataclass(frozen=True)
class Policy:
    """The pilot settings a site admin chooses (see [pilot] and [scheduler] in the INI)."""

    walltime: float = DAY
    idle_timeout: float = 300.0
    slots: int = 1
    max_pilots: int = 1
    backlog_per_pilot: int = 0
    lead: float = 0.0  # resubmit a replacement this long before walltime; 0: off
    min_pilots: int = 0  # pilots kept queued or running even without a backlog


INT_FIELDS = ("slots", "max_pilots", "backlog_per_pilot", "min_pilots")
POLICY_FIELDS = tuple(f.name for f in dataclasses.fields(Policy))


def policy_value(name: str, text: str) -> float | int:
    """A Policy field's value from the command line (whole numbers or durations)."""
    if name in INT_FIELDS:
        value = int(text)
        least = 1 if name in ("slots", "max_pilots") else 0
        if value < least:
            raise ValueError("%s must be at least %d" % (name, least))
        return value
    return parse_duration(text)


def check_policy(policy: Policy) -> None:
    """The same consistency rules the INI reader applies."""
    if policy.idle_timeout >= policy.walltime:
        raise ValueError("idle_timeout (%gs) must be shorter than walltime (%gs)"
                         % (policy.idle_timeout, policy.walltime))
    if policy.slots < 1 or policy.max_pilots < 1:
        raise ValueError("slots and max_pilots must be at least 1")
