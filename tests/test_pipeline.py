"""The whole pipeline on the local backend: dropbox -> spool -> one pilot -> results."""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
import yaml

from galaxy_hpc_runner.dropbox import receive
from tests.sitekit import PROJECT, Site


def test_burst_of_50_runs_under_one_pilot_with_correct_outputs(make_site: Any) -> None:
    site = make_site(pilot={"slots": "2"})
    names = ["burst%02d" % i for i in range(50)]
    for i, name in enumerate(names):
        site.drop(name, site.upper_job(name, "item %d of the burst\n" % i))
    site.drain(names, timeout=120)
    assert len(site.spool.pilots()) == 1
    for i, name in enumerate(names):
        job = site.result(name)["job"]
        assert job["status"] == "ok", job
        assert job["rc"] == 0 and job["attempts"] == 1
        assert job["pilot"] == site.spool.pilots()[0].scheduler_id
        assert site.out(name + ".upper").read_text() == "ITEM %d OF THE BURST\n" % i
    assert sorted(site.ledger_lines()) == sorted("run " + n for n in names)
    gpus = {site.result(n)["job"]["stdout"].split()[-1] for n in names}
    assert gpus == {"0", "1"}  # two slots, each on its own GPU


def test_result_of_a_failing_tool_carries_its_stderr_and_rc(site: Site) -> None:
    site.drop("bad", {"script": "fail", "args": {"code": 3}})
    site.drain(["bad"])
    job = site.result("bad")["job"]
    assert job["status"] == "error"
    assert job["rc"] == 3
    assert job["message"] == "Remote command failed with return code 3"
    assert job["stderr"].strip() == "ERROR: Input file is the wrong format"


def test_missing_output_is_an_error_and_no_file_appears(site: Site) -> None:
    site.drop("lazy", {"script": "no_output", "output_map": {"output": str(site.out("x"))}})
    site.drain(["lazy"])
    job = site.result("lazy")["job"]
    assert job["status"] == "error" and "did not produce: x" in job["message"]
    assert not site.out("x").exists()


def test_late_arrival_is_drained_by_the_running_pilot(site: Site) -> None:
    site.drop("first", site.sleepy_job("first", 1))
    sub = site.pass_until(lambda: site.state("first") == "claimed")
    site.drop("late", site.upper_job("late"))
    site.drain(["first", "late"], sub=sub)
    assert len(site.spool.pilots()) == 1
    assert site.result("late")["job"]["pilot"] == site.result("first")["job"]["pilot"]


def test_concurrent_submitter_passes_never_double_submit(site: Site) -> None:
    names = ["c%02d" % i for i in range(20)]
    for name in names:
        site.drop(name, site.upper_job(name))
    argv = [sys.executable, "-m", "galaxy_hpc_runner.cli", "submitter", "--once",
            "--config", str(site.config_path)]
    procs = [subprocess.Popen(argv, cwd=PROJECT, stderr=subprocess.PIPE) for _ in range(4)]
    for proc in procs:
        assert proc.wait(timeout=60) == 0
    assert len(site.spool.pilots()) == 1
    site.drain(names)
    assert len(site.spool.pilots()) == 1
    received = [e for e in site.spool.history_all() if e["to"] == "received"]
    assert sorted(e["job"] for e in received) == names  # each received exactly once
    assert sorted(site.ledger_lines()) == sorted("run " + n for n in names)


def test_sigkilled_pilot_job_reruns_once_and_ends_ok(site: Site) -> None:
    site.drop("victim", site.sleepy_job("victim", 1.5))
    sub = site.pass_until(lambda: site.state("victim") == "claimed")
    time.sleep(0.3)
    site.kill_pilots(signal.SIGKILL)
    site.drain(["victim"], sub=sub)
    job = site.result("victim")["job"]
    assert job["status"] == "ok" and job["attempts"] == 2
    assert site.ledger_lines().count("completed victim") == 1
    assert len(site.spool.pilots()) == 2
    assert site.spool.get("victim").lost == 1  # type: ignore[union-attr]


