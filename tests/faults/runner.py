"""Run a case N times, each on a fresh site, check everything, count it in a Row."""

from __future__ import annotations

import logging
import os
import random
import time
from pathlib import Path

from tests.faults.bench import Bench, Rep
from tests.faults.cases import CASES, Case
from tests.faults.checks import Tally, check_jobs, check_leftovers, check_pilots
from tests.faults.table import Row

log = logging.getLogger(__name__)
SEED = int(os.environ.get("HPC_FAULT_SEED", "20261127"))


def long_wanted(markexpr: str = "") -> bool:
    """The long variant runs when asked: HPC_FAULT_LONG=1 or ``-m faults_long``."""
    return os.environ.get("HPC_FAULT_LONG", "") not in ("", "0") or "faults_long" in markexpr


def run_rep(bench: Bench, case: Case, index: int, base: Path, rng: random.Random,
            tally: Tally) -> None:
    prefix = "%s%d" % ("".join(ch for ch in case.name if ch.isalnum())[:8], index)
    try:
        rep = Rep(bench, base / prefix, prefix, rng, **case.overrides)
    except Exception as exc:  # no site: nothing to check, but counted
        tally.problems.append("repetition %d: no site: %s" % (index, exc))
        return
    try:
        case.run(rep)
    except Exception as exc:  # a repetition that could not finish is counted, not fatal
        log.exception("fault case %s, repetition %d", case.name, index)
        tally.problems.append("repetition %d: %s: %s" % (index, type(exc).__name__, exc))
    finally:
        rep.close()
    if rep.orphans:
        tally.orphans += len(rep.orphans)
        tally.problems.append("repetition %d: %d process(es) of a dead attempt alive after "
                              "its pilot" % (index, len(rep.orphans)))
    if rep.loop_exits:
        tally.problems.append("repetition %d: the submitter loop ended %d time(s)"
                              % (index, rep.loop_exits))
    check_jobs(rep, tally)
    check_pilots(rep, tally)
    check_leftovers(rep, tally)


def run_case(bench: Bench, case: Case, reps: int, base: Path, seed: int = SEED) -> Row:
    rng = random.Random("%s/%s" % (seed, case.name))
    tally = Tally()
    started = time.monotonic()
    for index in range(reps):
        run_rep(bench, case, index, base, rng, tally)
    return Row(case=case.name, reps=reps, jobs=tally.jobs, runs=tally.runs, ok=tally.ok,
               lost=tally.lost, duplicated=tally.duplicated, orphans=tally.orphans,
               pilots_max=tally.pilots_max, unknown_pilots=tally.unknown_pilots,
               seconds=time.monotonic() - started, problems=tally.problems)


def run_matrix(bench: Bench, base: Path, long: bool, only: list[str] | None = None,
               scale: float = 1.0) -> list[Row]:
    rows = []
    for case in CASES:
        reps = case.long if long else case.ci
        reps = max(1, round(reps * scale)) if reps else 0
        if reps and (not only or case.name in only):
            rows.append(run_case(bench, case, reps, base))
            log.info("fault case %s done: %s", case.name, rows[-1].cells())
    return rows
