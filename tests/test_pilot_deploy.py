"""The pilot deploys itself: one versioned zipapp in W/bin, put there over the transport,
run by every pilot with the node's Python (3.8 included); no checkout on the HPC side."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from galaxy_hpc_runner.backends import pilot_spec
from galaxy_hpc_runner.dropbox import deploy, registry
from galaxy_hpc_runner.dropbox.submitter import Submitter
from galaxy_hpc_runner.errors import SchedulerError
from galaxy_hpc_runner.transport.base import LocalTransport, Transport
from hpc_worker import protocol as p
from hpc_worker.records import PROTOCOL_VERSION, PilotEntry
from hpc_worker.states import PilotState
from tests.services.cluster import SshServer
from tests.sitekit import Site
from tests.test_two_servers import ssh_sections
from tests.test_worker_portability import PY38


def test_the_program_is_uploaded_once_and_every_pilot_runs_it(site: Site) -> None:
    cfg = site.cfg
    path = deploy.ensure_deployed(cfg, LocalTransport())
    name, data = deploy.build()
    assert path == os.path.join(cfg.workspace, deploy.BIN, name)
    assert ("-v%d-" % PROTOCOL_VERSION) in name
    assert Path(path).read_bytes() == data
    stamp = os.stat(path).st_mtime_ns
    assert deploy.ensure_deployed(cfg, LocalTransport()) == path
    assert os.stat(path).st_mtime_ns == stamp  # present: not uploaded again
    spec = pilot_spec(cfg, "pilot-x")
    assert spec.argv[:2] == [cfg.pilot.python, path] and "PYTHONPATH" not in spec.env


def test_the_program_needs_nothing_beside_it(tmp_path: Path) -> None:
    """Isolated mode (-I): no PYTHONPATH, no user site, not the current directory."""
    name, data = deploy.build()
    lonely = tmp_path / "elsewhere" / name
    lonely.parent.mkdir()
    lonely.write_bytes(data)
    done = subprocess.run([sys.executable, "-I", str(lonely), "--help"], capture_output=True,
                          text=True, cwd="/", env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0 and "--workspace" in done.stdout, done.stderr


def test_preflight_names_the_python_setting_when_it_cannot_run(make_site: Any) -> None:
    site = make_site(pilot={"python": "/nonexistent/python3"})
    with pytest.raises(SchedulerError, match=r"\[pilot\] python"):
        Submitter(site.cfg).pilots.preflight()
    assert site.spool.pilots() == []


def test_a_pilot_runs_jobs_from_the_deployed_program_without_a_checkout(
        make_site: Any) -> None:
    site = make_site(pilot={"idle_timeout": "30"})  # still there when we look
    site.drop("deployed", site.upper_job("deployed", "from the zipapp\n"))
    site.drain(["deployed"])
    assert site.result("deployed")["job"]["status"] == "ok"
    (pid,) = site.pilot_pids()
    argv = Path("/proc/%d/cmdline" % pid).read_bytes().split(b"\0")
    assert argv[1].decode() == deploy.remote_program(site.cfg)
    environ = Path("/proc/%d/environ" % pid).read_bytes().split(b"\0")
    assert not [v for v in environ if v.startswith(b"PYTHONPATH=")]
    assert list((Path(site.cfg.workspace) / deploy.BIN).iterdir()) == [
        Path(deploy.remote_program(site.cfg))]


def _loop_until_first_pass(site: Site, sub: Submitter | None = None) -> None:
    """The submitter loop (as ``hpc-batch submitter`` runs it) until its first pass ended."""
    sub, stop = sub or Submitter(site.cfg), threading.Event()
    loop = threading.Thread(target=sub.loop, args=(stop,), kwargs={"interval": 60.0})
    loop.start()
    try:
        deadline = time.monotonic() + 30
        while not (Path(site.cfg.spool) / "last_pass.json").exists():
            assert time.monotonic() < deadline, "the loop made no pass"
            time.sleep(0.01)
    finally:
        stop.set()
        loop.join(30)


def test_the_loop_checks_the_pilot_program_when_it_starts_not_at_the_first_job(
        site: Site, caplog: pytest.LogCaptureFixture) -> None:
    """The first job does not wait for the preflight (0.1-0.2 s here, more over ssh)."""
    with caplog.at_level(logging.INFO, logger="galaxy_hpc_runner.dropbox.watch"):
        _loop_until_first_pass(site)
    assert Path(deploy.remote_program(site.cfg)).is_file()
    assert "runs %s" % deploy.program_name() in caplog.text
    assert site.spool.pilots() == []  # checked, not submitted: no job asked for a pilot


def test_a_failed_preflight_at_the_start_is_logged_and_the_loop_goes_on(
        make_site: Any, caplog: pytest.LogCaptureFixture) -> None:
    site = make_site(pilot={"python": "/nonexistent/python3"})
    with caplog.at_level(logging.INFO, logger="galaxy_hpc_runner.dropbox.watch"):
        _loop_until_first_pass(site)  # a pass still ran
    assert "pilot preflight failed" in caplog.text and "[pilot] python" in caplog.text


def test_an_unexpected_error_in_the_preflight_does_not_end_the_loop(
        site: Site, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    sub = Submitter(site.cfg)

    def broken() -> str:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sub.pilots, "preflight", broken)  # a fault of the machine, injected
    with caplog.at_level(logging.INFO, logger="galaxy_hpc_runner.dropbox.watch"):
        _loop_until_first_pass(site, sub)  # a pass still ran
    assert "pilot preflight failed" in caplog.text and "No space left" in caplog.text


@pytest.mark.skipif(PY38 is None, reason="no python3.8 on this machine")
def test_the_deployed_pilot_runs_jobs_under_a_real_python_3_8(make_site: Any,
                                                             tmp_path: Path) -> None:
    assert PY38 is not None
    site = make_site(pilot={"python": PY38})
    assert "runs %s" % deploy.program_name() in Submitter(site.cfg).pilots.preflight()
    site.drop("old", site.upper_job("old", "from an old node\n"))
    site.drain(["old"])
    assert site.result("old")["job"]["status"] == "ok"
    assert site.out("old.upper").read_text() == "FROM AN OLD NODE\n"
    lonely = tmp_path / "py38-alone.pyz"
    shutil.copy(deploy.remote_program(site.cfg), lonely)
    done = subprocess.run([PY38, "-I", str(lonely), "--help"], capture_output=True, text=True,
                          cwd="/")
    assert done.returncode == 0, done.stderr


@pytest.mark.ssh
def test_the_program_is_deployed_and_verified_over_ssh(tmp_path: Path,
                                                      ssh_server: SshServer) -> None:
    site = Site(tmp_path, **ssh_sections(ssh_server))
    try:
        sub = Submitter(site.cfg)
        assert deploy.program_name() in sub.pilots.preflight()
        assert Path(deploy.remote_program(site.cfg)).read_bytes() == deploy.build()[1]
    finally:
        site.close()


# -- pruning old programs -------------------------------------------------------------
OLD = ("hpc_worker-v1-aaaaaaaaaaaa.pyz", "hpc_worker-v2-bbbbbbbbbbbb.pyz")


def old_programs(site: Site, transport: Transport) -> Path:
    """This release's program and two of older releases in W/bin, and a file of no program."""
    deploy.ensure_deployed(site.cfg, transport)
    bin_dir = Path(site.cfg.workspace) / deploy.BIN
    for name in OLD + ("README.txt",):
        transport.write_text(str(bin_dir / name), "old\n")
    return bin_dir