def test_a_stop_signal_releases_the_running_job_for_the_next_pilot(site: Site) -> None:
    site.drop("warned", site.sleepy_job("warned", 2))
    sub = site.pass_until(lambda: site.state("warned") == "claimed")
    time.sleep(0.3)
    site.kill_pilots(signal.SIGTERM)
    site.drain(["warned"], sub=sub)
    job = site.result("warned")["job"]
    assert job["status"] == "ok" and job["attempts"] == 2
    assert site.ledger_lines().count("completed warned") == 1
    assert site.spool.get("warned").lost == 0  # type: ignore[union-attr]
    released = [e for e in site.spool.history("warned") if "released" in e.get("message", "")]
    assert released


def test_a_walltime_warning_lets_a_job_that_fits_finish(site: Site) -> None:
    """SIGUSR1 (the scheduler's warning) drains the pilot: the job is not cut short."""
    site.drop("fits", site.sleepy_job("fits", 2))
    sub = site.pass_until(lambda: site.state("fits") == "claimed")
    time.sleep(0.3)
    site.kill_pilots(signal.SIGUSR1)
    site.drain(["fits"], sub=sub)
    job = site.result("fits")["job"]
    assert job["status"] == "ok"
    assert site.ledger_lines().count("completed fits") == 1


def test_job_longer_than_the_pilots_remaining_time_waits_for_a_fresh_pilot(
        make_site: Any) -> None:
    site = make_site(pilot={"walltime": "6", "idle_timeout": "1"})
    site.drop("a_first", site.sleepy_job("a_first", 2.5, walltime=4))
    site.drop("b_long", site.sleepy_job("b_long", 0.1, walltime=5))
    site.drain(["a_first", "b_long"], timeout=60)
    first, second = site.result("a_first")["job"], site.result("b_long")["job"]
    assert first["status"] == second["status"] == "ok"
    assert first["pilot"] != second["pilot"]
    assert second["attempts"] == 1
    log = (site.root / "hpc/workspace/pilots").glob("*.log")
    assert any("(%s) walltime 5.0s exceeds" % site.key("b_long") in f.read_text() for f in log)


def test_job_that_keeps_losing_its_pilot_ends_in_error(make_site: Any) -> None:
    site = make_site(pilot={"max_attempts": "2"})
    site.drop("doomed", site.sleepy_job("doomed", 30))
    sub = site.submitter()
    for attempt in (1, 2):
        site.pass_until(lambda a=attempt: site.state("doomed") == "claimed"  # type: ignore[misc]
                        and len(site.spool.pilots()) == a, sub=sub)
        site.kill_pilots(signal.SIGKILL)
    site.drain(["doomed"], sub=sub)
    job = site.result("doomed")["job"]
    assert job["status"] == "error"
    assert job["reason"] == "lost"
    assert "lost its pilot 2 time(s)" in job["message"]
    assert not site.out("doomed.out").exists()
    assert site.ledger_lines().count("completed doomed") == 0


def test_job_exceeding_its_own_walltime_is_killed(site: Site) -> None:
    site.drop("slow", site.sleepy_job("slow", 30, walltime=1))
    site.drain(["slow"], timeout=30)
    job = site.result("slow")["job"]
    assert job["status"] == "error" and job["reason"] == "walltime"
    assert not site.out("slow.out").exists()


def test_cancel_withdraws_a_waiting_job_and_kills_a_running_one(site: Site) -> None:
    site.drop("running", site.sleepy_job("running", 30))
    sub = site.pass_until(lambda: site.state("running") == "claimed")
    site.drop("waiting", site.sleepy_job("waiting", 1))
    sub.run_pass()
    assert sub.cancel("waiting") == "withdrawn"
    assert sub.cancel("running") == "cancel requested"
    site.drain(["running", "waiting"], sub=sub)
    assert site.result("waiting")["job"]["reason"] == "cancelled"
    assert site.result("running")["job"]["reason"] == "cancelled"
    assert "start waiting" not in site.ledger_lines()
    assert not (site.root / "hpc/workspace/jobs" / site.key("running")).exists()


