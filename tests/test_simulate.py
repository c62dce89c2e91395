"""hpc-batch simulate: known-answer cases, the real policy code, sweeps, the CLI, the PNG."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from galaxy_hpc_runner.dropbox import policy
from galaxy_hpc_runner.dropbox.policy import resubmit_ahead
from galaxy_hpc_runner.simulate import engine as simulate_engine
from galaxy_hpc_runner.simulate.cli import (
    label,
    main,
    parse_sweep,
    policies,
    run_study,
)
from galaxy_hpc_runner.simulate.engine import simulate_baseline, simulate_pilots
from galaxy_hpc_runner.simulate.model import (
    Job,
    Policy,
    Site,
    Traffic,
    check_policy,
    generate,
    parse_dist,
)
from galaxy_hpc_runner.simulate.report import percentile, table, write_png
from hpc_worker import decisions

W, R, IDLE = 3600.0, 600.0, 300.0  # fixed queue wait, tool runtime, idle_timeout
SITE = Site(wait=parse_dist("fixed:1h"), interval=60.0)


def burst(n: int, at: float = 0.0, walltime: float | None = None) -> list[Job]:
    return [Job(at, R, walltime) for _ in range(n)]


def run_pilots(jobs: list[Job], site: Site = SITE, **kw: float) -> simulate_engine.Outcome:
    pol = Policy(**{"idle_timeout": IDLE, **kw})  # type: ignore[arg-type]
    return simulate_pilots(jobs, pol, site, random.Random(0))


# -- known answers ------------------------------------------------------------------------
def test_one_burst_one_slot_latency_is_wait_plus_runtimes() -> None:
    out = run_pilots(burst(5))
    assert out.latencies == [W + i * R for i in range(1, 6)]
    assert sum(out.latencies) / 5 == W + 3 * R
    assert out.submissions == 1
    assert out.busy == 5 * R
    assert out.idle == pytest.approx(IDLE)  # one slot held idle_timeout after the last run
    assert out.makespan == W + 5 * R
    assert out.released == out.failed == out.rejected == 0


def test_two_slots_run_in_pairs_and_both_idle_at_the_end() -> None:
    out = run_pilots(burst(4), slots=2)
    assert out.latencies == [W + R, W + R, W + 2 * R, W + 2 * R]
    assert out.submissions == 1
    assert out.idle == pytest.approx(2 * IDLE)


def test_baseline_without_contention_is_the_wait() -> None:
    out = simulate_baseline(burst(5), SITE, random.Random(0))
    assert out.latencies == [W + R] * 5
    assert out.submissions == 5
    assert out.idle == 0 and out.held == 5 * R


def test_baseline_with_user_limit_runs_one_at_a_time() -> None:
    site = Site(wait=parse_dist("fixed:1h"), user_limit=1)
    out = simulate_baseline(burst(3), site, random.Random(0))
    assert out.latencies == [W + R, W + 2 * R, W + 3 * R]


def test_far_apart_one_offs_pay_the_wait_each() -> None:
    out = run_pilots([Job(0.0, R), Job(10 * 86400.0, R)])
    assert out.latencies == [W + R, W + R]
    assert out.submissions == 2
    assert out.idle == pytest.approx(2 * IDLE)


def test_long_idle_timeout_keeps_the_pilot_for_the_next_one_off() -> None:
    day = 86400.0
    out = run_pilots([Job(0.0, R), Job(day, R)], idle_timeout=2 * day, walltime=5 * day)
    assert out.latencies == [W + R, R]
    assert out.submissions == 1
    assert out.held == pytest.approx(day + R + 2 * day - W)
    assert out.idle == pytest.approx(out.held - 2 * R)


def test_pilot_walltime_kills_and_requeues_an_undeclared_run() -> None:
    out = run_pilots(burst(3), walltime=1500.0)
    # pilot 1 (3600..5100) finishes runs 1 and 2; run 3 starts at 4800 and is killed at
    # 5100; the 5100 pass submits pilot 2, which runs it from 8700
    assert out.released == 1
    assert out.submissions == 2
    assert out.latencies == [W + R, W + 2 * R, 5100 + W + R]
    assert out.busy == 3 * R + 300  # the killed run's 300 s count as busy, not idle


def test_declared_walltime_is_not_started_when_it_does_not_fit() -> None:
    out = run_pilots(burst(3, walltime=R), walltime=1500.0, idle_timeout=200.0)
    # run 3 (600 s) does not fit the 300 s left at 4800: pilot 1 idles out at 5000 and
    # the 5040 pass submits pilot 2
    assert out.released == 0
    assert out.submissions == 2
    assert out.latencies == [W + R, W + 2 * R, 5040 + W + R]


def test_runs_declaring_more_than_the_pilot_walltime_are_rejected() -> None:
    out = run_pilots(burst(2, walltime=7200.0), walltime=3600.0 + 1)
    assert out.rejected == 2 and out.latencies == [] and out.submissions == 0


def test_resubmit_ahead_overlaps_the_next_wait_with_the_current_pilot() -> None:
    jobs = burst(18, walltime=R)  # 3 h of work, 2 h pilots, 1 h waits
    without = run_pilots(jobs, walltime=7200.0)
    ahead = run_pilots(jobs, walltime=7200.0, lead=3600.0)
    assert max(without.latencies) == 18000.0
    assert max(ahead.latencies) == 14400.0
    assert without.submissions == ahead.submissions == 2


def test_a_run_longer_than_any_pilot_fails_at_its_first_cut_like_the_submitter() -> None:
    out = run_pilots([Job(0.0, 5000.0)], walltime=1000.0)  # it had a whole pilot: no rerun
    assert out.failed == 1 and out.released == 1 and out.latencies == []
    assert out.submissions == 1


def test_max_releases_caps_the_reruns_of_a_run_cut_off_late_in_its_pilot() -> None:
    jobs = [Job(0.0, 600.0), Job(0.0, 800.0)]  # the second starts 600 s into a 1000 s pilot
    out = run_pilots(jobs, walltime=1000.0)
    assert out.released == 1 and out.failed == 0
    # pilot 1 ends at W + 1000; the next pass (every 60 s) submits pilot 2, W later it runs
    assert out.latencies == [W + 600.0, 4620.0 + W + 800.0]
    capped = run_pilots(jobs, Site(wait=parse_dist("fixed:1h"), interval=60.0,
                                   max_releases=1), walltime=1000.0)
    assert capped.released == 1 and capped.failed == 1 and len(capped.latencies) == 1


def test_the_simulator_requeues_by_the_submitters_own_release_rule(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Both ask policy.may_requeue_released through the module: patch it, both follow."""
    asked: list[tuple[int, int]] = []

    def never(released: int, max_releases: int) -> bool:
        asked.append((released, max_releases))
        return False

    monkeypatch.setattr(policy, "may_requeue_released", never)
    out = run_pilots([Job(0.0, 5000.0)], walltime=1000.0)
    assert asked == [(1, 3)]
    assert out.failed == 1 and out.released == 1


