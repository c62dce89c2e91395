"""The drmaa backend against a real DRMAA library: Grid Engine's libdrmaa."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from galaxy_hpc_runner.cli.exitcodes import Exit
from hpc_worker.states import PilotState
from tests.services.cluster import GridEngine
from tests.sitekit import PROJECT, Site

pytestmark = pytest.mark.drmaa


def test_burst_through_drmaa_on_grid_engine_ends_ok_with_one_pilot(
        tmp_path: Path, gridengine: GridEngine) -> None:
    site = Site(tmp_path, scheduler={"backend": "drmaa", "failure_backoff": "2"},
                pilot={"python": sys.executable, "slots": "2"})
    names = ["g%02d" % i for i in range(20)]
    for i, name in enumerate(names):
        site.drop(name, site.upper_job(name, "grid engine item %d\n" % i))
    env = dict(os.environ, **gridengine.env, PYTHONPATH=str(PROJECT))
    # The submitter loop as a cron-less daemon would run it: the drmaa module must
    # be loaded by a process that starts with GLIBC_TUNABLES (see README).
    loop = subprocess.Popen([sys.executable, "-m", "galaxy_hpc_runner.cli", "submitter",
                             "--config", str(site.config_path)], cwd=PROJECT, env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not all(
                site.result_path(n).exists() for n in names):
            assert loop.poll() is None, loop.stderr.read() if loop.stderr else ""
            time.sleep(0.2)
    finally:
        loop.terminate()
        _, err = loop.communicate(timeout=30)
        for pilot in site.spool.pilots():
            subprocess.run(["qdel", pilot.scheduler_id], env=env, capture_output=True)
    assert all(site.result_path(n).exists() for n in names), err[-3000:]
    pilots = site.spool.pilots()
    assert len(pilots) == 1 and pilots[0].backend == "drmaa"
    for i, name in enumerate(names):
        job = site.result(name)["job"]
        assert job["status"] == "ok" and job["pilot"] == pilots[0].scheduler_id, job
        assert site.out(name + ".upper").read_text() == "GRID ENGINE ITEM %d\n" % i
    assert "submitted pilot" in err and "as drmaa job" in err


def test_a_pilot_killed_at_its_h_rt_is_a_walltime_release_not_a_lost_attempt(
        tmp_path: Path, gridengine: GridEngine) -> None:
    """Grid Engine kills the pilot at its h_rt (the pilot, told 1 h, never drains): the
    job it held counts as released by a walltime kill, and the next pilot finishes it."""
    site = Site(tmp_path, scheduler={"backend": "drmaa", "failure_backoff": "2",
                                     "native_spec": "-l h_rt=0:0:12"},
                pilot={"python": sys.executable, "heartbeat": "1", "grace": "2"})
    flag = tmp_path / "first-attempt"
    site.drop("cut", {"script": "first_slow", "args": {"flag": str(flag)},
                      "output_map": {"output": str(site.out("cut.out"))}})
    env = dict(os.environ, **gridengine.env, PYTHONPATH=str(PROJECT))
    loop = subprocess.Popen([sys.executable, "-m", "galaxy_hpc_runner.cli", "submitter",
                             "--config", str(site.config_path)], cwd=PROJECT, env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and not site.result_path("cut").exists():
            assert loop.poll() is None, loop.stderr.read() if loop.stderr else ""
            time.sleep(0.2)
    finally:
        loop.terminate()
        _, err = loop.communicate(timeout=30)
        for pilot in site.spool.pilots():
            subprocess.run(["qdel", pilot.scheduler_id], env=env, capture_output=True)
    assert site.result_path("cut").exists(), err[-3000:]
    job = site.result("cut")["job"]
    assert job["status"] == "ok" and job["attempts"] == 2, job
    rec = site.spool.get("cut")
    assert rec is not None and rec.lost == 0 and rec.walltime_kills == 1, (rec, err[-2000:])
    assert site.ledger_lines().count("completed cut") == 1
    first = site.spool.pilots()[0]
    assert first.state is PilotState.GONE and first.reason.startswith("TIMEOUT"), first


def test_drmaa_backend_without_its_library_says_how_to_fix_it(tmp_path: Path) -> None:
    site = Site(tmp_path, scheduler={"backend": "drmaa"})
    site.drop("x", site.upper_job("x"))
    env = {k: v for k, v in os.environ.items() if k not in ("DRMAA_LIBRARY_PATH", "SGE_ROOT")}
    proc = subprocess.run([sys.executable, "-m", "galaxy_hpc_runner.cli", "submitter", "--once",
                           "--config", str(site.config_path)], cwd=PROJECT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == Exit.INVALID  # a setting of this site, not a passing fault
    assert "drmaa backend needs" in proc.stderr and "DRMAA_LIBRARY_PATH" in proc.stderr


def test_check_remote_opens_a_drmaa_session(tmp_path: Path, gridengine: GridEngine) -> None:
    site = Site(tmp_path, scheduler={"backend": "drmaa"},
                pilot={"python": sys.executable})
    env = dict(os.environ, **gridengine.env, PYTHONPATH=str(PROJECT))
    proc = subprocess.run([sys.executable, "-m", "galaxy_hpc_runner.cli", "--config",
                           str(site.config_path), "check", "--remote"], cwd=PROJECT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok: the drmaa scheduler answers" in proc.stdout