@pytest.mark.parametrize("python", ["/nonexistent/python3", "/bin/false"])
def test_a_pilot_that_cannot_start_is_not_resubmitted_in_a_storm(
        make_site: Any, python: str) -> None:
    site = make_site(pilot={"python": python})
    site.drop("stuck", site.upper_job("stuck"))
    sub = site.submitter()
    reports = []
    for _ in range(20):
        reports.append(sub.run_pass())
        time.sleep(0.05)
    assert len(site.spool.pilots()) == 1
    assert site.spool.pilots()[0].failed
    assert "pilot preflight" in reports[0].errors[0]  # found before any queue wait
    assert "pilots failed to start" in reports[-1].errors[0]
    assert site.state("stuck") == "staged"  # kept, not lost
    status = site.cli("status", "--config", str(site.config_path)).stdout
    assert "FAILED: pilots failed to start" in status


def test_old_finished_jobs_are_pruned_from_the_spool(site: Site) -> None:
    site.drop("old", site.upper_job("old"))
    site.drop("new", site.upper_job("new"))
    site.drain(["old", "new"])
    record = site.cfg.spool / "finished" / "old.json"
    os.utime(record, (time.time() - 40 * 86400,) * 2)
    assert site.spool.prune(keep_days=30) == 1
    assert site.spool.get("old") is None and site.spool.get("new") is not None
    site.submitter().run_pass()
    assert site.result_path("old").exists()
    assert site.ledger_lines().count("run old") == 1  # its result is there: not run again


