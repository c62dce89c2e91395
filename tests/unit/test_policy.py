"""The one retry/release policy, and the submitter's decisions on real files (no pilot runs).

The submitter and the simulator call the policy through the module
(``policy.may_requeue_released(...)``), so patching it there changes both.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from galaxy_hpc_runner.dropbox import policy
from galaxy_hpc_runner.dropbox import submitter as submitter_module
from galaxy_hpc_runner.dropbox.submitter import PassReport, Submitter
from galaxy_hpc_runner.simulate import engine
from hpc_worker import protocol as p
from hpc_worker.records import Heartbeat, RunLine
from hpc_worker.states import HeartbeatState, JobState, Reason
from tests.sitekit import Site


# -- the pure rules -------------------------------------------------------------------------
@pytest.mark.parametrize("count,cap,allowed", [(1, 3, True), (2, 3, True), (3, 3, False),
                                               (1, 1, False), (4, 3, False)])
def test_requeue_while_fewer_than_the_cap_this_time_included(
        count: int, cap: int, allowed: bool) -> None:
    assert policy.may_requeue_lost(count, cap) is allowed
    assert policy.may_requeue_released(count, cap) is allowed


def test_stale_after_is_three_heartbeats_plus_the_grace() -> None:
    assert policy.stale_after(10.0, 10.0) == 40.0
    assert policy.stale_after(0.5, 2.0) == 3.5


@pytest.mark.parametrize("failures,age,allowed", [(1, 0.0, True), (4, 7200.0, True),
                                                  (5, 10.0, True), (5, 3600.0, False),
                                                  (9, 9999.0, False)])
def test_collection_is_retried_until_both_bounds_are_reached(
        failures: int, age: float, allowed: bool) -> None:
    assert policy.may_retry_collect(failures, age, 5, 3600.0) is allowed


def test_the_messages_say_why_and_what_to_declare() -> None:
    text = policy.released_message(3, 3, "pilot-x")
    assert "3 time(s)" in text and "max_releases = 3" in text and "pilot-x" in text
    assert "`walltime:`" in text and "[pilot] walltime" in text
    assert "max_attempts = 2" in policy.lost_message(2, 2, "pilot-y", "ended: NODE_FAIL")


def test_the_submitter_and_the_simulator_share_the_policy_module() -> None:
    assert vars(submitter_module)["policy"] is policy
    assert vars(engine)["shared"] is policy
    for name in ("pilots_to_submit", "resubmit_ahead", "may_requeue_lost",
                 "may_requeue_released", "release_verdict", "may_start_again"):
        assert name not in vars(submitter_module) and name not in vars(engine), name


# -- the submitter's decisions, on a real site with no pilot -----------------------------------
@pytest.fixture
def site(tmp_path: Path) -> Site:
    return Site(tmp_path, pilot={"max_releases": "2", "max_attempts": "2"})


def _staged(site: Site, name: str) -> Submitter:
    """A job received and staged by the real code; no pilot is submitted."""
    site.drop(name, site.sleepy_job(name, 1))
    sub = Submitter(site.cfg)
    report = PassReport()
    sub._receive_all(report)
    sub.stager.ensure_layout()
    rec = sub.spool.get(name)
    assert rec is not None
    sub._stage(rec, sub.stager.queue_view(), report)
    assert sub.spool.get(name).state is JobState.STAGED  # type: ignore[union-attr]
    return sub


def _workspace(site: Site) -> Path:
    return Path(site.cfg.workspace)


def _claim(site: Site, name: str, pilot: str) -> None:
    ws = _workspace(site)
    key = site.key(name)
    os.rename(ws / p.READY / key, ws / p.CLAIMED / p.claim_name(key, pilot))


def _release(site: Site, name: str, pilot: str) -> None:
    """What a stopping pilot does: a release line, then the claim back to ready/."""
    ws, key = _workspace(site), site.key(name)
    p.append_jsonl(str(ws / p.JOBS / key / p.RUNS), RunLine(
        pilot=pilot, released=p.now_iso(), reason="walltime warning", elapsed=1.0).to_json())
    os.rename(ws / p.CLAIMED / p.claim_name(key, pilot), ws / p.READY / key)


def _follow(sub: Submitter, name: str) -> None:
    rec = sub.spool.get(name)
    assert rec is not None
    sub._follow(rec, sub.stager.queue_view(), PassReport())


def test_releases_are_counted_and_past_the_cap_the_job_ends_in_error(site: Site) -> None:
    sub = _staged(site, "long")
    for number, pilot in enumerate(("pilot-a", "pilot-b"), 1):
        _claim(site, "long", pilot)
        _follow(sub, "long")
        assert sub.spool.get("long").state is JobState.CLAIMED  # type: ignore[union-attr]
        _release(site, "long", pilot)
        _follow(sub, "long")
        if number == 1:
            assert sub.spool.get("long").state is JobState.STAGED  # type: ignore[union-attr]
    job = site.result("long")["job"]
    assert job["status"] == "error" and job["reason"] == Reason.RELEASED
    assert "2 time(s)" in job["message"] and "walltime" in job["message"]
    ws = _workspace(site)
    assert not (ws / p.READY / site.key("long")).exists()  # out of the queue for good
    assert not (ws / p.JOBS / site.key("long")).exists()


def test_a_patched_release_rule_changes_the_submitter_too(
        site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[int, int]] = []

    def never(released: int, max_releases: int) -> bool:
        asked.append((released, max_releases))
        return False

    monkeypatch.setattr(policy, "may_requeue_released", never)
    sub = _staged(site, "once")
    _claim(site, "once", "pilot-a")
    _follow(sub, "once")
    _release(site, "once", "pilot-a")
    _follow(sub, "once")
    assert asked == [(1, 2)]
    assert site.result("once")["job"]["reason"] == Reason.RELEASED


def _silent_pilot(site: Site, sub: Submitter, name: str, pilot: str, beat_age: float) -> None:
    _claim(site, name, pilot)
    _follow(sub, name)
    if beat_age >= 0:
        p.write_json(p.pilot_path(site.cfg.workspace, pilot, p.HEARTBEAT), Heartbeat(
            pilot=pilot, state=HeartbeatState.RUNNING, epoch=time.time() - beat_age).to_json())
    rec = sub.spool.get(name)
    assert rec is not None
    rec.updated = "2000-01-01T00:00:00.000+00:00"  # the claim was seen long ago
    p.write_json(str(sub.spool.jobs / (name + ".json")), rec.__dict__)


@pytest.mark.parametrize("beat_age", [-1.0, 3600.0])  # no heartbeat at all; a stale one
def test_a_claim_of_a_silent_unknown_pilot_is_reclaimed(site: Site, beat_age: float) -> None:
    sub = _staged(site, "orphan")
    _silent_pilot(site, sub, "orphan", "pilot-ghost", beat_age)
    view = sub.stager.queue_view()
    dead = sub.liveness.dead_holders(view, [], sub.spool)
    assert list(dead) == ["pilot-ghost"] and "silent for" in dead["pilot-ghost"]
    assert sub.pilot_steps.reclaim("pilot-ghost", view, False, dead["pilot-ghost"]) == 1
    rec = sub.spool.get("orphan")
    assert rec is not None and rec.state is JobState.STAGED and rec.lost == 1
    assert (_workspace(site) / p.READY / site.key("orphan")).exists()


def test_a_claim_of_a_pilot_with_a_fresh_heartbeat_is_left_alone(site: Site) -> None:
    sub = _staged(site, "busy")
    _silent_pilot(site, sub, "busy", "pilot-other-server", beat_age=0.0)
    assert sub.liveness.dead_holders(sub.stager.queue_view(), [], sub.spool) == {}


def test_a_job_that_lost_its_pilot_max_attempts_times_ends_in_error(site: Site) -> None:
    sub = _staged(site, "doomed")
    for attempt in (1, 2):
        _silent_pilot(site, sub, "doomed", "pilot-%d" % attempt, beat_age=3600.0)
        view = sub.stager.queue_view()
        sub.pilot_steps.reclaim("pilot-%d" % attempt, view, False, "silent")
    job = site.result("doomed")["job"]
    assert job["reason"] == Reason.LOST and "lost its pilot 2 time(s)" in job["message"]
    assert not list((_workspace(site) / p.CLAIMED).iterdir())


def test_a_withdrawal_cut_short_by_a_kill_ends_as_decided_not_rerun(site: Site) -> None:
    sub = _staged(site, "w")
    rec = sub.spool.get("w")
    assert rec is not None
    sub.spool.note(rec, withdrawn=str(Reason.CANCELLED), message="Cancelled before it started")
    assert sub.stager.withdraw("w")  # ... and the pass dies here, before the result
    _follow(Submitter(site.cfg), "w")
    job = site.result("w")["job"]
    assert job["reason"] == Reason.CANCELLED and job["message"] == "Cancelled before it started"


def test_last_pass_records_a_failed_pass(site: Site) -> None:
    sub = Submitter(site.cfg)
    workspace = Path(site.cfg.workspace)
    workspace.rmdir()
    workspace.write_text("not a directory")  # the HPC side cannot be used at all
    report = sub.run_pass()
    assert not report.ok and "on the HPC side" in report.errors[0]
    last = json.loads((site.cfg.spool / "last_pass.json").read_text())
    assert last["ok"] is False and last["errors"] == report.errors


@pytest.mark.parametrize("needed,walltime,allowed", [
    (None, 60.0, True),  # nothing learned yet
    (10.0, 86400.0, True),  # cut short by a scancel early on: plenty of room
    (86400.0 - 200.0, 86400.0, True),  # fits with the minute of slack
    (86400.0 - 70.0, 86400.0, False),  # ran (nearly) a whole pilot: no pilot takes it
    (3.6, 4.0, False),  # the 4 s test pilot: usable 3.6 s
])
def test_a_released_job_starts_again_only_if_a_fresh_pilot_could_take_it(
        needed: float | None, walltime: float, allowed: bool) -> None:
    assert policy.may_start_again(needed, walltime, grace=10.0) is allowed


def test_usable_time_is_the_pilots_own_release_point() -> None:
    from hpc_worker.decisions import release_margin

    assert policy.usable_time(3600.0, 10.0) == 3600.0 - release_margin(3600.0, 10.0)
    text = policy.never_fits_message(3.6, 4.0, 1.0)
    assert "no pilot can finish it" in text and "`walltime:`" in text
