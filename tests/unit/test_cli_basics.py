"""CLI habits: --version, examples in every --help, the exit-code table, HPC_BATCH_CONFIG,
Ctrl-C without a traceback, check's exit code."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from galaxy_hpc_runner.cli.exitcodes import Exit
from galaxy_hpc_runner.cli.parser import EXAMPLES, build_parser

PROJECT = Path(__file__).resolve().parents[2]


def hpc_batch(*args: str, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ, PYTHONPATH=str(PROJECT))
    full.pop("HPC_BATCH_CONFIG", None)
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "galaxy_hpc_runner.cli", *args],
                          capture_output=True, text=True, timeout=60, env=full,
                          cwd=cwd or PROJECT)


def site(root: Path) -> Path:
    for sub in ("dropbox", "media", "ws"):
        (root / sub).mkdir(exist_ok=True)
    config = root / "site.ini"
    config.write_text("[dropbox]\npath = dropbox\nallowed_input_roots = media\n"
                      "allowed_output_roots = media\n[hpc_env]\nworkspace = %s/ws\n"
                      "scripts = /s\ncontainers = /c\n" % root)
    return config


def test_version_names_the_release_and_the_pilot_protocol() -> None:
    from galaxy_hpc_runner import __version__
    from hpc_worker.records import PROTOCOL_VERSION

    proc = hpc_batch("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip().startswith("hpc-batch %s (pilot protocol %d" % (
        __version__, PROTOCOL_VERSION))


def test_every_command_has_examples_and_the_top_help_has_the_exit_codes() -> None:
    parser = build_parser()
    action = parser._subparsers._group_actions[0]  # type: ignore[union-attr]
    commands: dict[str, argparse.ArgumentParser] = dict(action.choices)  # type: ignore[arg-type]
    for name, sub in commands.items():
        if name == "simulate":  # its own parser, with its own examples
            continue
        assert name in EXAMPLES, name
        assert "examples:\n  hpc-batch" in sub.format_help() or name == "submitter", name
    top = parser.format_help()
    for code in Exit:
        assert "\n  %3d  " % code in top


def test_exit_codes_do_not_collide() -> None:
    assert len({int(c) for c in Exit}) == len(Exit)


def test_the_config_may_come_from_the_environment(tmp_path: Path) -> None:
    config = site(tmp_path)
    proc = hpc_batch("check", env={"HPC_BATCH_CONFIG": str(config)}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "%s: OK" % config in proc.stdout
    missing = hpc_batch("status", cwd=tmp_path)
    assert missing.returncode == Exit.USAGE
    assert "status needs --config FILE (or HPC_BATCH_CONFIG in the environment)" in missing.stderr


def test_check_exits_3_on_an_invalid_config(tmp_path: Path) -> None:
    config = site(tmp_path)
    config.write_text(config.read_text() + "[pilot]\npartition = gpu\n")
    proc = hpc_batch("--config", str(config), "check")
    assert proc.returncode == Exit.INVALID
    assert "[pilot] unknown key 'partition': it belongs in [scheduler]" in proc.stdout


def test_an_unknown_job_exits_7_for_show_logs_and_cancel(tmp_path: Path) -> None:
    config = site(tmp_path)
    for command in ("show", "logs", "cancel"):
        proc = hpc_batch(command, "nope", "--config", str(config))
        assert proc.returncode == Exit.NO_SUCH_JOB, (command, proc.stderr)
        assert "no job named 'nope'" in proc.stderr and "Traceback" not in proc.stderr


def test_ctrl_c_exits_130_without_a_traceback(tmp_path: Path) -> None:
    config = site(tmp_path)
    job = tmp_path / "x.job"
    job.write_text("script: nothing\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "galaxy_hpc_runner.cli", "submit", str(job), "--wait",
         "--config", str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=str(PROJECT)),
        # Ctrl-C as from a terminal, also when the suite itself was started with SIGINT
        # ignored (a background job of a shell without job control): the child inherits that
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stdout is not None
    proc.stdout.readline()  # the job's name: it is waiting now
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == Exit.INTERRUPTED
    assert "Traceback" not in err and "hpc-batch: interrupted" in err


@pytest.mark.parametrize("argv", [["--help"], ["jobs", "--help"], ["submit", "--help"]])
def test_help_works_without_a_config(argv: list[str]) -> None:
    proc = hpc_batch(*argv)
    assert proc.returncode == 0 and "examples:" in proc.stdout
