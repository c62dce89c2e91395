"""A job's record file is a short journal: its first line, then a line per later step.

Real files, read back the way every reader reads them (``Spool.get`` in a fresh spool
object, as ``hpc-batch status`` does)."""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from pathlib import Path

import pytest

from galaxy_hpc_runner.dropbox import spool_records
from galaxy_hpc_runner.dropbox.spool import JobRecord, Spool, SpoolError
from hpc_worker.states import JobState


def _staged_then_claimed(path: Path) -> tuple[Spool, JobRecord]:
    spool = Spool(path)
    with spool.lock(1.0):
        rec = spool.create("j", {"script": "x"}, {"key": "k", "big": "y" * 3000})
        spool.transition(rec, JobState.STAGED)
        spool.transition(rec, JobState.CLAIMED, pilot="p1")
    return spool, rec


def test_each_step_is_one_more_line_in_the_same_file_without_the_fixed_fields(
        tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    with spool.lock(1.0):
        rec = spool.create("j", {"script": "x"}, {"key": "k", "big": "y" * 3000})
        path = spool.jobs / "j.json"
        inode = path.stat().st_ino
        spool.transition(rec, JobState.STAGED)
        spool.transition(rec, JobState.CLAIMED, pilot="p1")
    lines = path.read_bytes().split(b"\n")
    assert len(lines) == 4 and lines[-1] == b""  # three whole lines
    assert path.stat().st_ino == inode  # no new file for a step
    assert all(b"yyyy" not in line for line in lines[1:])  # the big fixed fields once
    assert json.loads(lines[2])["state"] == JobState.CLAIMED
    again = Spool(tmp_path / "spool").get("j")
    assert again is not None and dataclasses.asdict(again) == dataclasses.asdict(rec)


def test_a_last_line_cut_short_is_the_step_not_taken(tmp_path: Path) -> None:
    _staged_then_claimed(tmp_path / "spool")
    path = tmp_path / "spool" / "jobs" / "j.json"
    with open(path, "ab") as handle:  # a crash in the middle of the next step's write
        handle.write(b'{"state": "finished", "stat')
    rec = Spool(tmp_path / "spool").get("j")
    assert rec is not None and rec.state == JobState.CLAIMED and rec.pilot == "p1"


def test_after_a_cut_line_the_next_step_rewrites_the_whole_record(tmp_path: Path) -> None:
    _staged_then_claimed(tmp_path / "spool")
    path = tmp_path / "spool" / "jobs" / "j.json"
    with open(path, "ab") as handle:
        handle.write(b'{"state": "fin')
    spool = Spool(tmp_path / "spool")
    with spool.lock(1.0):
        rec = spool.get("j")
        assert rec is not None
        spool.transition(rec, JobState.FINISHED, status="ok")
    assert path.read_bytes().count(b"\n") == 1  # one line again, the cut one gone
    again = Spool(tmp_path / "spool").get("j")
    assert again is not None and again.state == JobState.FINISHED and again.meta["key"] == "k"


def test_a_long_journal_is_written_anew_as_one_line(tmp_path: Path) -> None:
    spool, rec = _staged_then_claimed(tmp_path / "spool")
    path = spool.jobs / "j.json"
    with spool.lock(1.0):
        while path.stat().st_size < spool_records.REWRITE_BYTES:
            spool.note(rec, message="m" * 2000)
        spool.note(rec, lost=1)
    assert path.read_bytes().count(b"\n") == 1
    again = Spool(tmp_path / "spool").get("j")
    assert again is not None and again.lost == 1 and again.meta["big"] == "y" * 3000


def test_a_link_in_place_of_a_record_is_replaced_never_written_through(
        tmp_path: Path) -> None:
    spool, rec = _staged_then_claimed(tmp_path / "spool")
    target = tmp_path / "elsewhere"
    target.write_text('{"name": "j"}\n')
    path = spool.jobs / "j.json"
    path.unlink()
    os.symlink(target, path)
    with spool.lock(1.0):
        spool.transition(rec, JobState.FINISHED, status="ok")
    assert target.read_text() == '{"name": "j"}\n' and not path.is_symlink()


def test_the_fixed_fields_are_record_fields() -> None:
    names = {f.name for f in dataclasses.fields(JobRecord)}
    assert names > spool_records.FIXED_FIELDS


def test_a_record_written_by_hand_over_several_lines_takes_later_steps(
        tmp_path: Path) -> None:
    spool, rec = _staged_then_claimed(tmp_path / "spool")
    path = spool.jobs / "j.json"
    path.write_text(json.dumps(dataclasses.asdict(rec), indent=1) + "\n")  # an admin's edit
    fresh = Spool(tmp_path / "spool")
    with fresh.lock(1.0):
        again = fresh.get("j")
        assert again is not None and again.pilot == "p1"
        fresh.transition(again, JobState.STAGED, pilot="")
    last = Spool(tmp_path / "spool").get("j")
    assert last is not None and last.state == JobState.STAGED and last.meta["key"] == "k"


def test_a_cut_line_ending_inside_a_character_is_left_out_too() -> None:
    first = json.dumps({"name": "j", "state": "staged", "message": "\u00e9t\u00e9"}) + "\n"
    cut = json.dumps({"state": "claimed", "message": "\u00e9"}, ensure_ascii=False)
    data = first.encode() + cut.encode()[:-3]  # ends inside the two bytes of the last é
    fields = spool_records.parse_record(data)
    assert fields["state"] == "staged" and fields["message"] == "\u00e9t\u00e9"


def test_a_record_written_by_hand_without_its_last_newline_is_read(tmp_path: Path) -> None:
    spool, rec = _staged_then_claimed(tmp_path / "spool")
    path = spool.jobs / "j.json"
    path.write_text(json.dumps(dataclasses.asdict(rec), indent=1))  # no newline at the end
    again = Spool(tmp_path / "spool").get("j")
    assert again is not None and again.pilot == "p1" and again.meta["key"] == "k"


def test_a_damaged_line_before_the_last_is_an_error_naming_the_record(tmp_path: Path) -> None:
    spool, _rec = _staged_then_claimed(tmp_path / "spool")
    path = spool.jobs / "j.json"
    first, second, third = path.read_bytes().split(b"\n")[:3]
    path.write_bytes(b"\n".join((first, second[:10], third, b"")))
    with pytest.raises(SpoolError, match=r"unreadable spool record .*j\.json"):
        Spool(tmp_path / "spool").get("j")


def test_a_reader_beside_the_writer_sees_whole_steps_in_order(tmp_path: Path) -> None:
    """Another process's view (``status`` while a pass runs): every read is a step the
    writer took, never a half line or an error, and never an older one than before; past
    REWRITE_BYTES the writer replaces the file, which the reader must not notice either."""
    spool, rec = _staged_then_claimed(tmp_path / "spool")
    reader = Spool(tmp_path / "spool")
    seen: list[int] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            try:
                got = reader.get("j")
                assert got is not None and got.meta["key"] == "k"
                seen.append(int(got.message[1:]) if got.message else -1)
            except BaseException as exc:  # seen by the test, not lost in the thread
                errors.append(exc)
                return

    thread = threading.Thread(target=read)
    thread.start()
    try:
        with spool.lock(5.0):
            for number in range(600):  # about 3 rewrites at REWRITE_BYTES
                spool.note(rec, message="m%d" % number)
    finally:
        done.set()
        thread.join()
    assert not errors
    assert len(set(seen)) > 10 and seen == sorted(seen) and set(seen) <= set(range(-1, 600))
    final = Spool(tmp_path / "spool").get("j")
    assert final is not None and final.message == "m599"
