"""The adversarial review of issue 10, replayed end to end over a real sshd and a real Slurm.

One site for the whole module: the ssh transport (a passphrase-protected key whose
passphrase is in the submitter's environment, as a site would have it) and the Slurm
backend behind the sshd, with the workspace reached over SFTP. Each test replays one
attack of the review the way it was reproduced, then checks what the user would check:
the secret appears in no output, result, log or spool record; the file outside the roots
is unchanged; the pass goes on for the other jobs; the error result names the thing.
docs/security.md lists every attack with what happens now and the test here.
"""

from __future__ import annotations

import configparser
import os
import resource
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from galaxy_hpc_runner.config import load_config
from galaxy_hpc_runner.dropbox import receive
from galaxy_hpc_runner.dropbox.boundary import dropbox_warnings
from galaxy_hpc_runner.dropbox.submitter import PassReport
from galaxy_hpc_runner.errors import ConfigError
from hpc_worker import protocol as p
from hpc_worker.records import MAX_RUNS_BYTES
from hpc_worker.states import JobState, Reason, ResultStatus
from tests.adversarial.replaykit import (
    PASSPHRASE,
    PASSPHRASE_VAR,
    SITE_TOKEN,
    ReplaySite,
    run_pass_guarded,
)
from tests.adversarial.secrets import SECRET, flipping, make_secret, nothing_leaked
from tests.services.cluster import SlurmCluster

pytestmark = [pytest.mark.ssh, pytest.mark.slurm]

PWNED = "pwned-by-replay"
NOBODY = 65534


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory,
         slurm_cluster: SlurmCluster) -> Iterator[ReplaySite]:
    with ReplaySite.started(tmp_path_factory, slurm_cluster) as replay:
        yield replay


@pytest.fixture(autouse=True)
def _nothing_leaked_after_each(site: ReplaySite) -> Iterator[None]:
    yield
    nothing_leaked(site)
    assert not list(site.root.rglob(PWNED)), "a value was run as code"


def job(site: ReplaySite, name: str) -> dict[str, Any]:
    data: dict[str, Any] = site.result(name)["job"]
    return data


def error(site: ReplaySite, name: str, reason: Reason | None = None) -> str:
    data = job(site, name)
    assert data["status"] == ResultStatus.ERROR, data
    if reason is not None:
        assert data["reason"] == reason, data
    message: str = data["message"]
    return message


def with_good_job(site: ReplaySite, good: str) -> PassReport:
    """One pass with a good job beside the hostile entries: it must be received in it."""
    site.drop(good, site.upper_job(good))
    report = run_pass_guarded(site.sub)
    assert site.state(good) != "", "the good job was not received in the same pass"
    return report


def finish_ok(site: ReplaySite, *names: str) -> None:
    site.drain(list(names), timeout=90, sub=site.sub)
    for name in names:
        assert job(site, name)["status"] == ResultStatus.OK, job(site, name)


# -- 1. code execution through the spool ---------------------------------------------------
def test_a1_the_old_spool_in_the_dropbox_is_refused_and_an_output_cannot_reach_the_spool(
        site: ReplaySite) -> None:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(site.config_path)
    parser["dropbox"]["allowed_output_roots"] = str(site.root / "dropbox")
    parser["spool"]["path"] = str(site.root / "dropbox" / ".hpc-batch")
    old = site.root / "old-layout.ini"
    with old.open("w") as handle:
        parser.write(handle)
    with pytest.raises(ConfigError, match="keep them apart"):
        load_config(old)
    site.drop("a1seed", site.upper_job("a1seed"))
    finish_ok(site, "a1seed")  # a record to aim at
    target = next(site.cfg.spool.rglob("a1seed.json"))
    before = target.read_bytes()
    doc = site.upper_job("a1")
    doc["output_map"]["output"] = str(target)
    site.drop("a1", doc)
    site.drain(["a1"], sub=site.sub)
    assert "outside the allowed output roots" in error(site, "a1", Reason.INVALID)
    assert target.read_bytes() == before
    assert "run a1" not in site.ledger_lines()


