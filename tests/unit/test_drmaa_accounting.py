"""How the drmaa backend reads Grid Engine's accounting (``qacct -j``) to tell a pilot
killed at its h_rt (a walltime release) from any other end (a lost attempt)."""

from __future__ import annotations

import stat
from dataclasses import replace
from pathlib import Path

import pytest

from galaxy_hpc_runner.backends.base import PilotState, PilotStatus
from galaxy_hpc_runner.backends.drmaa_backend import Accounting, end_reason, qacct

H_RT_KILL = Accounting(failed="37  : qmaster enforced h_rt, h_cpu, or h_vmem limit",
                       exit_status="137                  (Killed)", wallclock="6s",
                       category="-l h_rt=5")


def test_an_h_rt_kill_is_a_timeout_like_slurms() -> None:
    reason = end_reason(H_RT_KILL)
    assert reason.startswith("TIMEOUT") and "h_rt" in reason
    assert PilotStatus(PilotState.GONE, reason).timed_out


@pytest.mark.parametrize("record", [
    replace(H_RT_KILL, category="-l h_rt=0:10:0"),  # killed at 6 s of 600: h_vmem or h_cpu
    Accounting(failed="100 : assumedly after job", exit_status="137", category="NONE"),
    Accounting(failed="0", exit_status="0", category="NONE"),
])
def test_other_ends_are_not_timeouts(record: Accounting) -> None:
    assert not PilotStatus(PilotState.GONE, end_reason(record)).timed_out


def test_a_queue_h_rt_without_a_requested_one_still_counts() -> None:
    assert end_reason(replace(H_RT_KILL, category="NONE")).startswith("TIMEOUT")


def _stand_in_qacct(directory: Path, script: str, monkeypatch: pytest.MonkeyPatch) -> None:
    directory.mkdir()
    tool = directory / "qacct"
    tool.write_text("#!/bin/sh\n" + script)
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(directory))


def test_qacct_record_fields_and_a_record_not_yet_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _stand_in_qacct(tmp_path / "bin", 'if [ "$2" = 16 ]; then\n'
                    "echo ==============\necho 'failed       37  : qmaster enforced h_rt'\n"
                    "echo 'category     -l h_rt=5'\necho 'ru_wallclock 6s'\nelse\n"
                    'echo "error: job id $2 not found" >&2; exit 1\nfi\n', monkeypatch)
    record, _ = qacct("16")
    assert record is not None and record.category == "-l h_rt=5" and record.wallclock == "6s"
    assert end_reason(record).startswith("TIMEOUT")
    assert qacct("17") == (None, True)  # may still come: Grid Engine flushes it later


def test_without_qacct_there_is_nothing_to_wait_for(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert qacct("16") == (None, False)
    _stand_in_qacct(tmp_path / "bin", "echo 'error: can not open accounting file' >&2; exit 1\n",
                    monkeypatch)
    assert qacct("16") == (None, False)
