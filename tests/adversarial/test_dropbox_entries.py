"""Hostile dropbox entries: each becomes its own error result, in one pass, and the pass goes on.

Every test drops a good job beside the hostile entry and checks that the good
one was received in the same pass: one bad description never stops others.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from galaxy_hpc_runner.dropbox import description as d
from galaxy_hpc_runner.dropbox import receive
from galaxy_hpc_runner.dropbox.submitter import PassReport
from tests.adversarial.secrets import make_secret, nothing_leaked
from tests.sitekit import Site


def _pass_with_good_job(site: Site) -> PassReport:
    site.drop("good", site.upper_job("good"))
    report = _run_pass(site)
    assert site.state("good") != "", "the good job was not received in the same pass"
    return report


def _run_pass(site: Site, timeout: float = 30.0) -> PassReport:
    """One pass in a thread: a pass that blocks (a FIFO read) fails the test, not hangs it."""
    out: list[Any] = []
    sub = site.submitter()
    thread = threading.Thread(target=lambda: out.append(sub.run_pass()), daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "the pass blocked"
    assert out, "the pass raised"
    report: PassReport = out[0]
    return report


def _error(site: Site, name: str) -> str:
    job = site.result(name)["job"]
    assert job["status"] == "error"
    message: str = job["message"]
    return message


def test_a_symlinked_description_is_refused_and_its_target_never_copied(site: Site) -> None:
    (site.root / "dropbox" / "evil.job").symlink_to(make_secret(site))
    _pass_with_good_job(site)
    assert "symbolic link" in _error(site, "evil")
    nothing_leaked(site)


def test_a_fifo_named_like_a_job_is_an_error_not_a_hang(site: Site) -> None:
    os.mkfifo(site.root / "dropbox" / "pipe.job")
    _pass_with_good_job(site)
    assert "a FIFO, not a regular file" in _error(site, "pipe")


def test_a_directory_named_like_a_job_is_an_error(site: Site) -> None:
    (site.root / "dropbox" / "dir.job").mkdir()
    _pass_with_good_job(site)
    assert "a directory, not a regular file" in _error(site, "dir")


def test_an_oversized_description_is_refused_without_reading_it(site: Site) -> None:
    site.drop("huge", text="script: upper\nmeta: '" + "x" * (2 << 20) + "'\n")
    _pass_with_good_job(site)
    assert "more than the" in _error(site, "huge")


@pytest.mark.parametrize("text,why", [
    ("script: upper\nmeta: {when: 2024-01-01}\n", "a date or time"),
    ("script: upper\nmeta: {b: !!binary aGVsbG8=}\n", "binary data"),
    ("script: upper\nmeta: {s: !!set {a, b}}\n", "a set"),
    ("script: upper\nmeta: !!python/object/apply:os.system [touch pwned]\n", "python"),
    ("script: upper\nmeta: 1" + "0" * 5000 + "\n", "cannot be read"),
    (b"script: upper\nmeta: \xff\xfe\n", "not UTF-8"),
])
def test_values_that_are_not_plain_data_are_refused_by_line(
        site: Site, text: str | bytes, why: str) -> None:
    path = site.root / "dropbox" / "odd.job"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    _pass_with_good_job(site)
    assert why in _error(site, "odd")
    assert not (site.root / "pwned").exists()


def test_an_alias_bomb_costs_nothing(site: Site) -> None:
    bomb = "script: upper\nmeta:\n  a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        "  %s: &%s [*%s, *%s, *%s, *%s, *%s, *%s, *%s, *%s, *%s]\n"
        % ((chr(98 + i),) * 2 + (chr(97 + i),) * 9) for i in range(8))
    site.drop("bomb", text=bomb)
    started = time.monotonic()
    _pass_with_good_job(site)
    assert time.monotonic() - started < 10
    assert "aliases are expanded" in _error(site, "bomb")
    assert all(p.stat().st_size < 100_000 for p in site.cfg.spool.rglob("*") if p.is_file())


@pytest.mark.parametrize("walltime", [".nan", ".inf", "-.inf", "-5", "0", "'nan'", "'inf'",
                                      "'1e999'"])
def test_walltime_must_be_finite_and_positive(site: Site, walltime: str) -> None:
    doc = site.upper_job("w")
    site.drop("w", text="script: upper\ninput_map: {input: %s}\noutput_map: {output: %s}\n"
              "walltime: %s\n" % (doc["input_map"]["input"], doc["output_map"]["output"],
                                  walltime))
    _pass_with_good_job(site)
    assert "walltime" in _error(site, "w")


@pytest.mark.parametrize("length", [201, 242, 243, 247, 251])
def test_long_names_never_break_a_pass(site: Site, length: int) -> None:
    name = "n" * length
    path = site.root / "dropbox" / (name + d.SUFFIX)
    path.write_text("script: upper\n")
    _pass_with_good_job(site)
    if receive.answerable(name):
        assert "job name" in _error(site, name)
    else:  # NAME.job.finished cannot exist: the entry is left alone, logged once
        assert not any(n.endswith(d.FINISHED_SUFFIX) and n.startswith("nnn")
                       for n in os.listdir(site.root / "dropbox"))
        _run_pass(site)  # and the next pass is not stopped either


def test_a_file_name_that_is_not_utf8_is_answered(site: Site) -> None:
    raw = os.fsencode(str(site.root / "dropbox")) + b"/caf\xe9.job"
    with open(raw, "wb") as handle:
        handle.write(b"script: upper\n")
    _pass_with_good_job(site)
    results = [n for n in os.listdir(os.fsencode(str(site.root / "dropbox")))
               if n.endswith(b".job.finished") and n.startswith(b"caf")]
    assert results == [b"caf\xe9.job.finished"]


def test_an_input_whose_real_name_is_not_utf8_is_an_error_result(site: Site) -> None:
    media = os.fsencode(str(site.root / "media"))
    with open(media + b"/r\xe9al.txt", "wb") as handle:
        handle.write(b"data\n")
    os.symlink(b"r\xe9al.txt", media + b"/nice.txt")
    doc = site.upper_job("u")
    doc["input_map"]["input"] = str(site.root / "media" / "nice.txt")
    site.drop("u", doc)
    _pass_with_good_job(site)
    assert "not valid UTF-8" in _error(site, "u")


def test_an_unexpected_exception_is_that_descriptions_error_result(
        site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    real = d.validate

    def flaky(name: str, doc: dict[str, Any], cfg: Any) -> d.Job:
        if name == "boom":
            raise RuntimeError("something nobody expected")
        return real(name, doc, cfg)

    monkeypatch.setattr(d, "validate", flaky)
    site.drop("boom", site.upper_job("boom"))
    _pass_with_good_job(site)
    assert "RuntimeError: something nobody expected" in _error(site, "boom")


def test_a_nul_in_an_arg_is_an_error_result(site: Site) -> None:
    site.drop("nul", text='script: echo_arg\nargs: {value: "a\\0b"}\n'
              "output_map: {output: %s}\n" % site.out("nul.txt"))
    _pass_with_good_job(site)
    assert "NUL" in _error(site, "nul")


def test_an_output_that_would_be_a_description_in_the_dropbox_is_refused(
        make_site: Any, tmp_path: Path) -> None:
    site = make_site(dropbox={"allowed_output_roots": "%s %s" % (
        tmp_path / "results", tmp_path / "dropbox")}, spool={"path": str(tmp_path / "spool")})
    site.drop("spoof", {"script": "upper",
                        "input_map": {"input": str(site.media("s.txt"))},
                        "output_map": {"output": str(site.root / "dropbox" / "x.job")}})
    _pass_with_good_job(site)
    assert "would be a job description or result in the dropbox" in _error(site, "spoof")
