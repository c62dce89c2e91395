"""The cheaper per-job paths of the pilot keep their promises: the lean atomic write, the
start gate, the script pattern per pilot, the bounded read, a start whose shell is
spawned before its start line, a slot refilled in the middle of a report."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from hpc_worker import jobrun
from hpc_worker import protocol as p
from hpc_worker.attempt import GATE, GATE_VARIABLE, Attempt, job_env, kept_env, load_job
from hpc_worker.jobrun import JobRun
from hpc_worker.pilot import Pilot, PilotSettings
from hpc_worker.records import MAX_RECORD_BYTES, ProtocolError, read_bounded
from tests.unit.pilotkit import Workspace, wait_for


def test_replace_file_writes_whole_files_with_the_umask_mode_and_leaves_no_temp(
        tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    old = os.umask(0o027)
    try:
        p.replace_file(str(target), "one\n")
        p.replace_file(str(target), b"two\n", sync=True)
    finally:
        os.umask(old)
    assert target.read_text() == "two\n"
    assert target.stat().st_mode & 0o777 == 0o640
    assert os.listdir(tmp_path) == ["f.json"]


def test_replace_file_falls_back_when_its_temp_name_is_taken_or_too_long(
        tmp_path: Path) -> None:
    target = tmp_path / "f"
    leftover = tmp_path / (".tmp-%d-f" % os.getpid())
    leftover.write_text("left by a killed pilot with the same pid")
    p.replace_file(str(target), "new")
    assert target.read_text() == "new" and leftover.exists()
    long = tmp_path / ("x" * 250)
    p.replace_file(str(long), "long")
    assert long.read_text() == "long"
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    p.replace_file(str(tmp_path / "link"), "replaces the link, never follows it")
    assert not (tmp_path / "elsewhere").exists()
    assert not (tmp_path / "link").is_symlink()


def test_read_bounded_reads_small_and_large_files_whole_and_refuses_more(
        tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.write_bytes(b"abc")
    assert read_bounded(str(small), 10) == b"abc"
    big = tmp_path / "big"
    big.write_bytes(os.urandom(300000))
    assert read_bounded(str(big), MAX_RECORD_BYTES) == big.read_bytes()
    with pytest.raises(ProtocolError, match="more than"):
        read_bounded(str(big), 1000)
    (tmp_path / "empty").write_bytes(b"")
    assert read_bounded(str(tmp_path / "empty"), 10) == b""


def _attempt(tmp_path: Path, script: str) -> Attempt:
    job = tmp_path / p.JOBS / "k"
    job.mkdir(parents=True)
    (job / p.SCRIPT).write_text(script)
    attempt = Attempt.create(str(tmp_path), "k", starts=0)
    attempt.write_script(str(job), str(tmp_path))
    return attempt


def _run(attempt: Attempt, gated: bool, stdin: int | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != GATE_VARIABLE}
    if gated:
        env[GATE_VARIABLE] = "1"
    return subprocess.run(["bash", attempt.script], cwd=attempt.dir, env=env, stdin=stdin,
                          capture_output=True, text=True, timeout=30)


def test_the_gate_runs_nothing_when_the_pilot_died_before_opening_it(tmp_path: Path) -> None:
    attempt = _attempt(tmp_path, "#!/bin/bash\necho ran $LINENO ${%s-unset}\n" % GATE_VARIABLE)
    assert Path(attempt.script).read_bytes().startswith(b"#!/bin/bash\n" + GATE)
    closed_r, closed_w = os.pipe()
    os.close(closed_w)  # the pilot died: end of file before the line
    try:
        died = _run(attempt, True, closed_r)
    finally:
        os.close(closed_r)
    assert died.returncode == 1 and died.stdout == ""
    open_r, open_w = os.pipe()
    os.write(open_w, b"\n")
    os.close(open_w)
    try:
        opened = _run(attempt, True, open_r)
    finally:
        os.close(open_r)
    assert opened.returncode == 0 and opened.stdout == "ran 2 unset\n"  # line numbers kept
    by_hand = _run(attempt, False, subprocess.DEVNULL)
    assert by_hand.returncode == 0 and by_hand.stdout == "ran 2 unset\n"


def test_the_gate_leaves_stdin_empty_and_fits_any_first_line(tmp_path: Path) -> None:
    attempt = _attempt(tmp_path, "cat <<EOF\nheredoc on line 1\nEOF\ncat; echo rc=$?\n")
    assert Path(attempt.script).read_bytes().startswith(GATE + b"cat <<EOF\n")
    gate_r, gate_w = os.pipe()
    os.write(gate_w, b"\nmore input the job must never read\n")
    os.close(gate_w)
    try:
        result = _run(attempt, True, gate_r)
    finally:
        os.close(gate_r)
    assert result.stdout == "heredoc on line 1\nrc=0\n"


def test_the_pilot_filters_its_environment_once_with_the_same_result() -> None:
    pilot = {"PATH": "/bin", "SECRET": "x", "SITE_A": "1", "HPC_BATCH_GATE": "0"}
    once = kept_env(pilot, ("SITE_*",))
    assert job_env(once, {}, {}, ("SITE_*",)) == job_env(pilot, {}, {}, ("SITE_*",))
    assert once == {"PATH": "/bin", "SITE_A": "1"}


@pytest.mark.parametrize("posix_spawn", [True, False])
def test_spawn_gives_a_new_session_its_directory_three_descriptors_and_default_sigpipe(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, posix_spawn: bool) -> None:
    monkeypatch.setitem(jobrun._SPAWN, "posix_spawn", posix_spawn and jobrun._SPAWN["posix_spawn"])
    leaked_r, leaked_w = os.pipe()
    os.set_inheritable(leaked_w, True)  # what a pilot may inherit from its own parent
    jobrun.seal_descriptors()
    out_path, err_path = tmp_path / "out", tmp_path / "err"
    stdin = os.open(os.devnull, os.O_RDONLY)
    out = os.open(str(out_path), os.O_WRONLY | os.O_CREAT, 0o644)
    err = os.open(str(err_path), os.O_WRONLY | os.O_CREAT, 0o644)
    script = ('for f in /proc/$$/fd/*; do [ -e "$f" ] && printf "%s " "${f##*/}"; done; echo; '
              'echo "$$ $(cut -d" " -f6 /proc/$$/stat)"; pwd; yes | head -1; kill -TERM $$')
    here = os.getcwd()
    try:
        proc = jobrun.spawn(["bash", "-c", script], str(tmp_path), dict(os.environ),
                            (stdin, out, err))
        assert isinstance(proc, jobrun.Child) == (posix_spawn and jobrun._SPAWN["posix_spawn"])
        assert proc.wait() == -15 and proc.poll() == -15
    finally:
        for fd in (stdin, out, err, leaked_r, leaked_w):
            os.close(fd)
    assert os.getcwd() == here
    fds, pid_sid, cwd, yes = out_path.read_text().splitlines()
    pid, sid = pid_sid.split()
    assert pid == sid == str(proc.pid)
    assert cwd == str(tmp_path) and fds.split() == ["0", "1", "2"] and yes == "y"
    assert err_path.read_text() == ""  # SIGPIPE ended `yes` quietly: not ignored


def test_spawn_finds_bash_on_the_jobs_path_and_says_when_it_is_not_there(
        tmp_path: Path) -> None:
    fds = (os.open(os.devnull, os.O_RDONLY), os.open(os.devnull, os.O_WRONLY),
           os.open(os.devnull, os.O_WRONLY))
    try:
        with pytest.raises(FileNotFoundError):
            jobrun.spawn(["bash", "-c", "true"], str(tmp_path), {"PATH": str(tmp_path)}, fds)
        assert jobrun.spawn(["bash", "-c", "exit 3"], str(tmp_path), {"PATH": "/usr/bin:/bin"},
                            fds).wait() == 3
    finally:
        for fd in fds:
            os.close(fd)


# -- a start's order and a report's pauses ---------------------------------------------------
def _pilot(ws: Workspace) -> Pilot:
    pilot = Pilot(PilotSettings(str(ws.root), "P1", slots=1, settle=0.0))
    pilot.guard.start()
    return pilot


def _ended(job: JobRun) -> bool:
    return job.poll() is not None


def test_a_start_that_fails_before_its_gate_opens_runs_nothing(tmp_path: Path) -> None:
    """The job's shell is spawned before its start line is written (it waits at its gate
    meanwhile): where what follows the spawn fails, the shell is killed there and reaped,
    the job's own commands never ran, and the error reaches the pilot."""
    ws = Workspace(tmp_path / "W")
    ran = tmp_path / "ran"
    ws.stage("k", "touch %s\n" % ran)
    job = JobRun(str(ws.root), "k", "P1", 0, "0", load_job(str(ws.root), "k").spec)

    def guard_fails(_pgid: int) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        job.start({"PATH": os.environ["PATH"]}, {}, str(ws.root), announce=guard_fails)
    assert job.proc is not None and job.poll() == -9  # killed at its gate, and reaped
    time.sleep(0.2)
    assert not ran.exists()


def test_a_slot_freed_during_a_report_takes_its_next_job_before_the_report_ends(
        tmp_path: Path) -> None:
    """A report of many jobs takes longer than a short job runs: between its steps the
    slot whose job ended is given the next job, the ended one waits to be reported."""
    ws = Workspace(tmp_path / "W")
    for key, script in (("a", "true\n"), ("b", "true\n"), ("c", "sleep 30\n")):
        ws.stage(key, script)
        time.sleep(0.01)  # the queue takes the oldest marker first
    pilot = _pilot(ws)
    try:
        pilot._fill_slots(time.time())
        first = pilot.running[0]
        wait_for(lambda: _ended(first), what="a to end")
        pilot._reap(time.time())
        pilot._fill_slots(time.time())
        second = pilot.running[0]
        wait_for(lambda: _ended(second), what="b to end")
        pilot._report([first])
        assert ws.done("a") and ws.result("a").status == "ok"
        assert pilot.running[0].key == "c" and second in pilot.settling
        assert [run.pilot for run in ws.runs("c")] == ["P1"]
    finally:
        for job in pilot.running.values():
            job.end_group()
        pilot.guard.stop()
