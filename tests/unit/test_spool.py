"""The spool on real files: privacy, unreadable records, transitions, resubmission, temps."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest

from galaxy_hpc_runner.dropbox import safefs
from galaxy_hpc_runner.dropbox.spool import (
    JobRecord,
    Spool,
    SpoolError,
)
from galaxy_hpc_runner.dropbox.userfiles import (
    OUTPUT_TEMP_MARK,
    is_resubmission,
    remove_stale_output_temps,
    set_aside_result,
)
from galaxy_hpc_runner.errors import HpcBatchError
from hpc_worker.states import JobState


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_spool_directory_is_private_even_when_it_existed_wider(tmp_path: Path) -> None:
    path = tmp_path / "spool"
    path.mkdir(mode=0o755)
    os.chmod(path, 0o755)
    spool = Spool(path)
    assert _mode(path) == 0o700
    for sub in (spool.jobs, spool.finished, spool.pilots_dir):
        assert sub.is_dir()


def test_the_lock_file_is_owner_only_and_never_a_link(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    with spool.lock(1.0):
        assert _mode(spool.path / "lock") == 0o600
    os.chmod(spool.path / "lock", 0o666)
    with spool.lock(1.0):
        assert _mode(spool.path / "lock") == 0o600
    (spool.path / "lock").unlink()
    (spool.path / "lock").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError), spool.lock(1.0):
        pass
    assert not (tmp_path / "elsewhere").exists()


def test_an_unreadable_job_record_is_reported_by_name_never_skipped(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.create("good", {"script": "x"})
    bad = spool.jobs / "bad.json"
    bad.write_text("{not json")
    records = spool.active()
    assert [r.name for r in records] == ["good"]
    problems = spool.take_problems()
    assert len(problems) == 1 and str(bad) in problems[0] and "move it out" in problems[0]
    assert spool.take_problems() == []
    assert "bad" in spool.active_names()  # so the dropbox entry is not received again
    with pytest.raises(SpoolError, match=r"bad\.json"):
        spool.get("bad")
    assert spool.get("good") is not None


@pytest.mark.parametrize("text", ['[1, 2]', '{"state": "finished"}', '{"name": "x", '
                                  '"state": "sideways"}'])
def test_records_of_the_wrong_shape_are_unreadable(tmp_path: Path, text: str) -> None:
    spool = Spool(tmp_path / "spool")
    (spool.jobs / "x.json").write_text(text)
    with pytest.raises(SpoolError):
        spool.get("x")


def test_an_unreadable_pilot_record_is_reported(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    (spool.pilots_dir / "pilot-x.json").write_text(json.dumps({"pilot_id": 3}))
    assert spool.pilots() == []
    assert "pilot-x.json" in spool.take_problems()[0]


def test_transitions_follow_the_state_machine_and_note_keeps_the_state(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    rec = spool.create("j", None)
    with pytest.raises(HpcBatchError, match="illegal transition"):
        spool.transition(rec, JobState.CLAIMED)
    spool.transition(rec, JobState.STAGED)
    spool.transition(rec, JobState.CLAIMED, pilot="pilot-a")
    spool.note(rec, fetch_failures=2, message="disk full", not_a_field=1)
    again = spool.get("j")
    assert again is not None and again.state is JobState.CLAIMED
    assert (again.pilot, again.fetch_failures, again.message) == ("pilot-a", 2, "disk full")
    states = [(e["from"], e["to"]) for e in spool.history("j")]
    assert states == [(None, "received"), ("received", "staged"), ("staged", "claimed"),
                      ("claimed", "claimed")]


def test_old_records_without_the_new_counters_still_load(tmp_path: Path) -> None:
    rec = JobRecord.from_json({"name": "old", "state": "staged", "lost": 1, "future": 3})
    assert (rec.state, rec.lost, rec.walltime_kills, rec.withdrawn) == (JobState.STAGED, 1, 0, "")


def test_a_description_newer_than_its_result_is_a_resubmission(tmp_path: Path) -> None:
    job, result = tmp_path / "a.job", tmp_path / "a.job.finished"
    job.write_text("v1")
    time.sleep(0.02)
    result.write_text("result of v1")
    assert not is_resubmission(job, result)
    time.sleep(0.02)
    tmp = tmp_path / ".a.job.tmp"
    tmp.write_text("v2")
    os.utime(tmp, (0, 0))  # even an old file renamed in counts: its change time is now
    tmp.rename(job)
    assert is_resubmission(job, result)
    kept = set_aside_result(result)
    assert kept is not None and kept.read_text() == "result of v1"
    assert kept.name.startswith("a.job.finished.replaced-") and not result.exists()
    assert not is_resubmission(job, result)  # no result: an ordinary new job
    assert set_aside_result(result) is None


def test_stale_output_temps_are_removed_only_for_our_own_pattern(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    ours = tmp_path / safefs.temp_name(target.name)  # the name the fetch gives its temps
    assert ours.name.startswith("." + target.name + OUTPUT_TEMP_MARK)
    ours.write_text("half")
    foreign = [tmp_path / ".tmp-abcdef", tmp_path / ".other.hpc-batch-tmp-1-aa", target]
    for path in foreign:  # a transport's temp, another target's temp, the output itself
        path.write_text("keep")
    (tmp_path / ("." + target.name + OUTPUT_TEMP_MARK + "dir")).mkdir()
    link = tmp_path / ("." + target.name + OUTPUT_TEMP_MARK + "link")
    link.symlink_to(target)
    removed = remove_stale_output_temps([str(target), str(tmp_path / "missing" / "x")])
    assert removed == [str(ours)]
    assert not ours.exists()
    assert all(path.exists() for path in foreign) and link.is_symlink()


def test_a_held_job_has_one_record_written_as_staged_and_both_event_lines(
        tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    rec = spool.create("h1", {"x": 1}, hold=True)
    assert not (spool.jobs / "h1.json").exists()  # nothing on disk yet
    assert spool.get("h1") is rec and "h1" in spool.names(JobState.RECEIVED)
    assert "h1" in spool.active_names() and spool.count(JobState.RECEIVED) == 1
    assert spool.history("h1") == []
    spool.transition(rec, JobState.STAGED)
    on_disk = json.loads((spool.jobs / "h1.json").read_text())
    assert on_disk["state"] == JobState.STAGED
    assert [e["to"] for e in spool.history("h1")] == [JobState.RECEIVED, JobState.STAGED]
    assert Spool(tmp_path / "spool").names(JobState.STAGED) == {"h1"}  # another process


def test_held_jobs_a_pass_did_not_stage_are_written_as_received(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.create("h2", None, hold=True)
    spool.write_held()
    assert json.loads((spool.jobs / "h2.json").read_text())["state"] == JobState.RECEIVED
    assert [e["to"] for e in spool.history("h2")] == [JobState.RECEIVED]
    spool.write_held()  # nothing held any more: nothing written twice
    assert len(spool.history("h2")) == 1
    assert Spool(tmp_path / "spool").names(JobState.RECEIVED) == {"h2"}
