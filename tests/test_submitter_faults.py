"""Faults on the submitting side, on the local backend with real pilots and real files.

Every case asserts the README's promise for each job: exactly one result, ok where it
should be, outputs exact, nothing run twice; and that a pass which could not do its
work says so (``PassReport.ok``, ``last_pass.json``, the exit code of ``--once``).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from galaxy_hpc_runner.backends import pilot_spec
from galaxy_hpc_runner.dropbox import collect
from galaxy_hpc_runner.dropbox import submitter as submitter_module
from galaxy_hpc_runner.dropbox.policy import stale_after
from galaxy_hpc_runner.errors import SchedulerError
from hpc_worker import protocol as p
from hpc_worker.states import JobState, Reason
from tests.sitekit import PROJECT, Site

KILLS = 30


def _once(site: Site) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "galaxy_hpc_runner.cli", "submitter", "--once", "--config",
         str(site.config_path)], cwd=PROJECT, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=str(PROJECT)))


def _assert_each_ran_once_and_ok(site: Site, uppers: list[str], sleepers: list[str]) -> None:
    ledger = site.ledger_lines()
    for name in uppers:
        job = site.result(name)["job"]
        assert job["status"] == "ok", (name, job)
        assert site.out(name + ".upper").read_text() == ("TEXT OF %s\n" % name).upper()
        assert ledger.count("run " + name) == 1, name
    for name in sleepers:
        job = site.result(name)["job"]
        assert job["status"] == "ok", (name, job)
        assert site.out(name + ".out").read_text() == "slept 0.3\n"
        assert ledger.count("completed " + name) == 1, name
    received = [e["job"] for e in site.spool.history_all() if e["to"] == JobState.RECEIVED]
    # never received twice (a second record); a kill between a record and its event line
    # loses that line, so a name may lack it
    assert len(received) == len(set(received)) and set(received) <= set(uppers + sleepers)


def test_a_submitter_killed_at_random_instants_loses_nothing_and_runs_nothing_twice(
        make_site: Any) -> None:
    site = make_site(pilot={"slots": "2"})
    rng = random.Random(20261127)
    uppers = ["up%02d" % i for i in range(10)]
    sleepers = ["zz%02d" % i for i in range(6)]
    for name in uppers:
        site.drop(name, site.upper_job(name, "text of %s\n" % name))
    for name in sleepers:
        site.drop(name, site.sleepy_job(name, 0.3))
    for kill in range(KILLS):
        proc = _once(site)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=rng.uniform(0.05, 1.0))
        proc.kill()
        proc.wait()
        if kill % 10 == 9 and rng.random() < 0.5:  # a few new jobs while it happens
            name = "up%02d" % len(uppers)
            uppers.append(name)
            site.drop(name, site.upper_job(name, "text of %s\n" % name))
    site.drain(uppers + sleepers, timeout=120)
    _assert_each_ran_once_and_ok(site, uppers, sleepers)
    leftovers = [n for n in os.listdir(site.root / "results") if n.startswith(".")]
    assert leftovers == []


def test_resubmitting_a_name_with_a_result_is_a_new_job(site: Site) -> None:
    site.drop("again", site.upper_job("again", "first\n"))
    sub = site.drain(["again"])
    assert site.out("again.upper").read_text() == "FIRST\n"
    sub.run_pass()
    assert site.ledger_lines().count("run again") == 1  # the same description: not rerun
    site.drop("again", site.upper_job("again", "second\n"))
    sub.run_pass()  # sets the old result aside, receives the new description
    site.drain(["again"], sub=sub)
    assert site.result("again")["job"]["status"] == "ok"
    assert site.out("again.upper").read_text() == "SECOND\n"
    assert site.ledger_lines().count("run again") == 2
    kept = list((site.root / "dropbox").glob("again.job.finished.replaced-*"))
    assert len(kept) == 1 and "status: ok" in kept[0].read_text()


def test_a_job_released_max_releases_times_ends_in_error_saying_what_to_declare(
        make_site: Any) -> None:
    site = make_site(pilot={"max_releases": "2"})
    site.drop("toolong", site.sleepy_job("toolong", 30))
    sub = site.submitter()
    for attempt in (1, 2):
        site.pass_until(lambda a=attempt: site.state("toolong") == "claimed"  # type: ignore[misc]
                        and len(site.spool.pilots()) == a, sub=sub)
        time.sleep(0.3)
        site.kill_pilots(signal.SIGTERM)  # a stopping pilot gives the job back
    site.drain(["toolong"], sub=sub)
    job = site.result("toolong")["job"]
    assert job["status"] == "error" and job["reason"] == Reason.RELEASED
    assert "2 time(s)" in job["message"] and "`walltime:`" in job["message"]
    assert site.ledger_lines().count("completed toolong") == 0
    assert len(site.spool.pilots()) == 2  # no third pilot for it


def _rogue_pilot(site: Site, pilot_id: str) -> subprocess.Popen[bytes]:
    """A pilot this spool never recorded (a submitter killed during its submission)."""
    argv = pilot_spec(site.cfg, pilot_id).argv
    args = argv[argv.index("--workspace"):]  # the pilot's options, run from this checkout
    with open(site.root / (pilot_id + ".out"), "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "hpc_worker", *args], cwd=site.root,
                                env=dict(os.environ, PYTHONPATH=str(PROJECT)),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def test_a_claim_of_a_dead_pilot_unknown_to_the_spool_is_reclaimed_within_the_bound(
        site: Site) -> None:
    site.drop("held", site.sleepy_job("held", 1))
    sub = site.submitter()
    sub._receive_all(submitter_module.PassReport())
    sub.stager.ensure_layout()
    rogue = _rogue_pilot(site, "pilot-rogue")
    try:
        rec = sub.spool.get("held")
        assert rec is not None
        sub._stage(rec, sub.stager.queue_view(), submitter_module.PassReport())
        claim = Path(site.cfg.workspace) / p.CLAIMED / p.claim_name(site.key("held"), "pilot-rogue")
        deadline = time.monotonic() + 30
        while "start held" not in site.ledger_lines() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert claim.exists()
        time.sleep(0.2)  # mid-run (a kill at the very instant of the start: see H1's guard)
    finally:
        rogue.kill()  # kill -9: it never reports or releases
        rogue.wait()
    sub.run_pass()
    assert site.state("held") == JobState.CLAIMED
    seen = time.monotonic()
    site.pass_until(lambda: site.state("held") != JobState.CLAIMED, sub=sub)
    cfg = site.cfg
    bound = stale_after(cfg.pilot.heartbeat, cfg.pilot.grace) + cfg.interval
    assert time.monotonic() - seen < bound + 2.0  # + the passes' own time
    site.drain(["held"], sub=sub)
    job = site.result("held")["job"]
    assert job["status"] == "ok" and job["attempts"] == 2
    assert site.ledger_lines().count("completed held") == 1
    assert site.spool.get("held").lost == 1  # type: ignore[union-attr]


def test_a_pass_killed_after_seeing_its_pilot_gone_still_reclaims_the_claim(
        site: Site) -> None:
    """The pilot record says gone, but the pass died before requeueing its job."""
    site.drop("victim", site.sleepy_job("victim", 1.5))
    sub = site.pass_until(lambda: site.state("victim") == JobState.CLAIMED)
    time.sleep(0.3)
    site.kill_pilots(signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(s.state.active for _, s in sub.pilots.refresh()) and time.monotonic() < deadline:
        time.sleep(0.05)  # refresh() records GONE; nothing requeues the claim in this pass
    site.drain(["victim"], sub=site.submitter())
    job = site.result("victim")["job"]
    assert job["status"] == "ok" and job["attempts"] == 2
    assert site.ledger_lines().count("completed victim") == 1


@pytest.mark.parametrize("round_", range(3))
def test_a_pilot_killed_after_its_result_line_before_its_done_marker_is_collected_once(
        site: Site, round_: int) -> None:
    """The instant between a result appended to the job's journal (and synced) and the
    claim's rename to done/: the pass that finds the pilot gone collects that result, with
    the outputs the pilot published before it, and does not run the job again."""
    site.drop("late", site.sleepy_job("late", 0.3))
    sub = site.pass_until(lambda: site.state("late") == JobState.CLAIMED)
    ws = Path(site.cfg.workspace)
    key = site.key("late")
    claim = next(n for n in os.listdir(ws / p.CLAIMED) if p.split_claim(n)[0] == key)
    deadline = time.monotonic() + 20
    while not (ws / p.DONE / key).exists() and time.monotonic() < deadline:
        time.sleep(0.01)  # no pass meanwhile: the result waits to be collected
    site.kill_pilots(signal.SIGKILL)
    os.rename(ws / p.DONE / key, ws / p.CLAIMED / claim)  # as if killed before the rename
    site.drain(["late"], sub=sub)
    job = site.result("late")["job"]
    assert job["status"] == "ok" and job["attempts"] == 1, job
    assert site.out("late.out").read_text() == "slept 0.3\n"
    assert site.ledger_lines().count("completed late") == 1


# -- a pass that cannot do its work says so ------------------------------------------------
def test_a_pass_that_cannot_reach_the_workspace_is_failed_everywhere(site: Site) -> None:
    site.drop("waits", site.upper_job("waits"))
    workspace = Path(site.cfg.workspace)
    workspace.rmdir()
    workspace.write_text("the HPC file system is gone")
    proc = _once(site)
    assert proc.wait(timeout=60) != 0
    last = json.loads((site.cfg.spool / "last_pass.json").read_text())
    assert last["ok"] is False and last["errors"]
    assert site.spool.pilots() == []
    workspace.unlink()
    workspace.mkdir()
    site.drain(["waits"])
    assert json.loads((site.cfg.spool / "last_pass.json").read_text())["ok"] is True
    assert site.result("waits")["job"]["status"] == "ok"


def test_with_the_scheduler_down_the_pass_is_failed_and_submits_nothing(
        make_site: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    site = make_site(scheduler={"min_pilots": "1"}, pilot={"idle_timeout": "60"})
    sub = site.submitter()
    assert sub.run_pass().ok and len(site.spool.pilots()) == 1

    def down(ids: list[str]) -> dict[str, Any]:
        raise SchedulerError("squeue: error: slurm_load_jobs: Unable to contact controller")

    monkeypatch.setattr(sub.backend, "status", down)
    site.drop("queued", site.upper_job("queued"))
    report = sub.run_pass()
    assert not report.ok and "scheduler could not be asked" in report.errors[-1]
    assert len(site.spool.pilots()) == 1
    assert json.loads((site.cfg.spool / "last_pass.json").read_text())["ok"] is False
    monkeypatch.undo()
    site.drain(["queued"], sub=sub)


def test_an_unreadable_spool_record_fails_the_pass_by_name_and_others_go_on(
        site: Site) -> None:
    site.drop("fine", site.upper_job("fine"))
    bad = site.cfg.spool / "jobs" / "broken.json"
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_text("{")
    sub = site.drain(["fine"])
    report = sub.run_pass()
    assert not report.ok and any(str(bad) in e and "move it" in e for e in report.errors)
    assert site.result("fine")["job"]["status"] == "ok"


# -- collection failures -----------------------------------------------------------------------
@pytest.fixture
def small_results(site: Site) -> Iterator[Path]:
    """The results directory on a 64 KiB file system (needs root, as in the CI container)."""
    results = site.root / "results"
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(results)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (not root)")
    try:
        yield results
    finally:
        subprocess.run(["umount", "-l", str(results)], check=False)


def _big_job(site: Site, name: str) -> str:
    site.drop(name, site.upper_job(name, "x" * (200 << 10)))
    return str(site.out(name + ".upper"))


def test_a_full_output_disk_keeps_the_hpc_outputs_and_retries(
        site: Site, small_results: Path) -> None:
    target = _big_job(site, "big")
    sub = site.submitter()
    report = site.pass_until(lambda: (site.spool.get("big").fetch_failures  # type: ignore[union-attr]
                                      >= 2), sub=sub, timeout=60)
    assert not site.result_path("big").exists()
    assert (Path(site.cfg.workspace) / p.DONE / site.key("big")).exists()  # kept there
    assert os.listdir(small_results) == []  # no target, no temp left
    last = json.loads((site.cfg.spool / "last_pass.json").read_text())
    assert last["ok"] is False and target in last["errors"][0]
    del report
    subprocess.run(["mount", "-o", "remount,size=1m", str(small_results)], check=True)
    site.drain(["big"], sub=sub)
    assert site.result("big")["job"]["status"] == "ok"
    assert site.out("big.upper").read_text() == "X" * (200 << 10)
    assert site.ledger_lines().count("run big") == 1


def test_collection_gives_up_past_both_bounds_naming_the_file(
        site: Site, small_results: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(collect, "FETCH_TRIES", 2)
    monkeypatch.setattr(collect, "FETCH_MAX_AGE", 0.0)
    target = _big_job(site, "gone")
    site.drain(["gone"], timeout=60)
    job = site.result("gone")["job"]
    assert job["status"] == "error" and job["reason"] == Reason.TRANSFER
    assert "after 2 tries" in job["message"] and target in job["message"]
    assert os.listdir(small_results) == []


def test_stale_temps_of_an_interrupted_fetch_are_removed_and_nothing_else(site: Site) -> None:
    ours = site.out(".tidy.upper.hpc-batch-tmp-99999-dead")
    foreign = [site.out(".tmp-users-own"), site.out(".other.upper.hpc-batch-tmp-1-aa")]
    for path in [ours, *foreign]:
        path.write_text("half a file")
    site.drop("tidy", site.upper_job("tidy"))
    site.drain(["tidy"])
    assert site.result("tidy")["job"]["status"] == "ok"
    assert not ours.exists() and all(path.exists() for path in foreign)


def test_a_pass_that_cannot_reach_the_head_node_over_ssh_is_failed(make_site: Any) -> None:
    import socket

    import paramiko

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    site = make_site()
    known_hosts = site.root / "known_hosts"
    key = paramiko.RSAKey.generate(1024)  # the host we would trust, were it there
    known_hosts.write_text("[127.0.0.1]:%d ssh-rsa %s\n" % (port, key.get_base64()))
    site.write_config(transport={"type": "ssh", "host": "127.0.0.1", "port": str(port),
                                 "timeout": "2", "known_hosts": str(known_hosts)})
    site.drop("far", site.upper_job("far"))
    started = time.monotonic()
    proc = _once(site)
    assert proc.wait(timeout=120) != 0
    last = json.loads((site.cfg.spool / "last_pass.json").read_text())
    assert last["ok"] is False and "127.0.0.1" in " ".join(last["errors"])
    assert site.state("far") == JobState.RECEIVED  # kept for the next pass
    assert time.monotonic() - started < 100


def test_cancels_racing_a_pilot_end_each_job_once_and_never_start_a_withdrawn_one(
        make_site: Any) -> None:
    site = make_site(pilot={"slots": "2"})
    rng = random.Random(7)
    names = ["race%02d" % i for i in range(20)]
    for name in names:
        site.drop(name, site.sleepy_job(name, 0.2))
    sub = site.submitter()
    sub.run_pass()  # staged, a pilot submitted: it claims while we cancel
    for name in rng.sample(names, len(names)):
        time.sleep(rng.uniform(0.0, 0.15))
        sub.cancel(name)
    site.drain(names, sub=sub)
    ledger = site.ledger_lines()
    for name in names:
        job = site.result(name)["job"]
        assert ledger.count("start " + name) <= 1, name
        if job["message"] == "Cancelled before it started":
            assert "start " + name not in ledger, name
        elif job["status"] == "ok":
            assert ledger.count("completed " + name) == 1, name
        else:
            assert job["reason"] == Reason.CANCELLED, (name, job)


# -- the same on a real Slurm behind a real sshd ----------------------------------------------
@pytest.mark.slurm
@pytest.mark.ssh
def test_on_slurm_a_claim_whose_killed_pilot_no_pass_saw_go_is_reclaimed(
        tmp_path: Path, ssh_server: Any) -> None:
    """kill -9 of the pilot; the pass that saw it gone died before requeueing its job."""
    from tests.test_hpc_slurm import SlurmSite, hpc_sections

    site = SlurmSite(tmp_path, **hpc_sections(ssh_server, pilot={
        "heartbeat": "1", "grace": "2", "idle_timeout": "5"}))
    try:
        site.drop("held", site.sleepy_job("held", 4))
        sub = site.pass_until(lambda: site.state("held") == JobState.CLAIMED, timeout=120)
        pilot = site.spool.pilots()[0]
        beat = Path(site.cfg.workspace) / p.PILOTS / (pilot.pilot_id + p.HEARTBEAT)
        deadline = time.monotonic() + 30
        while not beat.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        os.kill(json.loads(beat.read_text())["pid"], signal.SIGKILL)  # the node is this host
        deadline = time.monotonic() + 60
        while any(s.state.active for p_, s in sub.pilots.refresh() if p_.pilot_id ==
                  pilot.pilot_id) and time.monotonic() < deadline:
            time.sleep(0.2)  # only refresh(): it records the pilot gone, nothing requeues
        site.drain(["held"], sub=site.submitter(), timeout=180)
        job = site.result("held")["job"]
        assert job["status"] == "ok" and site.ledger_lines().count("completed held") == 1
        assert site.spool.get("held").lost == 1  # type: ignore[union-attr]
    finally:
        site.close()


def test_a_job_longer_than_any_pilot_ends_in_error_instead_of_rerunning_forever(
        make_site: Any) -> None:
    """No declared walltime, 4 s pilots, a 30 s job: released at each pilot's end, counted."""
    site = make_site(pilot={"walltime": "4", "idle_timeout": "1", "max_releases": "2",
                            "grace": "1"})
    site.drop("huge", site.sleepy_job("huge", 30))
    site.drain(["huge"], timeout=60)
    job = site.result("huge")["job"]
    assert job["status"] == "error" and job["reason"] == Reason.RELEASED, job
    assert "`walltime:`" in job["message"]
    assert site.ledger_lines().count("completed huge") == 0
    assert len(site.spool.pilots()) <= 3


