"""The site layout and modes: the machinery stays apart from the data; modes follow the umask."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from galaxy_hpc_runner.dropbox.boundary import config_overlaps, dropbox_warnings
from tests.sitekit import Site


def test_a_sound_site_has_no_overlap_and_no_warning(site: Site) -> None:
    (site.root / "dropbox").chmod(0o755)
    assert config_overlaps(site.cfg) == []
    assert dropbox_warnings(site.cfg) == []


def test_every_protected_path_under_a_root_is_named(site: Site) -> None:
    cfg = site.cfg
    for root in (site.root / "results", site.root / "media"):
        cfg.allowed_output_roots = [root]
        cfg.allowed_input_roots = [root]
        cfg.spool = root / "spool"
        cfg.templates = root / "templates"
        cfg.hpc_env["workspace"] = str(root / "ws")
        problems = config_overlaps(cfg)
        named = " ".join(problems)
        for what in ("[spool] path", "[templates] path", "[hpc_env] workspace"):
            assert what in named, (what, problems)


def test_a_root_inside_the_workspace_is_an_overlap_too(site: Site) -> None:
    cfg = site.cfg
    cfg.allowed_output_roots = [Path(cfg.workspace) / "jobs"]
    assert any("[hpc_env] workspace" in p for p in config_overlaps(cfg))


def test_the_workspace_of_a_remote_transport_is_not_compared(site: Site) -> None:
    cfg = site.cfg
    cfg.transport = {"type": "ssh"}
    cfg.allowed_output_roots = [Path(cfg.workspace)]
    assert not any("workspace" in p for p in config_overlaps(cfg))


def test_a_dropbox_others_can_write_without_the_sticky_bit_is_warned_about(
        site: Site) -> None:
    dropbox = site.root / "dropbox"
    dropbox.chmod(0o777)
    assert "without the sticky bit" in " ".join(dropbox_warnings(site.cfg))
    dropbox.chmod(0o777 | stat.S_ISVTX)
    assert dropbox_warnings(site.cfg) == []
    dropbox.chmod(0o775)
    assert "its group" in " ".join(dropbox_warnings(site.cfg))
    dropbox.chmod(0o755)


def test_outputs_follow_the_umask_not_a_forced_0644(site: Site) -> None:
    old = os.umask(0o077)
    try:
        site.drop("private", site.upper_job("private"))
        site.drain(["private"])
    finally:
        os.umask(old)
    out = site.out("private.upper")
    assert out.read_text() == "HELLO WORLD\n"
    assert stat.S_IMODE(out.stat().st_mode) & 0o077 == 0
