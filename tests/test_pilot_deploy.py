"""The pilot deploys itself: one versioned zipapp in W/bin, put there over the transport,
run by every pilot with the node's Python (3.8 included); no checkout on the HPC side."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from galaxy_hpc_runner.backends import pilot_spec
from galaxy_hpc_runner.dropbox import deploy
from galaxy_hpc_runner.dropbox.submitter import Submitter
from galaxy_hpc_runner.errors import SchedulerError
from galaxy_hpc_runner.transport.base import LocalTransport
from hpc_worker.records import PROTOCOL_VERSION
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