def test_a_kill_between_a_held_jobs_marker_and_its_first_record_runs_it_once(
        site: Site) -> None:
    """What a kill leaves between staging a job received in the same pass and writing its
    first record (``Spool.create(hold=True)``): its HPC files and ready marker, no spool
    record, NAME.job still in the dropbox. The next submitter receives it again, keeps
    what is staged, and the job runs once."""
    site.drop("held", site.upper_job("held", "text of held\n"))
    first = site.submitter()
    first._manage_pilots = lambda *_a, **_k: None  # type: ignore[method-assign]  # no pilot yet
    assert first.run_pass().staged == 1
    workspace = str(site.root / "hpc/workspace")
    assert os.path.exists(p.marker(workspace, p.READY, site.key("held")))
    (site.cfg.spool / "jobs" / "held.json").unlink()  # never written, as after the kill
    (site.cfg.spool / "events.jsonl").write_text("")  # nor its event lines
    site.drain(["held"])
    assert site.result("held")["job"]["status"] == "ok"
    assert site.out("held.upper").read_text() == "TEXT OF HELD\n"
    assert site.ledger_lines().count("run held") == 1
    states = [e["to"] for e in site.spool.history("held")]
    assert states.count(JobState.RECEIVED) == 1 and states[-1] == JobState.FINISHED


def test_a_galaxy_cancel_after_such_a_kill_withdraws_the_staged_job(site: Site) -> None:
    """Galaxy's batcher consumes a description it is asked to cancel when the spool has no
    record of it ("not received yet"); after the kill above it must not, since the job is
    staged: it waits for the next pass to receive the job again, then withdraws it."""
    from galaxy_hpc_runner.galaxy.batcher import Batcher

    site.drop("heldc", site.sleepy_job("heldc", 30))
    first = site.submitter()
    first._manage_pilots = lambda *_a, **_k: None  # type: ignore[method-assign]  # no pilot yet
    assert first.run_pass().staged == 1
    (site.cfg.spool / "jobs" / "heldc.json").unlink()  # the record a kill left unwritten
    batcher = Batcher(site.submitter(), interval=0.2)
    batcher.request_cancel("heldc")
    batcher.start()
    try:
        deadline = time.monotonic() + 60
        while not site.spool.has_finished("heldc") and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        batcher.stop()
    rec = site.spool.get("heldc")
    assert rec is not None and rec.state == JobState.FINISHED, rec
    assert rec.status == "error" and "Cancelled" in rec.message, rec
    assert not os.listdir(site.root / "hpc/workspace" / p.READY)  # nothing left to run