def live_entry(sub: Submitter, pilot_id: str, state: PilotState) -> PilotEntry:
    entry = PilotEntry(pilot_id=pilot_id, submitted=p.now_iso(), state=state,
                       submitter="other", backend="slurm", scheduler_id="77")
    with sub.pilots.registry.lock():
        sub.pilots.registry.write(entry)
    return entry


def check_pruning(site: Site, sub: Submitter) -> None:
    """Kept while new to this server or while a live pilot may use it; then removed, and
    this release's program never (however old)."""
    bin_dir = old_programs(site, sub.transport)
    t0 = time.time()
    assert deploy.prune_programs(site.cfg, sub.transport, sub.pilots.registry, t0) == []
    later = t0 + deploy.PROGRAM_KEEP + 1
    entry = live_entry(sub, "pilot-other-20261127T060000-abcdef", PilotState.RUNNING)
    assert deploy.prune_programs(site.cfg, sub.transport, sub.pilots.registry, later) == []
    assert {n for n in OLD if (bin_dir / n).exists()} == set(OLD)  # it may run either
    entry.state = PilotState.GONE
    with sub.pilots.registry.lock():
        sub.pilots.registry.write(entry)
    much_later = later + 10 * deploy.PROGRAM_KEEP
    removed = deploy.prune_programs(site.cfg, sub.transport, sub.pilots.registry, much_later)
    assert sorted(removed) == sorted(OLD)
    assert sorted(n.name for n in bin_dir.iterdir()) == sorted(
        ["README.txt", deploy.program_name()])
    assert not (Path(site.cfg.workspace) / p.PILOTS / (registry.LOCK_NAME)).exists()


def test_old_programs_no_live_pilot_uses_are_pruned_never_the_current_one(site: Site) -> None:
    check_pruning(site, Submitter(site.cfg))


def test_programs_in_use_are_those_live_entries_name() -> None:
    live = PilotEntry(pilot_id="a", submitted="", state=PilotState.PENDING)
    gone = PilotEntry(pilot_id="b", submitted="", state=PilotState.GONE)
    assert deploy.programs_in_use([gone]) == set()
    assert deploy.programs_in_use([live, gone]) is None  # it does not say: any may be in use
    live.program = "/w/bin/" + OLD[0]
    assert deploy.programs_in_use([live, gone]) == {OLD[0]}


def test_a_submitted_pilot_names_its_program_so_others_may_be_pruned(site: Site) -> None:
    sub = Submitter(site.cfg)
    rec = sub.pilots.submit()
    entry = sub.pilots.registry.entries()[rec.pilot_id]
    assert entry.program == deploy.remote_program(site.cfg)
    assert deploy.programs_in_use([entry]) == {deploy.program_name()}


def test_a_submission_puts_back_a_program_pruned_after_its_preflight(site: Site) -> None:
    sub = Submitter(site.cfg)
    sub.pilots.preflight()
    Path(deploy.remote_program(site.cfg)).unlink()  # another server's prune, meanwhile
    rec = sub.pilots.submit()
    assert rec.scheduler_id and Path(deploy.remote_program(site.cfg)).exists()


def test_the_pass_prunes_old_programs_when_no_pilot_lives(site: Site) -> None:
    sub = Submitter(site.cfg)
    bin_dir = old_programs(site, sub.transport)
    p.write_json(str(site.cfg.spool / deploy.SEEN_FILE), {n: 0.0 for n in OLD})
    sub.run_pass()
    assert not [n for n in OLD if (bin_dir / n).exists()]
    assert (bin_dir / deploy.program_name()).exists()


@pytest.mark.ssh
def test_old_programs_are_pruned_over_ssh(tmp_path: Path, ssh_server: SshServer) -> None:
    site = Site(tmp_path, **ssh_sections(ssh_server))
    try:
        check_pruning(site, Submitter(site.cfg))
    finally:
        site.close()