# -- 2. paths checked once, used later -------------------------------------------------------
def test_a2_an_input_swapped_for_a_link_after_validation_is_never_staged(
        site: ReplaySite) -> None:
    secret = make_secret(site)
    doc = site.upper_job("a2", "innocent\n")
    site.drop("a2", doc)
    receive.receive_one(site.cfg, site.sub.spool, "a2", PassReport(), site.sub._finish)
    assert site.state("a2") == JobState.RECEIVED
    media = Path(doc["input_map"]["input"])
    media.unlink()
    media.symlink_to(secret)
    site.drain(["a2"], sub=site.sub)
    assert "symbolic link" in error(site, "a2", Reason.UNSAFE)
    assert not Path(doc["output_map"]["output"]).exists()


def test_a2_an_input_swapped_during_an_hpc_side_outage_is_never_staged(
        site: ReplaySite) -> None:
    secret = make_secret(site)
    names = ["a2out%d" % i for i in range(3)]
    for name in names:
        site.drop(name, site.upper_job(name, "innocent\n"))
        receive.receive_one(site.cfg, site.sub.spool, name, PassReport(), site.sub._finish)
    site.server.stop()
    try:
        for name in names:
            media = site.root / "media" / (name + ".txt")
            media.unlink()
            media.symlink_to(secret)
        for _ in range(3):
            report = site.sub.run_pass()
            assert not report.ok, report  # the HPC side is down: the pass fails, says so
    finally:
        site.server.start()
    site.drain(names, sub=site.sub)
    for name in names:
        assert "symbolic link" in error(site, name, Reason.UNSAFE)
        assert not site.out(name + ".upper").exists()


def test_a2_inputs_flipping_to_a_link_during_passes_never_leak(site: ReplaySite) -> None:
    secret = make_secret(site)
    names = ["a2race%02d" % i for i in range(8)]
    inputs = []
    for name in names:
        site.drop(name, site.upper_job(name, "plain\n"))
        inputs.append(site.root / "media" / (name + ".txt"))
    with flipping(inputs, secret):
        site.drain(names, timeout=120, sub=site.sub)
    for name in names:
        out = site.out(name + ".upper")
        if job(site, name)["status"] == ResultStatus.OK:
            assert out.read_text() == "PLAIN\n"
        else:
            # refused at receive (a link out of the roots) or at staging (changed since)
            assert job(site, name)["reason"] in (Reason.INVALID, Reason.UNSAFE)
            assert not out.exists()


def test_a3_an_output_directory_swapped_for_a_link_is_never_written_through(
        site: ReplaySite) -> None:
    sub_dir = site.root / "results" / "a3"
    sub_dir.mkdir()
    site.drop("a3", {"script": "two_outputs", "args": {"seconds": 1.5},
                     "output_map": {"out1": str(sub_dir / "o1.txt"),
                                    "out2": str(sub_dir / "o2.txt")}})
    site.pass_until(lambda: site.state("a3") == JobState.CLAIMED, timeout=60, sub=site.sub)
    elsewhere = site.root / "elsewhere-a3"
    elsewhere.mkdir()
    sub_dir.rename(site.root / "results" / "a3.real")
    sub_dir.symlink_to(elsewhere)
    site.drain(["a3"], sub=site.sub)
    assert "a3" in error(site, "a3")
    assert list(elsewhere.iterdir()) == []


def test_a3_an_output_file_swapped_for_a_link_is_replaced_not_written_through(
        site: ReplaySite) -> None:
    victim = site.root / "victim-a3.txt"
    victim.write_text("keep\n")
    out = site.out("a3file.txt")
    site.drop("a3file", {"script": "two_outputs", "args": {"seconds": 1.5},
                         "output_map": {"out1": str(out), "out2": str(site.out("a3file2"))}})
    site.pass_until(lambda: site.state("a3file") == JobState.CLAIMED, timeout=60,
                    sub=site.sub)
    out.symlink_to(victim)
    finish_ok(site, "a3file")
    assert victim.read_text() == "keep\n"
    assert not out.is_symlink() and out.read_text() == "first\n"


def test_a4_a_job_linking_its_output_to_a_secret_copies_nothing(site: ReplaySite) -> None:
    target = site.out("a4.txt")
    site.drop("a4", {"script": "link_out", "args": {"target": str(make_secret(site))},
                     "output_map": {"output": str(target)}})
    site.drain(["a4"], sub=site.sub)
    assert "link" in error(site, "a4", Reason.UNSAFE)
    assert not target.exists() and not target.is_symlink()


