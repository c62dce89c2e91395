"""The admin's views of a spool: jobs table, lookup by Galaxy id or prefix, show after the
result file is gone, status times and exit code, pause/drain/resume, the metrics file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from galaxy_hpc_runner.cli import jobs
from galaxy_hpc_runner.cli.exitcodes import Exit
from galaxy_hpc_runner.config import load_config
from galaxy_hpc_runner.dropbox import control, metrics
from galaxy_hpc_runner.dropbox.spool import Spool
from hpc_worker import protocol as p
from hpc_worker.states import JobState

PROJECT = Path(__file__).resolve().parents[2]


def hpc_batch(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(PROJECT), HPC_BATCH_CONFIG=str(config))
    return subprocess.run([sys.executable, "-m", "galaxy_hpc_runner.cli", *args],
                          capture_output=True, text=True, timeout=60, env=env, cwd=PROJECT)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    for sub in ("dropbox", "media", "ws"):
        (tmp_path / sub).mkdir()
    path = tmp_path / "site.ini"
    path.write_text("[dropbox]\npath = dropbox\nallowed_input_roots = media\n"
                    "allowed_output_roots = media\n[hpc_env]\nworkspace = %s/ws\n"
                    "scripts = /s\ncontainers = /c\n[submitter]\ninterval = 5\nlock_timeout = 0.5\n"
                    % tmp_path)
    spool = Spool(load_config(path).spool)
    waiting = spool.create("whisper-a1", {"script": "whisper", "meta": {"galaxy_job_id": 4711}})
    spool.transition(waiting, JobState.STAGED)
    running = spool.create("whisper-b2", {"script": "whisper", "meta": {"galaxy_job_id": 4712}})
    spool.transition(running, JobState.STAGED)
    spool.transition(running, JobState.CLAIMED, pilot="pilot-1")
    done = spool.create("gentle-c3", {"script": "gentle"})
    spool.transition(done, JobState.STAGED)
    spool.transition(done, JobState.CLAIMED, pilot="pilot-1")
    # what the pass keeps at finish (the event's detail; record fields of the same names
    # are read first): rc, host and the tails of stdout/stderr
    spool.transition(done, JobState.FINISHED, status="error", message="Remote command failed "
                     "with return code 7", rc=7, host="gpu7", stdout_tail="last words\n",
                     stderr_tail="Traceback: oops\n")
    spool.archive(done)
    return path


def test_the_jobs_table_lists_every_job_with_galaxy_id_state_pilot_and_rc(config: Path) -> None:
    proc = hpc_batch(config, "jobs")
    assert proc.returncode == 0, proc.stderr
    head, *rows = proc.stdout.splitlines()
    assert head.split() == ["NAME", "GALAXY", "STATE", "AGE", "PILOT", "HOST", "RC"]
    cells = {row.split()[0]: row.split() for row in rows}
    assert cells["whisper-a1"][1:3] == ["4711", "staged"]
    assert cells["whisper-b2"][1:3] == ["4712", "claimed"] and cells["whisper-b2"][4] == "pilot-1"
    assert cells["gentle-c3"][1:3] == ["-", "finished/error"] and cells["gentle-c3"][-2:] == [
        "gpu7", "7"]


def test_jobs_filters_by_state_and_time_and_speaks_json(config: Path) -> None:
    proc = hpc_batch(config, "jobs", "--state", "claimed,staged", "--json")
    assert sorted(r["name"] for r in json.loads(proc.stdout)) == ["whisper-a1", "whisper-b2"]
    assert hpc_batch(config, "jobs", "--since", "1h").stdout.count("\n") == 4
    future = time.strftime("%Y-%m-%d", time.localtime(time.time() + 2 * 86400))
    assert hpc_batch(config, "jobs", "--since", future).stdout.count("\n") == 1  # the head


def test_a_job_is_found_by_name_galaxy_id_or_unique_prefix(config: Path) -> None:
    spool = Spool(load_config(config).spool)
    assert jobs.find(spool, "whisper-a1") == "whisper-a1"
    assert jobs.find(spool, "4712") == "whisper-b2"
    assert jobs.find(spool, "gen") == "gentle-c3"
    with pytest.raises(jobs.NoSuchJob, match="'whisper' is ambiguous: 2 jobs start with it"):
        jobs.find(spool, "whisper")
    proc = hpc_batch(config, "show", "whisper")
    assert proc.returncode == Exit.NO_SUCH_JOB and "ambiguous" in proc.stderr


def test_show_of_a_job_not_yet_received_says_it_waits_in_the_dropbox(config: Path) -> None:
    (config.parent / "dropbox" / "fresh.job").write_text("script: whisper\n")
    proc = hpc_batch(config, "show", "fresh")
    assert proc.returncode == Exit.NO_SUCH_JOB
    assert "fresh is still waiting in the dropbox" in proc.stderr
    assert "no submitter pass has received it yet" in proc.stderr


def test_show_keeps_rc_and_pilot_after_the_result_file_is_gone(config: Path) -> None:
    data = json.loads(hpc_batch(config, "show", "gentle", "--json").stdout)
    assert data["name"] == "gentle-c3" and data["result"] is None
    assert data["rc"] == 7 and data["pilot"] == "pilot-1" and data["status"] == "error"
    assert data["host"] == "gpu7" and data["stdout_tail"] == "last words\n"
    logs = hpc_batch(config, "logs", "gentle").stdout
    assert "== stdout\nlast words\n" in logs and "== stderr\nTraceback: oops\n" in logs
    assert json.loads(hpc_batch(config, "show", "4711", "--json").stdout)["name"] == "whisper-a1"


def test_logs_reads_no_log_wording(config: Path) -> None:
    proc = hpc_batch(config, "logs", "4712")
    assert proc.returncode == 0, proc.stderr
    assert "== stdout\n(not there yet)" in proc.stdout
    assert "== pilot pilot-1 log: " in proc.stdout


def test_status_tells_ages_and_fails_after_a_failed_pass(config: Path) -> None:
    cfg = load_config(config)
    p.write_json(str(cfg.spool / "last_pass.json"), {"time": p.now_iso(), "ok": True,
                                                     "errors": []})
    proc = hpc_batch(config, "status")
    assert proc.returncode == 0, proc.stderr
    assert "oldest waiting: whisper-a1 (staged, " in proc.stdout  # not the running one
    assert "longest running: whisper-b2 (on pilot-1 for " in proc.stdout
    assert "last pass: 0s ago" in proc.stdout or "last pass: 1s ago" in proc.stdout
    p.write_json(str(cfg.spool / "last_pass.json"), {"time": "2020-01-01T00:00:00+00:00",
                                                     "ok": False, "errors": ["ssh: refused"]})
    proc = hpc_batch(config, "status")
    assert proc.returncode == Exit.UNREACHABLE
    assert "FAILED: ssh: refused" in proc.stdout
    assert "WARNING: no submitter pass for" in proc.stdout


def test_pause_drain_resume(config: Path) -> None:
    cfg = load_config(config)
    assert control.current(cfg.spool).stage_allowed
    out = hpc_batch(config, "pause", "--reason", "GPU maintenance").stdout
    assert "paused since" in out and "GPU maintenance" in out
    state = control.current(cfg.spool)
    assert not state.stage_allowed and not state.submit_allowed and not state.cancel_idle_pilots
    assert "mode paused since" in hpc_batch(config, "status").stdout
    hpc_batch(config, "drain")
    assert control.current(cfg.spool).cancel_idle_pilots
    hpc_batch(config, "resume")
    assert control.current(cfg.spool).mode is control.Mode.RUNNING
    (cfg.spool / control.CONTROL_FILE).write_text("{torn")
    assert control.current(cfg.spool).mode is control.Mode.PAUSED  # fail safe, and says why


def test_the_metrics_file_counts_jobs_pilots_and_the_pass(config: Path) -> None:
    cfg = load_config(config)
    path = metrics.write_metrics(cfg, Spool(cfg.spool), ok=False, duration=1.5)
    text = path.read_text()
    assert path == cfg.spool / "metrics.prom"
    for line in ('hpc_batch_jobs{state="staged"} 1', 'hpc_batch_jobs{state="claimed"} 1',
                 'hpc_batch_jobs{state="finished"} 1', "hpc_batch_pass_duration_seconds 1.500",
                 "hpc_batch_last_pass_ok 0", 'hpc_batch_mode{mode="running"} 1',
                 'hpc_batch_pilots{state="pending"} 0', "# TYPE hpc_batch_jobs gauge"):
        assert line + "\n" in text, line
    wait = float(text.split("\nhpc_batch_oldest_queue_wait_seconds ")[1].split()[0])
    assert 0 <= wait < 60


def test_status_shows_the_other_servers_sharing_the_workspace(config: Path) -> None:
    from hpc_worker.records import PilotEntry
    from hpc_worker.states import PilotState

    cfg = load_config(config)
    pilots = Path(cfg.workspace, p.PILOTS)
    pilots.mkdir(parents=True)
    entry = PilotEntry(pilot_id="pilot-galaxy2-20261127T080000-abcdef", submitted=p.now_iso(),
                       state=PilotState.PENDING, scheduler_id="99", submitter="galaxy2",
                       backend="slurm")
    p.write_json(str(pilots / (entry.pilot_id + p.PILOT_ENTRY)), entry.to_json())
    out = hpc_batch(config, "status").stdout
    assert "site (workspace shared by " in out and "galaxy2" in out
    assert "  pilot-galaxy2-20261127T080000-abcdef of galaxy2: pending" in out


def test_submit_wait_says_when_no_submitter_pass_runs(config: Path, tmp_path: Path) -> None:
    job = tmp_path / "x.job"
    job.write_text("script: nothing\n")
    proc = hpc_batch(config, "submit", str(job), "--wait", "--timeout", "1")
    assert proc.returncode == Exit.TIMEOUT
    name = proc.stdout.splitlines()[0]
    assert "%s: [0s] waiting to be received; no submitter pass for ever (is cron or the " \
           "service running?)" % name in proc.stdout
    assert "no result within 1.0s (the job goes on" in proc.stderr


def test_progress_times_are_coarse() -> None:
    from galaxy_hpc_runner.cli.admin import _minutes

    assert [_minutes(s) for s in (None, 59, 125, 1300, 7300)] == ["<1m", "<1m", "2m", "20m",
                                                                   "2h"]


def test_a_pass_started_while_another_runs_is_quiet_unless_that_one_looks_stuck(
        config: Path) -> None:
    cfg = load_config(config)
    spool = Spool(cfg.spool)
    with spool.lock(5):  # the previous pass, still running
        p.write_json(str(cfg.spool / "last_pass.json"), {"time": p.now_iso(), "ok": True,
                                                         "errors": []})
        skipped = hpc_batch(config, "--quiet", "submitter", "--once")
        assert skipped.returncode == 0 and skipped.stderr == "" and skipped.stdout == ""
        p.write_json(str(cfg.spool / "last_pass.json"), {
            "time": "2020-01-01T00:00:00+00:00", "ok": True, "errors": []})
        stuck = hpc_batch(config, "--quiet", "submitter", "--once")
        assert stuck.returncode == Exit.UNREACHABLE
        assert "is a pass stuck? (hpc-batch status)" in stuck.stderr


def test_status_believes_a_pending_pilot_that_beats_and_sums_up_gone_ones(config: Path) -> None:
    from galaxy_hpc_runner.dropbox.registry import HEARTBEAT_SUFFIX
    from galaxy_hpc_runner.dropbox.spool_records import PilotRecord
    from hpc_worker.records import Heartbeat
    from hpc_worker.states import HeartbeatState, PilotState

    cfg = load_config(config)
    spool = Spool(cfg.spool)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    for n in range(5):
        spool.save_pilot(PilotRecord("pilot-old%d" % n, str(n), "local", stamp, PilotState.GONE))
    spool.save_pilot(PilotRecord("pilot-new", "9", "local", stamp))  # pending at the last pass
    (Path(cfg.workspace) / p.PILOTS).mkdir(parents=True, exist_ok=True)
    beat = Heartbeat(pilot="pilot-new", state=HeartbeatState.RUNNING, epoch=time.time(),
                     running=["whisper-b2"], host="gpu9")
    Path(p.pilot_path(cfg.workspace, "pilot-new", HEARTBEAT_SUFFIX)).write_text(beat.dumps())
    out = hpc_batch(config, "status").stdout
    line = next(ln for ln in out.splitlines() if "pilot-new" in ln)
    assert " running " in line and "running whisper-b2" in line and "queued" not in line
    assert "on gpu9, heartbeat" in line  # where its jobs run (the jobs table has it at the end)
    assert "and 5 gone, the newest pilot-old4" in out
    assert "pilot-old0" not in out  # gone ones are summed up, listed in --json
    pilots = json.loads(hpc_batch(config, "status", "--json").stdout)["pilots"]
    assert len(pilots) == 6