def test_slots_take_the_gpus_the_scheduler_gave_the_pilot(
        make_site: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")  # what Slurm set for the pilot
    site = make_site(pilot={"slots": "2"})
    names = ["gpu%d" % i for i in range(8)]
    for name in names:
        site.drop(name, site.sleepy_job(name, 0.3))
    site.drain(names)
    runs = [line for log in (site.root / "hpc/workspace/pilots").glob("*.log")
            for line in log.read_text().splitlines() if "started on slot" in line]
    assert {line.split("(gpu ")[1].split(")")[0] for line in runs} == {"3", "5"}


def test_a_done_job_whose_result_vanished_ends_in_error_not_in_a_stuck_pass(
        site: Site) -> None:
    site.drop("vanished", site.sleepy_job("vanished", 0.5))
    sub = site.pass_until(lambda: site.state("vanished") == "claimed")
    site.kill_pilots(signal.SIGSTOP)  # freeze the pilot, fake its done marker without result
    workspace = site.root / "hpc/workspace"
    (workspace / "queue/done" / site.key("vanished")).touch()
    for claim in (workspace / "queue/claimed").iterdir():
        claim.unlink()
    try:
        site.drop("next", site.upper_job("next"))
        report = sub.run_pass()
        assert report.errors == []
        job = site.result("vanished")["job"]
        assert job["status"] == "error" and "could not be read" in job["message"]
    finally:
        site.kill_pilots(signal.SIGCONT)
    site.drain(["next"], sub=sub)
    assert site.result("next")["job"]["status"] == "ok"
    assert len(site.spool.pilots()) == 1  # the pilot lived on after losing that directory


def test_min_pilots_keeps_a_warm_pilot_for_the_first_job_of_a_stream(make_site: Any) -> None:
    site = make_site(scheduler={"min_pilots": "1"}, pilot={"idle_timeout": "60"})
    sub = site.submitter()
    sub.run_pass()
    assert len(site.spool.pilots()) == 1  # queued before any work arrived
    heartbeat = site.root / "hpc/workspace/pilots" / (site.spool.pilots()[0].pilot_id + ".hb")
    site.pass_until(heartbeat.exists, sub=sub)
    site.drop("first", site.upper_job("first"))
    site.drain(["first"], sub=sub)
    assert site.result("first")["job"]["pilot"] == site.spool.pilots()[0].scheduler_id
    assert len(site.spool.pilots()) == 1


def test_resubmit_ahead_queues_a_replacement_before_the_walltime(make_site: Any) -> None:
    site = make_site(scheduler={"resubmit_ahead": "6"},
                     pilot={"walltime": "8", "idle_timeout": "1"})
    names = ["ahead%d" % i for i in range(4)]
    for name in names:
        site.drop(name, site.sleepy_job(name, 2))
    site.drain(names)
    pilots = site.spool.pilots()
    assert len(pilots) >= 2  # no queue wait here: a replacement starts at once
    first_end = max(site.result(n)["job"]["end"] for n in names
                    if site.result(n)["job"]["pilot"] == pilots[0].scheduler_id)
    assert pilots[1].submitted < first_end  # queued while the first still worked


def _alive(pid: int) -> bool:
    """True until the process has exited (a zombie counts as exited)."""
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_job_signalled_with_its_pilot_is_rerun_not_reported_ok(site: Site) -> None:
    """Slurm's scancel signals every process of the pilot's job, the tool's too."""
    site.drop("hit", {"script": "tolerant", "args": {"seconds": 3},
                      "output_map": {"output": str(site.out("hit.out"))}})
    sub = site.pass_until(lambda: site.state("hit") == "claimed")
    time.sleep(0.3)
    log = next((site.root / "hpc/workspace/pilots").glob("*.log"))
    started = "(%s) started on slot 0 (gpu 0), pid " % site.key("hit")
    job_pid = int(log.read_text().split(started)[1].split()[0])
    children = subprocess.run(["pgrep", "-P", str(job_pid)], capture_output=True,
                              text=True).stdout.split()
    assert children  # the tool's own process, here `sleep`
    site.kill_pilots(signal.SIGSTOP)  # make the race deterministic: the tool ends first,
    signalled = time.time()           # the pilot sees it only after its own stop signal
    for pid in children:
        os.kill(int(pid), signal.SIGTERM)
    deadline = time.time() + 10
    while _alive(job_pid) and time.time() < deadline:
        time.sleep(0.05)
    site.kill_pilots(signal.SIGTERM)
    site.kill_pilots(signal.SIGCONT)
    site.drain(["hit"], sub=sub)
    job = site.result("hit")["job"]
    assert job["status"] == "ok" and job["attempts"] == 2
    assert datetime.datetime.fromisoformat(job["start"]).timestamp() > signalled
    assert "Terminated" not in job["stderr"]  # the cut-short first run was not reported


def test_answered_descriptions_are_checked_once_not_every_pass(
        site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    """A finished job's description left in the dropbox costs no stat per pass: only a new
    entry under its name (renamed in) or the full look every 30 s checks it again."""
    names = ["seen%d" % i for i in range(5)]
    for name in names:
        site.drop(name, site.upper_job(name))
    sub = site.drain(names)
    checked: list[str] = []
    original = receive.is_resubmission
    monkeypatch.setattr(receive, "is_resubmission",
                        lambda job, result: checked.append(job.name) or original(job, result))
    for i in range(3):  # each pass finds the dropbox changed, as in a burst
        site.drop("other%d" % i, text="not: [valid")
        sub.run_pass()
    assert sorted(c for c in checked if c.startswith("seen")) == [n + ".job" for n in names]
    site.drop("seen0", site.upper_job("seen0", "again\n"))  # renamed in: a new entry
    sub.run_pass()
    assert site.state("seen0") != "finished"


def test_a_description_rewritten_in_place_is_a_new_job_at_the_full_look(
        site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    site.drop("inplace", site.upper_job("inplace", "first\n"))
    sub = site.drain(["inplace"])
    sub.run_pass()  # sees the description answered
    job = site.root / "dropbox" / "inplace.job"
    with open(job, "w") as handle:  # the same inode, a new change time
        handle.write(yaml.safe_dump(site.upper_job("inplace", "second\n")))
    sub.run_pass()
    assert site.state("inplace") == "finished"  # neither the dropbox nor the entry moved
    monkeypatch.setattr(receive, "DEEP", 0.0)  # as 30 s later
    sub._dropbox._quiet.rescan_every = 0.0
    site.drain(["inplace"], sub=sub)
    assert site.out("inplace.upper").read_text() == "SECOND\n"


def test_runtime_and_end_are_the_jobs_own_not_its_report_time(site: Site) -> None:
    """The pilot reports a job only after its settle time (0.2 s): what the result says of
    the job's runtime and end is when its processes ended, not when it was reported."""
    site.drop("timed", site.sleepy_job("timed", 1))
    site.drain(["timed"])
    job = site.result("timed")["job"]
    start, end = (datetime.datetime.fromisoformat(job[k]).timestamp() for k in ("start", "end"))
    assert 1.0 <= job["metrics"]["runtime_seconds"] < 1.19
    assert abs((end - start) - job["metrics"]["runtime_seconds"]) < 0.01