# -- the real policy code -----------------------------------------------------------------
def test_the_engine_uses_the_real_decision_functions() -> None:
    engine = vars(simulate_engine)
    assert engine["shared"] is policy  # pilots_to_submit, resubmit_ahead, may_requeue_released
    assert engine["job_fits"] is decisions.job_fits
    assert engine["should_stop"] is decisions.should_stop


@pytest.mark.parametrize("backlog,remaining,pending,lead,expected", [
    (5, [100.0], 0, 0.0, 0),  # off
    (0, [100.0], 0, 3600.0, 0),  # nothing left to do
    (5, [100.0], 0, 3600.0, 1),  # expiring: replace it
    (5, [100.0], 1, 3600.0, 0),  # a queued pilot already replaces it
    (5, [7200.0], 0, 3600.0, 0),  # not expiring yet
    (5, [100.0, 200.0], 0, 3600.0, 1),  # the backlog deserves one pilot only
])
def test_resubmit_ahead(backlog: int, remaining: list[float], pending: int, lead: float,
                        expected: int) -> None:
    assert resubmit_ahead(backlog, remaining, pending, lead) == expected


def test_resubmit_ahead_respects_backlog_per_pilot() -> None:
    assert resubmit_ahead(40, [10.0, 10.0, 10.0], 0, 60.0, max_pilots=4,
                          backlog_per_pilot=20) == 2


# -- inputs -------------------------------------------------------------------------------
def test_distributions_parse_and_sample() -> None:
    rng = random.Random(1)
    assert parse_dist("fixed:30m").sample(rng) == 1800.0
    assert parse_dist("90m").sample(rng) == 5400.0
    assert 12 * 3600 <= parse_dist("uniform:12h:24h").sample(rng) <= 24 * 3600
    logn = [parse_dist("lognormal:10m:0.5").sample(rng) for _ in range(2001)]
    assert 500 < percentile(logn, 50) < 700
    exp = [parse_dist("exp:1h").sample(rng) for _ in range(4000)]
    assert 3300 < sum(exp) / len(exp) < 3900
    for bad in ("uniform:2h:1h", "lognormal:0:1", "poisson:3", "uniform:1h", ""):
        with pytest.raises(ValueError):
            parse_dist(bad)


