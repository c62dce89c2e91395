"""Constant-cost passes (issue 12): the spool's in-memory index, metrics kept up to date,
whole records read on demand, and per-process listings of output and queue directories.
Real directories and files; no services."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from galaxy_hpc_runner.config import load_config
from galaxy_hpc_runner.dropbox import metrics, staging, userfiles
from galaxy_hpc_runner.dropbox.spool import Spool
from galaxy_hpc_runner.dropbox.spool_index import Entry, JobIndex
from galaxy_hpc_runner.transport.base import LocalTransport
from hpc_worker import protocol as p
from hpc_worker.states import JobState

RECEIVED, STAGED, CLAIMED, FINISHED = JobState


def _aged(path: Path, seconds: float = 10.0) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past))


def _count_listings(monkeypatch: pytest.MonkeyPatch, module: Any) -> list[str]:
    """Every directory ``module`` lists with os.listdir from now on."""
    listed: list[str] = []
    real = os.listdir

    def counting(path: Any = ".") -> list[str]:
        listed.append(str(path))
        return real(path)

    monkeypatch.setattr(module.os, "listdir", counting)
    return listed


def test_the_index_keeps_names_counts_and_the_oldest_waiting_job_on_every_change() -> None:
    index = JobIndex()
    key = (1, 2, 3, 4)
    index.put("a", key, True, Entry(RECEIVED, "", "", 100.0))
    index.put("b", key, True, Entry(STAGED, "", "", 50.0))
    index.put("c", key, True, Entry(CLAIMED, "p1", "", 10.0))
    assert index.names(RECEIVED, STAGED) == {"a", "b"} and index.count(CLAIMED) == 1
    assert index.oldest_waiting() == 50.0  # a running job is not waiting
    index.put("b", key, True, Entry(CLAIMED, "p1", "", 50.0))
    assert index.count(STAGED) == 0 and index.oldest_waiting() == 100.0
    index.drop("a")
    assert index.oldest_waiting() == 0.0 and len(index) == 2
    assert index.get("c") == Entry(CLAIMED, "p1", "", 10.0) and index.get("a") is None


def test_a_pass_under_the_lock_keeps_what_it_wrote_without_listing_jobs_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path / "spool")
    with spool.lock(5.0):
        records = [spool.create("j%d" % i, {"n": i}) for i in range(3)]
        assert spool.names(RECEIVED) == {"j0", "j1", "j2"}  # the first look lists jobs/
        listed = _count_listings(monkeypatch, p)
        reads = spool.reads
        spool.transition(records[0], STAGED)
        spool.transition(records[1], STAGED)
        assert spool.names(STAGED) == {"j0", "j1"} and spool.count(RECEIVED) == 1
    with spool.lock(5.0):  # nobody else took the lock meanwhile
        assert spool.names(RECEIVED, STAGED) == {"j0", "j1", "j2"}
    assert listed == [] and spool.reads == reads


def test_a_write_by_another_spool_under_the_lock_is_seen_at_the_next_lock(
        tmp_path: Path) -> None:
    mine, theirs = Spool(tmp_path / "spool"), Spool(tmp_path / "spool")
    with mine.lock(5.0):
        mine.create("j", None)
        assert mine.names(RECEIVED) == {"j"}
    with theirs.lock(5.0):
        rec = theirs.get("j")
        assert rec is not None
        theirs.transition(rec, STAGED)
    with mine.lock(5.0):
        assert mine.names(STAGED) == {"j"} and mine.names(RECEIVED) == set()


def test_the_index_holds_no_description_and_whole_records_are_bounded(
        tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool._records.size = 2
    for i in range(5):
        spool.create("r%d" % i, {"script": "x" * 1000}, {"script_text": "y" * 1000})
    assert len(spool._records._records) == 2
    assert all(isinstance(e[2], Entry) for e in spool._index.entries.values())
    rec = spool.get("r0")  # read again from its file when needed
    assert rec is not None and rec.doc == {"script": "x" * 1000}


def test_metrics_count_from_the_index_without_reading_a_record(tmp_path: Path) -> None:
    cfg = load_config(_site(tmp_path))
    spool = Spool(cfg.spool)
    with spool.lock(5.0):
        recs = [spool.create("m%d" % i, None) for i in range(4)]
        spool.transition(recs[0], STAGED)
        spool.transition(recs[1], FINISHED)
        spool.archive(recs[1])
        spool.names()
        reads = spool.reads
        text = metrics.render(cfg, spool, True, 0.01, time.time() + 5)
    assert spool.reads == reads
    assert 'hpc_batch_jobs{state="received"} 2' in text
    assert 'hpc_batch_jobs{state="staged"} 1' in text
    assert 'hpc_batch_jobs{state="finished"} 1' in text
    wait = [ln for ln in text.splitlines() if ln.startswith("hpc_batch_oldest_queue_wait")]
    assert 4.0 < float(wait[0].split()[1]) < 60.0


def test_the_finished_count_follows_another_spools_archive(tmp_path: Path) -> None:
    mine, theirs = Spool(tmp_path / "spool"), Spool(tmp_path / "spool")
    with mine.lock(5.0):
        mine.create("f", None)
        assert mine.count(FINISHED) == 0
    with theirs.lock(5.0):
        rec = theirs.get("f")
        assert rec is not None
        theirs.transition(rec, FINISHED)
        theirs.archive(rec)
    with mine.lock(5.0):
        assert mine.count(FINISHED) == 1 and mine.active_names() == set()


def test_output_directories_are_listed_once_for_stale_temps(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stale = tmp_path / ".b.out.hpc-batch-tmp-99999-dead"
    stale.write_text("half")
    keep = tmp_path / ".tmp-users-own"
    keep.write_text("keep")
    listed = _count_listings(monkeypatch, userfiles)
    seen = userfiles.StaleTemps()
    removed: list[str] = []
    for base in ("a.out", "b.out", "c.out"):
        removed += userfiles.remove_stale_output_temps([str(tmp_path / base)], seen)
    assert removed == [str(stale)] and keep.exists() and not stale.exists()
    assert listed == [str(tmp_path)]


def test_a_quiet_queue_directory_is_not_listed_again_and_a_change_is_seen(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(_site(tmp_path))
    stager = staging.Stager(cfg, LocalTransport())
    stager.ensure_layout()
    ready = Path(stager.path(p.READY))
    (ready / stager.key("q1")).write_text("")
    _aged(ready)
    assert stager.queue_view().ready == {"q1"}
    listed = _count_listings(monkeypatch, staging)
    view = stager.queue_view()
    assert view.ready == {"q1"} and view.backlog == 1
    view.ready.add("mutated")  # a pass changes its view: the kept listing stays as it was
    assert not [d for d in listed if d == str(ready)]
    (ready / stager.key("q2")).write_text("")
    assert stager.queue_view().ready == {"q1", "q2"}


def _site(tmp_path: Path) -> Path:
    for sub in ("dropbox", "media", "results", "templates", "ws"):
        (tmp_path / sub).mkdir()
    ini = tmp_path / "site.ini"
    r = tmp_path
    ini.write_text(
        f"[dropbox]\npath = {r}/dropbox\nallowed_input_roots = {r}/media\n"
        f"allowed_output_roots = {r}/results\n[templates]\npath = {r}/templates\n"
        f"[spool]\npath = {r}/spool\n"
        f"[hpc_env]\nworkspace = {r}/ws\nscripts = {r}/s\ncontainers = {r}/c\n")
    return ini


def test_a_template_is_read_again_only_when_its_file_changed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from galaxy_hpc_runner.dropbox import description

    cfg = load_config(_site(tmp_path))
    template = tmp_path / "templates" / "t.sh"
    template.write_text("#!/bin/bash\necho one > <<out>>\n")
    _aged(template)
    loads: list[Path] = []
    real = description.load_template
    monkeypatch.setattr(description, "load_template", lambda path: loads.append(path) or real(path))
    doc = {"script": "t", "output_map": {"out": str(tmp_path / "results" / "o.txt")}}
    for name in ("a", "b"):
        assert "echo one" in description.validate(name, dict(doc), cfg).rendered
    assert len(loads) == 1
    template.write_text("#!/bin/bash\necho two > <<out>>\n")  # a new time: read again
    assert "echo two" in description.validate("c", dict(doc), cfg).rendered
    assert len(loads) == 2
