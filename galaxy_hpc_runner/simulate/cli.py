"""``hpc-batch simulate``: pilot policies against one site's queue waits and traffic.

A discrete-event simulation of a week (``--days``) of tool runs arriving as bulk
bursts and one-offs, drained either by pilots under a policy (or a ``--sweep`` of
policies) or by one scheduler job per tool run (the baseline). Which pilots the
submitter submits and when a pilot takes a job or stops are decided by the real
functions in :mod:`galaxy_hpc_runner.dropbox.policy` and :mod:`hpc_worker.decisions`.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import logging
import random
import sys
import time
from collections.abc import Callable
from typing import Any

from galaxy_hpc_runner.config import parse_duration
from galaxy_hpc_runner.simulate.engine import Outcome, simulate_baseline, simulate_pilots
from galaxy_hpc_runner.simulate.model import (
    INT_FIELDS,
    POLICY_FIELDS,
    Job,
    Policy,
    Site,
    Traffic,
    check_policy,
    generate,
    parse_dist,
    parse_optional_dist,
    policy_value,
)
from galaxy_hpc_runner.simulate.report import Row, table, write_json, write_png

log = logging.getLogger(__name__)

__all__ = ["Job", "Outcome", "Policy", "Site", "Traffic", "main", "run_study",
           "simulate_baseline", "simulate_pilots"]

EXAMPLES = """\
distributions: fixed:30m (or 30m), uniform:12h:24h, lognormal:MEDIAN:SIGMA, exp:MEAN
durations: 90, 90s, 15m, 2h, 1d, HH:MM:SS

examples:
  hpc-batch simulate
  hpc-batch simulate --wait lognormal:6h:0.7 --user-limit 4 --slots 2
  hpc-batch simulate --sweep idle_timeout=5m,1h,6h slots=1,2 --png sweep.png
  hpc-batch simulate --walltime 12h --sweep lead=0,6h,10h --repeat 5 --json out.json