def test_traffic_is_reproducible_and_sorted() -> None:
    traffic = Traffic(days=3.0)
    a = generate(traffic, random.Random("x"))
    assert a == generate(traffic, random.Random("x"))
    assert [j.arrival for j in a] == sorted(j.arrival for j in a)
    assert all(j.arrival >= 0 for j in a) and all(j.runtime >= 1 for j in a)
    only_bursts = Traffic(days=3.0, oneoff_every=None, burst_every=parse_dist("fixed:1d"),
                          burst_size=parse_dist("fixed:10"), job_walltime="exact")
    jobs = generate(only_bursts, random.Random(2))
    assert len(jobs) == 20 and all(j.walltime == j.runtime for j in jobs)


def test_policy_checks_and_sweep_parsing() -> None:
    with pytest.raises(ValueError):
        check_policy(Policy(walltime=600.0, idle_timeout=600.0))
    axes = parse_sweep(["slots=1,2,4", "idle-timeout=10m,1h"])
    assert axes == [("slots", [1, 2, 4]), ("idle_timeout", [600.0, 3600.0])]
    pols = policies(Policy(), axes)
    assert len(pols) == 6 and pols[-1].slots == 4 and pols[-1].idle_timeout == 3600.0
    assert label(pols[-1], ["slots", "idle_timeout"]) == "slots=4 idle_timeout=1h"
    for bad in (["nope=1"], ["slots"], ["slots=0"], ["walltime=soon"]):
        with pytest.raises(ValueError):
            parse_sweep(bad)


# -- studies, the CLI and the outputs ----------------------------------------------------
def test_sweep_study_has_one_row_per_policy_and_the_baseline() -> None:
    traffic = Traffic(days=2.0)
    pols = policies(Policy(), parse_sweep(["slots=1,4"]))
    rows = run_study(traffic, Site(), pols, ["one", "four"], seed=3, repeat=2)
    assert [r.label for r in rows] == ["one", "four", "one job per run"]
    jobs = {len(r.outcome.latencies) for r in rows}
    assert len(jobs) == 1 and jobs.pop() > 0  # the same traffic for everyone
    s = [r.summary() for r in rows]
    assert s[-1]["submissions"] == s[-1]["jobs"]
    assert s[1]["latency_h"]["mean"] <= s[0]["latency_h"]["mean"]  # more slots drain faster
    text = table(s)
    assert "one job per run" in text and "p95 h" in text and len(text.splitlines()) == 5


def test_main_prints_a_table_and_writes_json(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    assert main(["--days", "1", "--sweep", "idle_timeout=5m,2h", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "idle_timeout=5m" in printed and "idle_timeout=2h" in printed
    data = json.loads(out.read_text())
    assert len(data["results"]) == 3 and data["results"][0]["params"]["idle_timeout"] == 300.0


def test_cli_end_to_end_with_png(tmp_path: Path) -> None:
    png = tmp_path / "s.png"
    cmd = [sys.executable, "-c", "from galaxy_hpc_runner.cli import main; raise SystemExit(main())",
           "simulate", "--days", "2", "--slots", "2", "--seed", "7", "--png", str(png)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "one job per run" in done.stdout and "wrote %s" % png in done.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    helped = subprocess.run(cmd[:4] + ["--help"], capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0 and "--sweep" in helped.stdout


def test_png_without_matplotlib_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(RuntimeError, match="matplotlib"):
        write_png(str(tmp_path / "x.png"), [])


def test_bad_arguments_exit_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--wait", "sometimes"])
    assert "--wait" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--walltime", "1h", "--idle-timeout", "2h"])


def test_a_week_of_traffic_simulates_in_seconds() -> None:
    traffic = Traffic(days=7.0)
    pols = policies(Policy(), parse_sweep(["slots=1,2,4", "idle_timeout=5m,6h"]))
    started = time.perf_counter()
    rows = run_study(traffic, Site(), pols, [str(i) for i in range(len(pols))], seed=1)
    elapsed = time.perf_counter() - started
    print("a week of traffic, %d policies + baseline, %d runs each: %.2fs"
          % (len(pols), len(rows[0].outcome.latencies), elapsed))
    assert elapsed < 30  # sanity only; speed goals belong in bench/


def test_a_run_overrunning_its_declared_walltime_fails_in_both_models() -> None:
    jobs = [Job(0.0, 2 * R, R), Job(0.0, R, R)]
    out = run_pilots(jobs)
    assert out.failed == 1 and out.latencies == [W + 2 * R] and out.busy == 2 * R
    base = simulate_baseline(jobs, SITE, random.Random(0))
    assert base.failed == 1 and base.latencies == [W + R] and base.held == 2 * R
