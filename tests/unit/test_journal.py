"""job.json as the job's journal (protocol version 3): what a reader takes from it, what a
real pilot appends to it, and what a job's tampering with it can and cannot do."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from galaxy_hpc_runner.dropbox.jobfiles import read_journal, transport_reader
from galaxy_hpc_runner.transport.base import LocalTransport
from hpc_worker import journal
from hpc_worker import protocol as p
from hpc_worker.records import MAX_RUNS_BYTES, MAX_STR, JobSpec, ProtocolError, Result, RunLine
from hpc_worker.states import JobState, Reason, ResultStatus
from tests.sitekit import Site
from tests.unit.pilotkit import Workspace

SPEC = JobSpec(key="k").dumps().encode()
OK = Result(status=ResultStatus.OK, message="processed OK", rc=0)


def _run(pilot: str) -> bytes:
    return journal.line(RunLine(pilot=pilot, start="2026-11-27T00:00:00"))


@pytest.fixture
def ws(tmp_path: Path) -> Iterator[Workspace]:
    workspace = Workspace(tmp_path / "W")
    yield workspace
    workspace.stop_all()


# -- reading --------------------------------------------------------------------------------
def test_the_spec_line_is_no_run_and_the_last_valid_result_counts() -> None:
    failed = Result(status=ResultStatus.ERROR, message="boom", rc=3, reason=Reason.FAILED)
    data = SPEC + b"\n" + _run("a") + journal.line(OK) + _run("b") + journal.line(failed)
    found = journal.parse(data + b'{"rec": "result", "status": "ok", "mess')  # torn: skipped
    assert [run.pilot for run in found.runs] == ["a", "b"]
    assert found.result is not None and found.result.message == "boom"


def test_a_line_without_its_kind_or_of_another_kind_is_not_a_record() -> None:
    untagged = (json.dumps(RunLine(pilot="x", start="t").to_json()) + "\n").encode()
    other = b'{"rec": "note", "pilot": "y", "start": "t"}\n'
    assert journal.parse(SPEC + b"\n" + untagged + other) == journal.Journal([], None)


def test_run_lines_count_only_from_the_journals_last_256_kib() -> None:
    lines = _run("old") * (2 * MAX_RUNS_BYTES // len(_run("old")))
    found = journal.parse(SPEC + b"\n" + lines + _run("new") + journal.line(OK))
    assert found.runs[-1].pilot == "new" and found.result == OK
    assert len(found.runs) * len(_run("old")) <= MAX_RUNS_BYTES


def test_the_spec_is_the_first_line_and_a_spec_too_long_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "job.json"
    path.write_bytes(SPEC + b"\n" + _run("a"))
    assert journal.read_job(str(path)) == journal.Job(JobSpec(key="k"), [RunLine.loads(_run("a"))])
    path.write_bytes(b"x" * (5 << 20))
    with pytest.raises(ProtocolError, match="first line is longer"):
        journal.read_job(str(path))
    path.write_bytes(b"[1]\n")
    with pytest.raises(ProtocolError, match="no JSON object"):
        journal.read_job(str(path))


def test_a_journal_over_the_record_limit_gives_its_spec_and_its_last_runs(
        tmp_path: Path) -> None:
    """One descriptor for both: the first line from the head, run lines from the end."""
    path = tmp_path / "job.json"
    filler = _run("old") * ((5 << 20) // len(_run("old")))
    path.write_bytes(SPEC + b"\n" + filler + _run("new"))
    job = journal.read_job(str(path))
    assert job.spec == JobSpec(key="k") and job.runs[-1].pilot == "new"
    assert len(job.runs) * len(_run("old")) <= MAX_RUNS_BYTES


def test_a_pilot_reads_runs_jsonl_only_beside_a_spec_of_an_older_version(
        tmp_path: Path) -> None:
    (tmp_path / p.RUNS).write_text(json.dumps({"pilot": "old", "start": "t", "v": 2}) + "\n")
    path = tmp_path / p.META
    path.write_bytes(json.dumps({"key": "k", "v": 2}).encode() + b"\n" + _run("new"))
    assert [run.pilot for run in journal.read_job(str(path)).runs] == ["old", "new"]
    path.write_bytes(SPEC + b"\n" + _run("new"))  # version 3: no pilot of it writes runs.jsonl
    assert [run.pilot for run in journal.read_job(str(path)).runs] == ["new"]


def test_a_jobs_files_from_a_pilot_of_protocol_2_are_read_too(tmp_path: Path) -> None:
    """runs.jsonl and result.json, as pilots before version 3 wrote them (upgrades)."""
    (tmp_path / p.META).write_text(json.dumps({"key": "k", "v": 2}))
    (tmp_path / p.RUNS).write_text(json.dumps({"pilot": "old", "start": "t", "v": 2}) + "\n")
    (tmp_path / p.RESULT).write_text(OK.dumps())
    found = read_journal(transport_reader(LocalTransport(), str(tmp_path)))
    assert [run.pilot for run in found.runs] == ["old"] and found.result == OK


# -- appending, and what a job can do to it ---------------------------------------------------
def test_an_append_starts_a_line_of_its_own_and_never_follows_a_link(tmp_path: Path) -> None:
    path = tmp_path / "job.json"
    path.write_bytes(SPEC)  # no newline at its end, as version 2 submitters wrote it
    journal.append(str(path), _run("a"))
    assert path.read_bytes() == SPEC + b"\n" + _run("a")
    target = tmp_path / "elsewhere"
    target.write_text("keep\n")
    path.unlink()
    path.symlink_to(target)
    with pytest.raises(OSError):
        journal.append(str(path), _run("b"))
    assert target.read_text() == "keep\n"
    path.unlink()
    path.mkdir()
    with pytest.raises(OSError):
        journal.append(str(path), _run("c"))


def test_a_pilot_keeps_the_journal_the_one_file_for_runs_and_result(ws: Workspace) -> None:
    ws.stage("k", "echo hi > out.txt\n", outputs=("out.txt",))
    assert ws.start("P1", idle=0.5).wait(timeout=30) == 0
    assert ws.done("k")
    names = set(os.listdir(ws.job_dir("k")))
    assert p.RUNS not in names and p.RESULT not in names
    found = ws.journal("k")
    assert [run.pilot for run in found.runs] == ["P1"] and found.result is not None
    assert found.result.status == ResultStatus.OK and found.result.attempt == "attempt-1"
    assert (ws.job_dir("k") / "out.txt").read_text() == "hi\n"  # published before the result


def test_a_forged_result_line_from_the_job_does_not_count(ws: Workspace) -> None:
    forged = json.dumps({"rec": "result", "status": "ok", "message": "forged", "rc": 0})
    ws.stage("k", "echo '%s' >> ../job.json\nprintf '{\"rec\": \"res' >> ../job.json\nexit 3\n"
             % forged)
    assert ws.start("P1", idle=0.5).wait(timeout=30) == 0
    result = ws.journal("k").result
    assert result is not None and result.rc == 3 and result.reason == Reason.FAILED


def test_a_journal_replaced_by_a_link_is_not_written_through(ws: Workspace) -> None:
    outside = ws.root.parent / "not-the-journal"
    outside.write_text("keep\n")
    ws.stage("k", "rm ../job.json\nln -s %s ../job.json\n" % outside)
    assert ws.start("P1", idle=0.5).wait(timeout=30) == 0
    assert outside.read_text() == "keep\n"
    assert not ws.done("k")  # its result could not be reported: not announced as done


# -- the script in the spec ------------------------------------------------------------------
@pytest.mark.parametrize("padding, as_file", [(0, False), (70000, True)])
def test_the_script_travels_in_the_spec_unless_too_long_for_it(
        make_site: Any, tmp_path: Path, padding: int, as_file: bool) -> None:
    """A rendered script of at most MAX_STR characters is job.json's ``script_text`` (no
    job.sh: one new file less per job); a longer one is staged as job.sh. Both run."""
    templates = tmp_path / "own-templates"
    templates.mkdir()
    (templates / "pad.sh").write_text("#!/bin/bash\n%secho ran > <<output>>\n"
                                      % ("# padding\n" * (padding // 10)))
    site: Site = make_site(templates={"path": str(templates)})
    site.drop("j", {"script": "pad", "output_map": {"output": str(site.out("j.txt"))}})
    sub = site.pass_until(lambda: site.state("j") != JobState.RECEIVED)
    job_dir = Path(p.job_dir(site.cfg.workspace, site.key("j")))
    spec = journal.read_job(str(job_dir / p.META)).spec
    assert (job_dir / p.SCRIPT).exists() == as_file
    assert (spec.script_text == "") == as_file and len(spec.script_text) <= MAX_STR
    site.drain(["j"], sub=sub)
    assert site.result("j")["job"]["status"] == ResultStatus.OK
    assert site.out("j.txt").read_text() == "ran\n"