"""


def _typed(func: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type that reports our ValueError's message, not just 'invalid value'."""
    def convert(text: str) -> Any:
        try:
            return func(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    convert.__name__ = func.__name__
    return convert


DIST, OPT_DIST, DURATION = _typed(parse_dist), _typed(parse_optional_dist), _typed(parse_duration)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="hpc-batch simulate", description=__doc__.split("\n\n")[0],
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    t = ap.add_argument_group("traffic")
    t.add_argument("--days", type=float, default=7.0, help="days of arrivals (default 7)")
    t.add_argument("--runtime", type=DIST, default="lognormal:10m:0.8",
                   help="tool run time (default lognormal:10m:0.8)")
    t.add_argument("--burst-every", type=OPT_DIST, default="exp:3d",
                   help="time between bulk bursts, or none (default exp:3d)")
    t.add_argument("--burst-size", type=DIST, default="uniform:50:300",
                   help="tool runs per burst (default uniform:50:300)")
    t.add_argument("--burst-gap", type=DIST, default="exp:5s",
                   help="time between runs within a burst (default exp:5s)")
    t.add_argument("--oneoff-every", type=OPT_DIST, default="exp:4h",
                   help="time between one-off runs, or none (default exp:4h)")
    t.add_argument("--job-walltime", default="none",
                   help="walltime each run declares: none, exact (its runtime) or a duration")
    s = ap.add_argument_group("site")
    s.add_argument("--wait", type=DIST, default="uniform:12h:24h",
                   help="queue wait of every scheduler job (default uniform:12h:24h)")
    s.add_argument("--user-limit", type=int, default=0,
                   help="running scheduler jobs allowed per user, 0 for none (default 0)")
    s.add_argument("--interval", type=DURATION, default=60.0,
                   help="time between submitter passes (default 1m)")
    s.add_argument("--max-releases", "--max-attempts", dest="max_releases", type=int,
                   default=3, help="times a pilot's walltime may cut a run off before it "
                   "fails, as [pilot] max_releases (default 3)")
    _policy_args(ap.add_argument_group("pilot policy (the [pilot]/[scheduler] settings)"))
    o = ap.add_argument_group("run and output")
    o.add_argument("--sweep", nargs="+", default=[], metavar="FIELD=V1,V2",
                   help="simulate every combination; fields: %s" % ", ".join(POLICY_FIELDS))
    o.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    o.add_argument("--repeat", type=int, default=1,
                   help="independent traffic samples pooled per policy (default 1)")
    o.add_argument("--no-baseline", action="store_true", help="skip one-job-per-run")
    o.add_argument("--json", metavar="FILE", help="write the results as JSON")
    o.add_argument("--png", metavar="FILE", help="plot latency CDFs and trade-off (matplotlib)")
    return ap


def _policy_args(g: argparse._ArgumentGroup) -> None:
    d = Policy()
    g.add_argument("--walltime", type=DURATION, default=d.walltime,
                   help="pilot walltime (default 24h)")
    g.add_argument("--idle-timeout", type=DURATION, default=d.idle_timeout,
                   help="a pilot with no work leaves after this (default 5m)")
    g.add_argument("--slots", type=int, default=d.slots, help="parallel runs per pilot")
    g.add_argument("--max-pilots", type=int, default=d.max_pilots,
                   help="most pilots at once (default 1)")
    g.add_argument("--backlog-per-pilot", type=int, default=d.backlog_per_pilot,
                   help="one more pilot per this many queued runs, 0: one pilot (default 0)")
    g.add_argument("--min-pilots", type=int, default=d.min_pilots,
                   help="pilots kept queued or running even without work (default 0)")
    g.add_argument("--lead", type=DURATION, default=d.lead,
                   help="resubmit a replacement this long before walltime while backlog "
                        "remains, 0: off (default 0)")


def parse_sweep(items: list[str]) -> list[tuple[str, list[float | int]]]:
    """``slots=1,2,4`` -> [("slots", [1, 2, 4])]; dashes in field names are allowed."""
    axes = []
    for item in items:
        name, sep, values = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in POLICY_FIELDS or not values.strip():
            raise ValueError("--sweep %r: use FIELD=V1,V2 with FIELD one of %s"
                             % (item, ", ".join(POLICY_FIELDS)))
        axes.append((name, [policy_value(name, v.strip()) for v in values.split(",")]))
    return axes


def policies(base: Policy, axes: list[tuple[str, list[float | int]]]) -> list[Policy]:
    """The base policy with every combination of the swept values."""
    names = [name for name, _ in axes]
    combos: list[dict[str, Any]] = [dict(zip(names, combo, strict=True))
                                    for combo in itertools.product(*(v for _, v in axes))]
    return [dataclasses.replace(base, **combo) for combo in combos]


def label(policy: Policy, swept: list[str]) -> str:
    """The swept fields (all when nothing is swept), durations in h/m."""
    names = swept or ["slots", "idle_timeout", "walltime", "max_pilots", "lead"]
    return " ".join("%s=%s" % (n, _short(n, getattr(policy, n))) for n in names)


def _short(name: str, value: float) -> str:
    if name in INT_FIELDS:
        return str(int(value))
    if value and value % 3600 == 0:
        return "%dh" % (value // 3600)
    if value and value % 60 == 0:
        return "%dm" % (value // 60)
    return "%gs" % value


def run_study(traffic: Traffic, site: Site, pols: list[Policy], labels: list[str],
              seed: int = 1, repeat: int = 1, baseline: bool = True) -> list[Row]:
    """Every policy (and the baseline) on the same traffic and the same wait draws."""
    rows = [Row(lab, dataclasses.asdict(p), Outcome(horizon=0.0), repeat)
            for p, lab in zip(pols, labels, strict=True)]
    base = Row("one job per run", {}, Outcome(horizon=0.0), repeat)
    for rep in range(repeat):
        jobs = generate(traffic, random.Random("%d:%d:traffic" % (seed, rep)))
        horizon = traffic.days * 86400.0

        def waits(rep: int = rep) -> random.Random:
            return random.Random("%d:%d:waits" % (seed, rep))

        for row, pol in zip(rows, pols, strict=True):
            row.outcome.merge(simulate_pilots(jobs, pol, site, waits(), horizon))
        if baseline:
            base.outcome.merge(simulate_baseline(jobs, site, waits(), horizon))
    return rows + ([base] if baseline else [])


def main(argv: list[str]) -> int:
    ap = build_parser()
    args = ap.parse_args(argv[1:] if argv[:1] == ["--"] else argv)
    try:
        axes = parse_sweep(args.sweep)
        base = Policy(args.walltime, args.idle_timeout, args.slots, args.max_pilots,
                      args.backlog_per_pilot, args.lead, args.min_pilots)
        pols = policies(base, axes)
        for pol in pols:
            check_policy(pol)
        traffic, site = _traffic_site(args)
    except ValueError as exc:
        ap.error(str(exc))
    swept = [name for name, _ in axes]
    started = time.perf_counter()
    rows = run_study(traffic, site, pols, [label(p, swept) for p in pols], args.seed,
                     max(1, args.repeat), not args.no_baseline)
    elapsed = time.perf_counter() - started
    summaries = [r.summary() for r in rows]
    print(_header(args, base, swept))
    print(table(summaries))
    print("(%d simulation(s) in %.2fs)" % (len(rows) * max(1, args.repeat), elapsed))
    return _outputs(args, rows, summaries)


def _traffic_site(args: argparse.Namespace) -> tuple[Traffic, Site]:
    if args.job_walltime.strip().lower() not in ("none", "exact"):
        parse_duration(args.job_walltime)
    if args.days <= 0 or args.repeat < 1 or args.user_limit < 0 or args.interval <= 0:
        raise ValueError("--days, --repeat and --interval must be positive, --user-limit >= 0")
    traffic = Traffic(args.days, args.runtime, args.burst_every, args.burst_size,
                      args.burst_gap, args.oneoff_every, args.job_walltime)
    return traffic, Site(args.wait, args.user_limit, args.interval, args.max_releases)


def _header(args: argparse.Namespace, base: Policy, swept: list[str]) -> str:
    fixed = label(base, [n for n in POLICY_FIELDS if n not in swept])
    return ("site: wait %s, user limit %s, pass every %s | traffic: %g day(s) x %d, runtime "
            "%s, bursts every %s of %s, one-offs every %s | pilot: %s" % (
                args.wait, args.user_limit or "none", _short("", args.interval), args.days,
                args.repeat, args.runtime, args.burst_every or "never", args.burst_size,
                args.oneoff_every or "never", fixed))


def _outputs(args: argparse.Namespace, rows: list[Row], summaries: list[dict[str, Any]]) -> int:
    writers: list[tuple[str | None, Callable[[str], None]]] = [
        (args.json, lambda path: write_json(path, vars(args), summaries)),
        (args.png, lambda path: write_png(path, rows))]
    status = 0
    for path, write in writers:
        if not path:
            continue
        try:
            write(path)
            print("wrote %s" % path)
        except (OSError, RuntimeError) as exc:
            print("hpc-batch simulate: %s" % exc, file=sys.stderr)
            status = 1
    return status
