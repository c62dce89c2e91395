"""Paths act on what was validated; a job's own links are never followed on collection.

Each class runs on the local backend with the local transport and, where the
HPC side is concerned, with the ssh transport against a real sshd (the
workspace is on this machine, reached over SFTP).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from galaxy_hpc_runner.config import load_config
from galaxy_hpc_runner.dropbox.receive import receive_one
from galaxy_hpc_runner.dropbox.submitter import PassReport
from galaxy_hpc_runner.errors import ConfigError
from hpc_worker.records import MAX_RUNS_BYTES
from tests.adversarial.secrets import SECRET, flipping, make_secret, nothing_leaked
from tests.sitekit import Site


@pytest.fixture(params=["local", pytest.param("ssh", marks=pytest.mark.ssh)])
def any_site(request: pytest.FixtureRequest, make_site: Callable[..., Site]) -> Site:
    if request.param == "local":
        return make_site()
    server = request.getfixturevalue("ssh_server")
    return make_site(transport={
        "type": "ssh", "host": server.host, "port": str(server.port), "user": server.user,
        "key_file": str(server.client_key_path), "known_hosts": str(server.known_hosts_path),
        "timeout": "10"})


def _job(site: Site, name: str) -> dict[str, Any]:
    job: dict[str, Any] = site.result(name)["job"]
    return job


def test_an_input_swapped_for_a_link_after_validation_is_not_staged(any_site: Site) -> None:
    site = any_site
    doc = site.upper_job("swap", "innocent\n")
    site.drop("swap", doc)
    sub = site.submitter()
    receive_one(site.cfg, sub.spool, "swap", PassReport(), sub._finish)
    assert site.state("swap") == "received"
    media = Path(doc["input_map"]["input"])
    media.unlink()
    media.symlink_to(make_secret(site))
    site.drain(["swap"], sub=sub)
    job = _job(site, "swap")
    assert job["status"] == "error" and job["reason"] == "unsafe", job
    assert "symbolic link" in job["message"]
    assert not Path(doc["output_map"]["output"]).exists()
    nothing_leaked(site)


def test_a_job_whose_output_is_a_link_gets_an_error_and_nothing_is_copied(
        any_site: Site) -> None:
    site = any_site
    target = site.out("linked.txt")
    site.drop("lnk", {"script": "link_out", "args": {"target": str(make_secret(site))},
                      "output_map": {"output": str(target)}})
    site.drain(["lnk"])
    job = _job(site, "lnk")
    assert job["status"] == "error", job
    assert not target.exists() and not target.is_symlink()
    nothing_leaked(site)


def test_a_job_that_links_its_stdout_to_a_secret_leaks_nothing(any_site: Site) -> None:
    site = any_site
    site.drop("log", {"script": "link_log", "args": {"target": str(make_secret(site))},
                      "output_map": {"output": str(site.out("log.txt"))}})
    site.drain(["log"])
    assert SECRET not in site.result_path("log").read_text()
    nothing_leaked(site)


def test_a_job_growing_its_journal_is_read_with_bounds(any_site: Site) -> None:
    site = any_site
    site.drop("grow", {"script": "grow_runs", "output_map": {"output": str(site.out("g.txt"))}})
    site.drain(["grow"])
    job = _job(site, "grow")
    assert 1000 < job["attempts"] <= MAX_RUNS_BYTES // 40, job["attempts"]  # forged, bounded
    assert site.result_path("grow").stat().st_size < 4 << 20


@pytest.fixture
def claimed(any_site: Site) -> Iterator[tuple[Site, Any]]:
    """A two-output job held by a pilot (it sleeps), for changes before collection."""
    site = any_site
    (site.root / "results" / "sub").mkdir()
    site.drop("two", {"script": "two_outputs", "args": {"seconds": 1.5},
                      "output_map": {"out1": str(site.out("sub/o1.txt")),
                                     "out2": str(site.out("sub/o2.txt"))}})
    sub = site.pass_until(lambda: site.state("two") == "claimed")
    yield site, sub


def test_an_output_directory_swapped_for_a_link_is_never_written_through(
        claimed: tuple[Site, Any]) -> None:
    site, sub = claimed
    elsewhere = site.root / "elsewhere"
    elsewhere.mkdir()
    (site.root / "results" / "sub").rename(site.root / "results" / "sub.real")
    (site.root / "results" / "sub").symlink_to(elsewhere)
    site.drain(["two"], sub=sub)
    assert _job(site, "two")["status"] == "error"
    assert list(elsewhere.iterdir()) == []


def test_on_error_no_output_is_touched(claimed: tuple[Site, Any]) -> None:
    site, sub = claimed
    first = site.out("sub/o1.txt")
    first.write_text("original\n")
    site.out("sub/o2.txt").mkdir()  # the second output can no longer be replaced
    site.drain(["two"], sub=sub)
    assert _job(site, "two")["status"] == "error"
    assert first.read_text() == "original\n"
    assert sorted(p.name for p in (site.root / "results" / "sub").iterdir()) == [
        "o1.txt", "o2.txt"], "a temp file was left behind"


def test_a_file_named_like_an_option_reaches_the_tool_as_a_file(site: Site) -> None:
    media = site.root / "media" / "-n"
    media.write_text("dash\n")
    site.drop("dash", {"script": "copy", "input_map": {"input": str(media)},
                       "output_map": {"output": str(site.out("dash.txt"))}})
    site.drain(["dash"])
    assert _job(site, "dash")["status"] == "ok"
    assert site.out("dash.txt").read_text() == "dash\n"


def test_inputs_flipping_to_a_link_during_passes_never_leak(any_site: Site) -> None:
    """The race, repeated: a thread flips every input between a file and a link to a secret."""
    site = any_site
    secret = make_secret(site)
    names = ["race%02d" % i for i in range(12)]
    inputs = []
    for name in names:
        site.drop(name, site.upper_job(name, "plain\n"))
        inputs.append(site.root / "media" / (name + ".txt"))
    with flipping(inputs, secret):
        site.drain(names, timeout=120)
    for name in names:
        out = site.out(name + ".upper")
        if _job(site, name)["status"] == "ok":
            assert out.read_text() == "PLAIN\n"
        assert not out.exists() or SECRET not in out.read_text()
    nothing_leaked(site)


def test_a_config_with_the_spool_under_an_output_root_is_refused(site: Site) -> None:
    site.write_config(spool={"path": str(site.root / "results" / "spool")})
    try:
        with pytest.raises(ConfigError, match=r"\[spool\] path .* overlaps .*output_roots"):
            load_config(site.config_path)
    finally:
        site.write_config()


def test_a_spool_under_an_allowed_root_is_refused(site: Site) -> None:
    site.write_config(dropbox={"allowed_input_roots": str(site.root / "dropbox"),
                               "allowed_output_roots": str(site.root / "results")},
                      spool={"path": str(site.root / "dropbox" / ".hpc-batch")})
    try:
        with pytest.raises(ConfigError, match="keep them apart"):
            load_config(site.config_path)
    finally:
        site.write_config()


def test_the_default_roots_and_spool_are_apart(site: Site) -> None:
    """Roots default to the dropbox; the spool defaults to a private state directory."""
    site.config_path.write_text(
        "[dropbox]\npath = %s\n[hpc_env]\nworkspace = %s\nscripts = /s\ncontainers = /c\n"
        % (site.root / "dropbox", site.root / "hpc" / "workspace"))
    try:
        cfg = load_config(site.config_path)
        assert not cfg.spool.is_relative_to(site.root / "dropbox")
    finally:
        site.write_config()


def test_an_output_directory_flipping_to_a_link_during_passes_is_never_written_through(
        site: Site) -> None:
    """The race, repeated: a thread swaps the output directory for a link elsewhere and back."""
    sub_dir, real = site.root / "results" / "sub", site.root / "results" / "sub.real"
    sub_dir.mkdir()
    elsewhere = site.root / "elsewhere"
    elsewhere.mkdir()
    names = ["flip%02d" % i for i in range(12)]
    for name in names:
        doc = site.upper_job(name, "plain\n")
        doc["output_map"]["output"] = str(sub_dir / (name + ".upper"))
        site.drop(name, doc)
    stop = threading.Event()

    def flip() -> None:
        while not stop.is_set():
            os.rename(sub_dir, real)
            sub_dir.symlink_to(elsewhere)
            time.sleep(0.002)
            sub_dir.unlink()
            os.rename(real, sub_dir)
            time.sleep(0.002)

    thread = threading.Thread(target=flip, daemon=True)
    thread.start()
    try:
        site.drain(names, timeout=180)
    finally:
        stop.set()
        thread.join()
    assert list(elsewhere.iterdir()) == []
    for name in names:
        if _job(site, name)["status"] == "ok":
            assert (sub_dir / (name + ".upper")).read_text() == "PLAIN\n"


def test_several_inputs_are_staged_from_what_was_validated(any_site: Site) -> None:
    site = any_site
    first, second = site.media("one.txt", "one\n"), site.media("-two.txt", "two\n")
    site.drop("cat", {"script": "concat", "input_map": {"first": str(first), "second": str(second)},
                      "output_map": {"output": str(site.out("cat.txt"))}})
    site.drain(["cat"])
    assert _job(site, "cat")["status"] == "ok"
    assert site.out("cat.txt").read_text() == "one\ntwo\n"
    assert not list(site.cfg.spool.glob(".hpc-batch-stage-*"))