def test_a4_a_job_linking_its_stdout_to_a_secret_leaks_nothing(site: ReplaySite) -> None:
    site.drop("a4log", {"script": "link_log", "args": {"target": str(make_secret(site))},
                        "output_map": {"output": str(site.out("a4log.txt"))}})
    site.drain(["a4log"], sub=site.sub)
    assert p.STDOUT in error(site, "a4log", Reason.UNSAFE)
    assert SECRET not in site.result_path("a4log").read_text()
    assert not site.out("a4log.txt").exists()


@pytest.mark.parametrize("template, named", [
    ("fifo_out", "a4fifo_out"), ("dir_out", "a4dir_out"), ("fifo_stdout", p.STDOUT),
    ("link_stderr", p.STDERR)])
def test_a4_what_a_job_leaves_instead_of_a_file_is_an_error_and_never_blocks(
        site: ReplaySite, template: str, named: str) -> None:
    name = "a4" + template
    site.drop(name, {"script": template, "args": {"target": str(make_secret(site))},
                     "output_map": {"output": str(site.out(name))}})
    deadline = time.monotonic() + 60
    while not site.result_path(name).exists() and time.monotonic() < deadline:
        run_pass_guarded(site.sub)  # a pass that blocks on a FIFO fails here
        time.sleep(0.05)
    assert named in error(site, name, Reason.UNSAFE)
    assert not site.out(name).exists() and not site.out(name).is_symlink()


# -- 3. a symlinked NAME.job -------------------------------------------------------------
def test_a5_a_symlinked_description_is_refused_and_its_target_never_copied(
        site: ReplaySite) -> None:
    (site.root / "dropbox" / "a5.job").symlink_to(make_secret(site))
    with_good_job(site, "a5good")
    assert "symbolic link" in error(site, "a5", Reason.INVALID)
    finish_ok(site, "a5good")


# -- 4. one description stops every job ------------------------------------------------------
@pytest.mark.parametrize("text, why", [
    ("script: upper\nmeta: {when: 2024-01-01}\n", "a date or time"),
    ("script: upper\nmeta: {b: !!binary aGVsbG8=}\n", "binary data"),
    ("script: upper\nmeta: {s: !!set {a, b}}\n", "a set"),
], ids=["date", "binary", "set"])
def test_a6_yaml_that_is_not_plain_data_is_its_own_error(
        site: ReplaySite, text: str, why: str, request: pytest.FixtureRequest) -> None:
    name = "a6" + request.node.callspec.id
    site.drop(name, text=text)
    with_good_job(site, name + "good")
    message = error(site, name, Reason.INVALID)
    assert why in message and "line" in message
    finish_ok(site, name + "good")


def test_a7_names_of_243_to_251_bytes_never_stop_a_pass(site: ReplaySite) -> None:
    for length in (242, 243, 247, 251):
        (site.root / "dropbox" / ("m" * length + ".job")).write_text("script: upper\n")
    with_good_job(site, "a7good")
    assert "job name" in error(site, "m" * 242, Reason.INVALID)
    assert not [n for n in os.listdir(site.root / "dropbox")
                if n.startswith("m" * 243) and n.endswith(".finished")]
    run_pass_guarded(site.sub)  # logged once, left alone: the next pass is not stopped either
    finish_ok(site, "a7good")
    for length in (242, 243, 247, 251):
        os.unlink(site.root / "dropbox" / ("m" * length + ".job"))


def test_a8_an_input_whose_real_name_is_not_utf8_is_an_error_result(site: ReplaySite) -> None:
    media = os.fsencode(str(site.root / "media"))
    with open(media + b"/a8-r\xe9al.txt", "wb") as handle:
        handle.write(b"data\n")
    os.symlink(b"a8-r\xe9al.txt", media + b"/a8-nice.txt")
    doc = site.upper_job("a8")
    doc["input_map"]["input"] = str(site.root / "media" / "a8-nice.txt")
    site.drop("a8", doc)
    with open(os.fsencode(str(site.root / "dropbox")) + b"/a8caf\xe9.job", "wb") as handle:
        handle.write(b"script: upper\n")
    with_good_job(site, "a8good")
    assert "not valid UTF-8" in error(site, "a8", Reason.INVALID)
    assert os.path.exists(os.fsencode(str(site.root / "dropbox")) + b"/a8caf\xe9.job.finished")
    finish_ok(site, "a8good")


