"""Small site-level contracts: file modes follow the umask, `check` sees templates and the
dropbox's permissions, and a result carries the pilot's measurements."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from hpc_worker import protocol as p
from tests.sitekit import Site


def test_atomic_writes_follow_the_umask_not_a_fixed_mode(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        p.atomic_write(str(tmp_path / "private"), "x")
        os.umask(0o022)
        p.atomic_write(str(tmp_path / "shared"), "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "private").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "shared").stat().st_mode) == 0o644


def test_check_reports_a_template_with_a_quoted_placeholder(site: Site, tmp_path: Path) -> None:
    templates = tmp_path / "own-templates"
    templates.mkdir()
    (templates / "quoted.sh").write_text('#!/bin/bash\necho "<<value>>"\n')
    site.write_config(templates={"path": str(templates)})
    proc = site.cli("--config", str(site.config_path), "check")
    assert proc.returncode != 0
    assert "quoted.sh" in proc.stdout and ":2:" in proc.stdout, proc.stdout


def test_check_warns_about_a_dropbox_others_can_write_without_the_sticky_bit(
        site: Site) -> None:
    os.chmod(site.root / "dropbox", 0o777)
    try:
        proc = site.cli("--config", str(site.config_path), "check")
    finally:
        os.chmod(site.root / "dropbox", 0o755)
    assert proc.returncode == 0 and "warning:" in proc.stdout and "sticky" in proc.stdout


def test_a_result_carries_the_pilots_measurements(site: Site) -> None:
    site.drop("measured", site.upper_job("measured"))
    site.drain(["measured"])
    job = site.result("measured")["job"]
    assert job["status"] == "ok" and job["metrics"]["runtime_seconds"] >= 0
