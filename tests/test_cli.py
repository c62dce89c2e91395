"""The admin CLI as an admin uses it: check, status, show, logs, submit --wait."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.sitekit import PROJECT, Site


def test_check_accepts_the_shipped_example_config(tmp_path: Path) -> None:
    text = (PROJECT / "examples" / "hpc-batch.ini").read_text()
    for sub in ("dropbox", "media", "results", "ws"):
        (tmp_path / sub).mkdir()
    text = (text.replace("/srv/amp/dropbox", str(tmp_path / "dropbox"))
            .replace("/srv/amp/media", str(tmp_path / "media"))
            .replace("/srv/amp/results", str(tmp_path / "results")))
    config = tmp_path / "site.ini"
    config.write_text(text)
    proc = Site.cli_static("check", "--config", str(config))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK" in proc.stdout


def test_check_says_exactly_what_is_wrong(tmp_path: Path) -> None:
    config = tmp_path / "bad.ini"
    config.write_text("[dropbox]\npath = %s/nowhere\n[hpc_env]\nworkspace = relative/ws\n"
                      "scripts = /s\n[pilot]\nslots = two\nidle_timout = 5\n"
                      "[scheduler]\nbackend = pbs\n" % tmp_path)
    proc = Site.cli_static("check", "--config", str(config))
    assert proc.returncode == 3  # invalid configuration
    for expected in ("[dropbox] path %s/nowhere is not an existing directory" % tmp_path,
                     "[hpc_env] containers is required",
                     "[hpc_env] workspace = 'relative/ws' must be an absolute path",
                     "[pilot] slots = 'two' is not a valid whole number",
                     "[pilot] unknown key 'idle_timout'",
                     "[scheduler] backend = 'pbs': choose one of local, slurm, drmaa"):
        assert expected in proc.stdout, proc.stdout


def test_status_show_and_logs_tell_the_story_of_a_job(make_site: Any) -> None:
    site = make_site(pilot={"heartbeat": "60"})
    site.drop("told", site.upper_job("told", "story\n"))
    site.drain(["told"])
    cfg = str(site.config_path)
    status = json.loads(site.cli("--config", cfg, "status", "--json").stdout)
    assert status["counts"]["finished"] == 1 and status["oldest_waiting"] is None
    assert status["pilots"][0]["backend"] == "local"
    assert status["pilots"][0]["heartbeat"]["running"] == []  # told at once, not 10 s later
    assert status["pilots"][0]["heartbeat"]["done"] == 1
    show = json.loads(site.cli("show", "told", "--config", cfg, "--json").stdout)
    assert [e["to"] for e in show["history"]] == ["received", "staged", "claimed", "finished"] \
        or [e["to"] for e in show["history"]] == ["received", "staged", "finished"]
    assert show["rc"] == 0 and show["host"] and show["pilot"]
    assert show["paths"]["result"].endswith("told.job.finished")
    text = site.cli("show", "told", "--config", cfg).stdout
    assert "job told: finished (ok: processed OK)" in text
    logs = site.cli("--config", cfg, "logs", "told").stdout
    assert "upper done on gpu 0" in logs  # the job's own output, kept after it finished
    assert "== pilot pilot-" in logs and ".log" in logs  # where its log is, nothing grepped


def test_status_shows_waiting_jobs_and_the_pilot(site: Site) -> None:
    site.drop("waiting", site.sleepy_job("waiting", 5))
    site.pass_until(lambda: site.state("waiting") == "claimed")
    out = site.cli("status", "--config", str(site.config_path)).stdout
    assert "claimed 1" in out
    assert "oldest waiting: none" in out  # a running job is not waiting
    assert "longest running: waiting (on pilot-" in out
    assert "heartbeat " in out and " ago" in out


def test_submit_wait_prints_state_changes_and_exits_with_the_rc(site: Site) -> None:
    job = site.root / "mine.job"
    job.write_text(yaml.safe_dump(site.upper_job("mine", "waited for\n")))
    proc = subprocess.run([sys.executable, "-m", "galaxy_hpc_runner.cli", "submit", str(job),
                           "--config", str(site.config_path), "--wait", "--drive",
                           "--timeout", "60"], capture_output=True, text=True, cwd=PROJECT,
                          timeout=90)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    name = lines[0]
    assert name.startswith("mine-") and name.endswith(tuple("0123456789abcdef"))
    assert any(line.startswith(name + ": [") and "] staged" in line for line in lines)
    assert lines[-1] == "%s: ok: processed OK" % name
    assert site.out("mine.upper").read_text() == "WAITED FOR\n"


def test_submit_wait_exits_with_the_tools_return_code(site: Site) -> None:
    job = site.root / "failing.job"
    job.write_text(yaml.safe_dump({"script": "fail", "args": {"code": 7}}))
    proc = site.cli("submit", str(job), "--config", str(site.config_path), "--wait", "--drive",
                    "--timeout", "60")
    assert proc.returncode == 1  # the job's rc is printed, never the exit code (no collisions)
    assert "error: Remote command failed with return code 7" in proc.stdout


def test_a_command_without_config_says_so() -> None:
    proc = Site.cli_static("status")
    assert proc.returncode == 2 and "status needs --config FILE" in proc.stderr


def test_submit_wait_times_out_cleanly(site: Site) -> None:
    job = site.root / "never.job"
    job.write_text(yaml.safe_dump(site.upper_job("never")))
    proc = site.cli("submit", str(job), "--config", str(site.config_path), "--wait",
                    "--timeout", "1")
    assert proc.returncode == 5
    assert "no result within 1.0s" in proc.stderr


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    proc = Site.cli_static("demo", "--dir", str(tmp_path / "demo"), "--jobs", "6")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "6/6 ok" in proc.stdout
    assert (tmp_path / "demo/results/item005.upper.txt").read_text().startswith("MEDIA ITEM 5")
    _stop_demo_pilots(tmp_path / "demo")


def _stop_demo_pilots(root: Path) -> None:
    from galaxy_hpc_runner.config import load_config
    from galaxy_hpc_runner.dropbox.submitter import Submitter

    sub = Submitter(load_config(root / "demo.ini"))
    for pilot in sub.spool.pilots():
        sub.backend.cancel(pilot.scheduler_id)
    shutil.rmtree(root / "hpc", ignore_errors=True)


def test_check_remote_finds_a_broken_pilot_command(make_site: Any) -> None:
    site = make_site(pilot={"python": "/nonexistent/python3"})
    proc = site.cli("--config", str(site.config_path), "check", "--remote")
    assert proc.returncode == 6
    assert "ok: workspace" in proc.stdout
    assert "FAILED: the pilot program deploys and runs: " in proc.stdout
    assert "/nonexistent/python3" in proc.stdout and "[pilot] python" in proc.stdout
    assert site.spool.pilots() == []  # nothing was submitted


def test_an_idle_pass_is_quiet_and_a_failed_pass_exits_6(make_site: Any, tmp_path: Path) -> None:
    site = make_site()
    cfg = str(site.config_path)
    site.cli("--config", cfg, "submitter", "--once")  # the first pass lays out the workspace
    idle = site.cli("--config", cfg, "submitter", "--once")
    assert idle.returncode == 0 and idle.stdout == "" and idle.stderr == ""  # no cron mail
    metrics = (site.cfg.spool / "metrics.prom").read_text()  # written by every pass
    assert "\nhpc_batch_last_pass_ok 1\n" in metrics and "pass_duration_seconds" in metrics
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    site.write_config(hpc_env={"workspace": str(blocker / "ws")})
    failed = site.cli("--config", cfg, "submitter", "--once")
    assert failed.returncode == 6, failed.stderr
    status = site.cli("--config", cfg, "status")
    assert status.returncode == 6 and "last pass: " in status.stdout and "FAILED" in status.stdout
    assert "\nhpc_batch_last_pass_ok 0\n" in (site.cfg.spool / "metrics.prom").read_text()


def test_pause_stages_nothing_and_resume_goes_on(site: Site) -> None:
    cfg = str(site.config_path)
    site.cli("--config", cfg, "pause", "--reason", "maintenance")
    site.drop("held", site.upper_job("held", "later\n"))
    for _ in range(3):
        site.cli("--config", cfg, "submitter", "--once")
    assert site.state("held") == "received" and site.spool.pilots() == []
    site.cli("--config", cfg, "resume")
    site.drain(["held"])
    assert site.out("held.upper").read_text() == "LATER\n"


def test_check_refuses_a_zero_ssh_timeout_and_names_a_negative_duration(tmp_path: Path) -> None:
    for sub in ("drop", "data"):
        (tmp_path / sub).mkdir()
    (tmp_path / "kh").write_text("")
    config = tmp_path / "site.ini"
    config.write_text("[dropbox]\npath = drop\nallowed_input_roots = data\n"
                      "allowed_output_roots = data\n[hpc_env]\nworkspace = /ws\nscripts = /s\n"
                      "containers = /c\n[scheduler]\ncommand_timeout = -5\n[transport]\n"
                      "type = ssh\nhost = h\nknown_hosts = kh\ntimeout = 0\n")
    proc = Site.cli_static("check", "--config", str(config))
    assert proc.returncode == 3, proc.stdout + proc.stderr
    # 0 made every connect non-blocking: check said OK, then each pass "cannot reach" the host
    assert "site.ini:15: [transport] timeout must be more than 0 seconds" in proc.stdout
    assert ("site.ini:10: [scheduler] command_timeout = '-5' is not a valid duration "
            "(it must not be negative)") in proc.stdout


def test_a_typo_in_a_jobs_filter_is_a_usage_error(site: Site) -> None:
    cfg = str(site.config_path)
    typo = site.cli("--config", cfg, "jobs", "--state", "finished,runing")
    assert typo.returncode == 2  # not an empty table that reads as "no such jobs"
    assert "'runing': not a job state (choose from claimed, finished" in typo.stderr
    for args in (("jobs", "--since", "yesterday"), ("report", "--html", "x.html",
                                                      "--until", "soon")):
        proc = site.cli("--config", cfg, *args)
        assert proc.returncode == 2 and "give a duration (90m, 2h, 1d) or a date" in proc.stderr


def test_a_busy_pass_logs_one_readable_line(site: Site) -> None:
    site.drop("busy", site.upper_job("busy", "x\n"))
    proc = site.cli("--config", str(site.config_path), "submitter", "--once")
    assert proc.returncode == 0, proc.stderr
    assert "pass: received 1, staged 1, pilots submitted 1" in proc.stderr, proc.stderr
    assert "PassReport(" not in proc.stderr


def test_drain_keeps_no_warm_pilot_and_resume_brings_it_back(make_site: Any) -> None:
    """min_pilots = 1 keeps a pilot warm; under drain the idle one leaves and none replaces
    it; resume submits one again. (pause/drain flags: tests/unit/test_cli_jobs.py)"""
    from hpc_worker.states import PilotState

    site = make_site(scheduler={"min_pilots": "1"}, pilot={"idle_timeout": "1"})
    cfg = str(site.config_path)

    def live() -> list[str]:
        return [r.pilot_id for r in site.spool.pilots() if r.state is not PilotState.GONE]

    sub = site.pass_until(lambda: len(live()) == 1)
    assert site.cli("--config", cfg, "drain", "--reason", "upgrade").returncode == 0
    site.pass_until(lambda: live() == [], sub=sub)  # the warm pilot idled out
    for _ in range(5):
        sub.run_pass()
    assert live() == [] and len(site.spool.pilots()) == 1  # and none replaced it
    assert site.cli("--config", cfg, "resume").returncode == 0
    site.pass_until(lambda: len(live()) == 1, sub=sub)


def test_a_missing_file_is_named_without_errno_noise(tmp_path: Path) -> None:
    proc = Site.cli_static("demo", "--dir", str(tmp_path / "demo"), "--jobs", "1")
    assert proc.returncode == 0, proc.stderr
    try:
        config = str(tmp_path / "demo" / "demo.ini")
        proc = Site.cli_static("--config", config, "render", str(tmp_path / "nofile.yml"))
        assert proc.returncode == 1
        assert proc.stderr == "hpc-batch: %s: No such file or directory\n" % (
            tmp_path / "nofile.yml")
    finally:
        _stop_demo_pilots(tmp_path / "demo")