def test_a9_a_fifo_named_like_a_job_is_an_error_not_a_hang(site: ReplaySite) -> None:
    os.mkfifo(site.root / "dropbox" / "a9.job")
    with_good_job(site, "a9good")
    assert "a FIFO, not a regular file" in error(site, "a9", Reason.INVALID)
    finish_ok(site, "a9good")


# -- 5. resource exhaustion ------------------------------------------------------------------
def test_a10_an_alias_bomb_costs_nothing(site: ReplaySite) -> None:
    bomb = "script: upper\nmeta:\n  a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        "  %s: &%s [*%s, *%s, *%s, *%s, *%s, *%s, *%s, *%s, *%s]\n"
        % ((chr(98 + i),) * 2 + (chr(97 + i),) * 9) for i in range(8))
    assert len(bomb) < 600
    site.drop("a10", text=bomb)
    started = time.monotonic()
    with_good_job(site, "a10good")
    assert time.monotonic() - started < 20
    assert "aliases are expanded" in error(site, "a10", Reason.INVALID)
    assert all(f.stat().st_size < 100_000 for f in site.cfg.spool.rglob("*.json"))
    finish_ok(site, "a10good")


def test_a11_walltime_nan_is_an_error_and_submits_no_pilot(site: ReplaySite) -> None:
    site.drop("a11seed", site.upper_job("a11seed"))
    finish_ok(site, "a11seed")  # nothing else waits: any new pilot would be for the .nan job
    doc = site.upper_job("a11")
    site.drop("a11", text="script: upper\ninput_map: {input: %s}\noutput_map: {output: %s}\n"
              "walltime: .nan\n" % (doc["input_map"]["input"], doc["output_map"]["output"]))
    before = {pilot.pilot_id for pilot in site.spool.pilots()}
    for _ in range(5):
        site.sub.run_pass()
    assert "walltime" in error(site, "a11", Reason.INVALID)
    assert {pilot.pilot_id for pilot in site.spool.pilots()} <= before


def test_a12_a_job_growing_its_journal_to_85_mb_is_read_with_bounds(
        site: ReplaySite) -> None:
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    site.drop("a12", {"script": "grow_runs_65mb", "output_map": {"output": str(site.out("a12"))}})
    site.drain(["a12"], timeout=120, sub=site.sub)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    # only the last MAX_RUNS_BYTES are read: the job can forge its count in there, no more
    assert 1000 < job(site, "a12")["attempts"] <= MAX_RUNS_BYTES // 40, job(site, "a12")
    assert site.result_path("a12").stat().st_size < 4 << 20
    assert grown < 300 * 1024, "collection grew the submitter by %d KiB" % grown


# -- 6. template quoting ---------------------------------------------------------------------
@pytest.mark.parametrize("template, line", [
    ("ctx_double_quotes", 2), ("ctx_heredoc", 3), ("ctx_backticks", 2), ("ctx_arith", 2)])
def test_a13_a_placeholder_in_a_quoting_context_is_a_template_error_and_runs_nothing(
        site: ReplaySite, template: str, line: int) -> None:
    name = "a13" + template
    site.drop(name, {"script": template, "args": {"value": "$(touch %s)`touch %s`" % (
        PWNED, PWNED)}, "output_map": {"output": str(site.out(name))}})
    with_good_job(site, name + "good")
    message = error(site, name, Reason.INVALID)
    assert "%s.sh:%d:" % (template, line) in message, message  # file:line:column
    assert not site.out(name).exists()
    finish_ok(site, name + "good")


def test_a13_the_shipped_demo_template_runs_no_output_name(site: ReplaySite) -> None:
    out = site.out("a13 $(touch %s) `touch %s`.txt" % (PWNED, PWNED))
    site.drop("a13demo", {"script": "shout", "args": {"seconds": 0},
                          "input_map": {"input": str(site.media("a13demo.txt", "demo\n"))},
                          "output_map": {"output": str(out)}})
    finish_ok(site, "a13demo")
    assert out.read_text() == "DEMO\n"


