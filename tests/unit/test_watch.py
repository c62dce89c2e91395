"""The change watch, the spool's record cache and batched syncs, on real directories."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from galaxy_hpc_runner.dropbox import watch
from galaxy_hpc_runner.dropbox.spool import Spool, SpoolError
from galaxy_hpc_runner.transport.base import LocalTransport
from hpc_worker import durable
from hpc_worker import protocol as p
from hpc_worker.states import JobState


def _aged(path: Path) -> None:
    """Directory times well past the FRESH window, as after a quiet while."""
    past = time.time() - 10
    os.utime(path, (past, past))


def _watch(tmp_path: Path) -> tuple[watch.ChangeWatch, Path, Path]:
    dropbox, done = tmp_path / "dropbox", tmp_path / "done"
    dropbox.mkdir()
    done.mkdir()
    _aged(dropbox)
    _aged(done)
    return watch.ChangeWatch([str(dropbox)], LocalTransport(), [str(done)]), dropbox, done


def test_a_new_entry_in_either_directory_is_a_change(tmp_path: Path) -> None:
    w, dropbox, done = _watch(tmp_path)
    for directory in (dropbox, done):
        before = w.signature()
        assert not w.changed_since(before)
        (directory / "x.job").write_text("")
        assert w.changed_since(before)
        _aged(directory)


def test_a_directory_changed_within_the_tick_window_counts_as_changed(tmp_path: Path) -> None:
    """Never a missed change: a time too fresh to trust means "look again"."""
    w, dropbox, _ = _watch(tmp_path)
    (dropbox / "a.job").write_text("")
    before = w.signature()
    assert watch.UNSURE in before
    assert w.changed_since(before)


def test_wait_returns_on_a_drop_from_another_thread_not_at_the_timeout(tmp_path: Path) -> None:
    w, dropbox, _ = _watch(tmp_path)
    before = w.signature()
    threading.Timer(0.2, lambda: (dropbox / "b.job").write_text("")).start()
    started = time.monotonic()
    assert w.wait(before, threading.Event(), timeout=30.0)
    assert time.monotonic() - started < 25.0


def test_wait_without_a_change_ends_at_the_timeout_or_the_event(tmp_path: Path) -> None:
    w, _, _ = _watch(tmp_path)
    before = w.signature()
    assert not w.wait(before, threading.Event(), timeout=0.3)
    event = threading.Event()
    event.set()
    assert not w.wait(before, event, timeout=30.0)


def test_a_missing_directory_is_no_error(tmp_path: Path) -> None:
    w = watch.ChangeWatch([str(tmp_path / "gone")], LocalTransport(), [])
    assert not w.changed_since(w.signature())


# -- the spool's cache ----------------------------------------------------------------
def test_unchanged_records_are_not_read_again(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    for i in range(5):
        spool.create("job%d" % i, {"n": i})
    for path in spool.jobs.iterdir():  # as if written a while ago
        _aged(path)
    spool.active()
    reads = spool.reads
    assert len(spool.active()) == 5
    assert spool.reads == reads


def test_a_record_another_process_changed_is_read_again(tmp_path: Path) -> None:
    mine, theirs = Spool(tmp_path / "spool"), Spool(tmp_path / "spool")
    rec = mine.create("j", None)
    _aged(mine.jobs / "j.json")
    assert mine.get("j") is mine.get("j") is not rec  # read once after the time change
    other = theirs.get("j")
    assert other is not None
    theirs.transition(other, JobState.STAGED)
    again = mine.get("j")
    assert again is not None and again.state == JobState.STAGED


def test_a_link_in_place_of_a_record_is_refused_not_followed(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    target = tmp_path / "elsewhere.json"
    target.write_text(json.dumps({"name": "evil", "state": "received"}))
    (spool.jobs / "evil.json").symlink_to(target)
    with pytest.raises(SpoolError, match=r"evil\.json"):
        spool.get("evil")


def test_a_record_removed_behind_the_cache_is_gone(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.create("j", None)
    assert [r.name for r in spool.active()] == ["j"]
    (spool.jobs / "j.json").unlink()
    assert spool.active() == [] and spool.get("j") is None


def test_a_barrier_syncs_what_was_written_unsynced(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    rec = spool.create("j", None)  # not synced: the description is still in the dropbox
    spool.transition(rec, JobState.STAGED)
    assert spool._unsynced
    spool.barrier()
    assert not spool._unsynced
    durable.sync_paths([str(tmp_path), str(tmp_path / "missing")])  # a missing path is skipped


def test_a_quiet_spool_is_looked_at_with_one_stat_and_a_write_is_seen(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mine, theirs = Spool(tmp_path / "spool"), Spool(tmp_path / "spool")
    for i in range(3):
        mine.create("q%d" % i, None)
    for path in mine.jobs.iterdir():
        _aged(path)
    _aged(mine.jobs)
    assert len(mine.active()) == 3
    reads, listed = mine.reads, []
    real = p.listdir
    monkeypatch.setattr(p, "listdir", lambda path: listed.append(path) or real(path))
    assert mine.active_names() == {"q0", "q1", "q2"}
    assert mine.names(JobState.RECEIVED) == {"q0", "q1", "q2"}
    assert (mine.reads, listed) == (reads, [])  # reused: jobs/ did not change
    other = theirs.get("q1")
    assert other is not None
    theirs.transition(other, JobState.STAGED)  # replaces the file: jobs/ changes
    states = {r.name: r.state for r in mine.active()}
    assert states["q1"] == JobState.STAGED


def test_an_unreadable_record_is_reported_on_every_look(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    (spool.jobs / "bad.json").write_text("{not json")
    _aged(spool.jobs / "bad.json")
    _aged(spool.jobs)
    for _ in range(2):
        assert spool.active() == [] and "bad" in spool.active_names()
        problems = spool.take_problems()
        assert len(problems) == 1 and "bad.json" in problems[0]


def test_a_quiet_dropbox_is_not_listed_until_an_entry_changes(tmp_path: Path) -> None:
    dropbox = tmp_path / "dropbox"
    dropbox.mkdir()
    _aged(dropbox)
    quiet = watch.QuietDirectory(str(dropbox))
    key = quiet.key()
    assert not quiet.unchanged(key)  # never looked at
    quiet.looked(key, complete=True)
    assert quiet.unchanged(quiet.key())
    (dropbox / "new.job").write_text("")
    assert not quiet.unchanged(quiet.key())


def test_a_look_that_left_work_or_a_due_rescan_means_listing_again(tmp_path: Path) -> None:
    dropbox = tmp_path / "dropbox"
    dropbox.mkdir()
    _aged(dropbox)
    quiet = watch.QuietDirectory(str(dropbox))
    quiet.looked(quiet.key(), complete=False)  # e.g. a description still being written
    assert not quiet.unchanged(quiet.key())
    due = watch.QuietDirectory(str(dropbox), rescan_every=0.0)  # a touched file: rescans
    due.looked(due.key(), complete=True)
    assert not due.unchanged(due.key())