def test_a13_values_and_file_names_full_of_shell_syntax_arrive_as_bytes(
        site: ReplaySite) -> None:
    value = "$(touch %s) `touch %s`; touch %s\n'\"\\ $HOME ${x:-y} * ~ -n" % ((PWNED,) * 3)
    site.drop("a13arg", {"script": "echo_arg", "args": {"value": value},
                         "output_map": {"output": str(site.out("a13arg.txt"))}})
    odd = "-a13 $(touch %s) 'q\" `x` ; * ~.txt" % PWNED
    media = site.media(odd, "odd\n")
    site.drop("a13file", {"script": "copy", "input_map": {"input": str(media)},
                          "output_map": {"output": str(site.out("out " + odd))}})
    finish_ok(site, "a13arg", "a13file")
    assert site.out("a13arg.txt").read_text() == value
    assert site.out("out " + odd).read_text() == "odd\n"


def test_a14_a_nul_in_an_arg_is_an_error_result(site: ReplaySite) -> None:
    site.drop("a14", text='script: echo_arg\nargs: {value: "a\\0b"}\n'
              "output_map: {output: %s}\n" % site.out("a14.txt"))
    with_good_job(site, "a14good")
    assert "NUL" in error(site, "a14", Reason.INVALID)
    assert "run a14" not in site.ledger_lines()
    finish_ok(site, "a14good")


def test_a15_a_basename_starting_with_a_dash_reaches_the_tool_as_a_file(
        site: ReplaySite) -> None:
    media = site.root / "media" / "-n"
    media.write_text("dash\n")
    site.drop("a15", {"script": "copy", "input_map": {"input": str(media)},
                      "output_map": {"output": str(site.out("a15.txt"))}})
    finish_ok(site, "a15")
    assert site.out("a15.txt").read_text() == "dash\n"


# -- 7. secrets and modes --------------------------------------------------------------------
def test_a16_jobs_never_see_the_passphrase_or_the_login_secrets(site: ReplaySite) -> None:
    assert os.environ[PASSPHRASE_VAR] == PASSPHRASE  # the submitter connects with it
    site.drop("a16", {"script": "env_dump", "output_map": {"output": str(site.out("a16.env"))}})
    finish_ok(site, "a16")
    seen = site.out("a16.env").read_text()
    assert "HPC_BATCH_JOB=" in seen  # the dump is the job's environment
    assert PASSPHRASE_VAR not in seen and PASSPHRASE not in seen
    assert SITE_TOKEN not in seen


def test_a17_modes_follow_the_umask_and_the_spool_is_private(site: ReplaySite) -> None:
    private = site.media("a17.txt", "mine\n")
    private.chmod(0o600)
    old = os.umask(0o077)
    try:
        site.drop("a17", site.upper_job("a17", "mine\n"))
        site.drop("a17mode", {"script": "input_mode", "input_map": {"input": str(private)},
                              "output_map": {"output": str(site.out("a17.mode"))}})
        finish_ok(site, "a17", "a17mode")
    finally:
        os.umask(old)
    assert site.out("a17.upper").read_text() == "MINE\n"
    assert int(site.out("a17.mode").read_text(), 8) & 0o077 == 0  # staged over SFTP: private
    for path in (site.out("a17.upper"), site.out("a17.mode"), site.result_path("a17")):
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path
    spool = site.cfg.spool
    assert stat.S_IMODE(spool.stat().st_mode) == 0o700
    assert stat.S_IMODE((spool / "lock").stat().st_mode) == 0o600
    for path in spool.rglob("a17*.json"):  # its records were written under that umask
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path


@pytest.mark.skipif(os.geteuid() != 0, reason="acting as another user (nobody) needs root")
def test_a18_other_users_can_neither_hold_the_lock_nor_touch_the_spool(
        site: ReplaySite) -> None:
    dropbox = site.root / "dropbox"
    dropbox.chmod(0o777)
    try:
        assert "without the sticky bit" in " ".join(dropbox_warnings(site.cfg))
        probe = ("import fcntl, os, sys\nfor path in sys.argv[1:]:\n"
                 "    try:\n        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)\n"
                 "        fcntl.flock(fd, fcntl.LOCK_EX)\n        print('TOOK', path)\n"
                 "    except OSError as exc:\n        print('REFUSED', path, exc.errno)\n")
        spool = site.cfg.spool
        attacker = subprocess.run(
            ["python3", "-c", probe, str(spool / "lock"), str(spool / "jobs" / "x.json")],
            user=NOBODY, group=NOBODY, capture_output=True, text=True, timeout=30)
        assert "TOOK" not in attacker.stdout, attacker.stdout
        assert attacker.stdout.count("REFUSED") == 2, attacker
        with_good_job(site, "a18good")
    finally:
        dropbox.chmod(0o755)
    finish_ok(site, "a18good")


# -- 8. contract breaks ----------------------------------------------------------------------
def test_a19_an_error_result_touches_no_output(site: ReplaySite) -> None:
    sub_dir = site.root / "results" / "a19"
    sub_dir.mkdir()
    first = sub_dir / "o1.txt"
    first.write_text("original\n")
    site.drop("a19", {"script": "two_outputs", "args": {"seconds": 1.5},
                      "output_map": {"out1": str(first), "out2": str(sub_dir / "o2.txt")}})
    site.pass_until(lambda: site.state("a19") == JobState.CLAIMED, timeout=60, sub=site.sub)
    (sub_dir / "o2.txt").mkdir()  # the second output can no longer be replaced
    site.drain(["a19"], sub=site.sub)
    assert "o2.txt" in error(site, "a19")
    assert first.read_text() == "original\n"
    assert sorted(path.name for path in sub_dir.iterdir()) == ["o1.txt", "o2.txt"]


def test_a20_a_resubmitted_name_is_a_new_job(site: ReplaySite) -> None:
    site.drop("a20", site.upper_job("a20", "first\n"))
    finish_ok(site, "a20")
    site.drop("a20", site.upper_job("a20", "second\n"))
    site.sub.run_pass()  # sets the old result aside, receives the new description
    finish_ok(site, "a20")
    assert site.out("a20.upper").read_text() == "SECOND\n"
    assert site.ledger_lines().count("run a20") == 2
    kept = list((site.root / "dropbox").glob("a20.job.finished.replaced-*"))
    assert len(kept) == 1 and "status: ok" in kept[0].read_text()


def _replace_job_json(site: ReplaySite, name: str, text: str) -> None:
    """What a hostile writer of the workspace does to a staged job's ``job.json``."""
    meta = Path(p.job_dir(site.cfg.workspace, site.key(name))) / p.META
    tmp = meta.with_name(".hostile")
    tmp.write_text(text)
    os.replace(tmp, meta)


def test_a21_a_hostile_job_json_never_makes_the_pilot_touch_outside_the_workspace(
        site: ReplaySite) -> None:
    victim = site.root / "victim.txt"
    victim.write_text("keep\n")
    site.drop("a21block", site.sleepy_job("a21block", 3))  # holds the one slot meanwhile
    site.pass_until(lambda: site.state("a21block") == JobState.CLAIMED, timeout=60,
                    sub=site.sub)
    site.drop("a21", site.upper_job("a21"))
    site.drop("a21garbled", site.upper_job("a21garbled"))
    site.pass_until(lambda: site.state("a21") == site.state("a21garbled") == JobState.STAGED,
                    sub=site.sub)
    job_dir = Path(p.job_dir(site.cfg.workspace, site.key("a21")))
    escape = "../" * len(job_dir.relative_to(site.root).parts) + victim.name
    _replace_job_json(site, "a21", '{"key": "%s", "inputs": ["../../../../etc/passwd"], '
                      '"outputs": ["%s"]}' % (site.key("a21"), escape))
    _replace_job_json(site, "a21garbled", '{"key": ')
    site.drain(["a21", "a21garbled", "a21block"], sub=site.sub)
    assert "not a plain file name" in error(site, "a21", Reason.INVALID)
    assert "not valid JSON" in error(site, "a21garbled", Reason.INVALID)
    assert victim.read_text() == "keep\n"
    assert Path("/etc/passwd").exists()
    assert job(site, "a21block")["status"] == ResultStatus.OK
    site.drop("a21after", site.upper_job("a21after"))
    finish_ok(site, "a21after")
    assert job(site, "a21after")["pilot"] == job(site, "a21block")["pilot"], "the pilot died"
