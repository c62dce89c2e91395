"""The pilot's parts without a running pilot: GPUs, nvidia-smi, the ready view, decisions,
the job environment and the attempt directory."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from hpc_worker import decisions as d
from hpc_worker import durable, gpu, reporting
from hpc_worker import protocol as p
from hpc_worker.attempt import GATE, Attempt, JobInvalid, job_env, load_job, spec_problems
from hpc_worker.guard import GroupGuard
from hpc_worker.jobrun import JobRun
from hpc_worker.readyq import ReadyQueue
from hpc_worker.records import JobSpec

# the real tool's answer on a 2-GPU node (H200s), one of them not reporting utilisation
CANNED = ("0, GPU-5f3c0a4e-1b2c-4d5e-8f90-123456789abc, 87, 40211\n"
          "1, GPU-0a1b2c3d-4e5f-6789-abcd-ef0123456789, [N/A], 3\n"
          "garbage line\n")


# -- allocation --------------------------------------------------------------------------
def test_slots_beyond_the_allocated_gpus_are_not_started() -> None:
    alloc = gpu.allocation({"CUDA_VISIBLE_DEVICES": "0"}, slots=2)
    assert alloc.real and alloc.slots == 1 and alloc.device(0) == "0"
    message = alloc.refused_slots_message()
    assert "--slots 2" in message and "CUDA_VISIBLE_DEVICES=0" in message
    assert "slots_per_gpu" in message


def test_slots_per_gpu_shares_a_device_explicitly() -> None:
    alloc = gpu.allocation({"CUDA_VISIBLE_DEVICES": "3,5"}, slots=4, slots_per_gpu=2)
    assert [alloc.device(i) for i in range(alloc.slots)] == ["3", "3", "5", "5"]
    assert alloc.refused_slots_message() == ""
    three = gpu.allocation({"CUDA_VISIBLE_DEVICES": "3,5"}, slots=5, slots_per_gpu=2)
    assert three.slots == 4


def test_slurm_variables_are_read_when_cuda_visible_devices_is_absent() -> None:
    alloc = gpu.allocation({"SLURM_JOB_GPUS": "2,7"}, slots=2)
    assert alloc.source == "SLURM_JOB_GPUS" and alloc.devices == ["2", "7"]


@pytest.mark.parametrize("env", [{}, {"CUDA_VISIBLE_DEVICES": ""},
                                 {"CUDA_VISIBLE_DEVICES": "NoDevFiles"}])
def test_without_gpu_variables_every_slot_runs_with_its_number(env: dict[str, str]) -> None:
    alloc = gpu.allocation(env, slots=3)
    assert not alloc.real and alloc.slots == 3
    assert [alloc.device(i) for i in range(3)] == ["0", "1", "2"]
    assert gpu.job_metrics(alloc, "0", 10.0, None) == {}


# -- nvidia-smi ------------------------------------------------------------------------
def test_query_output_of_the_real_tool_is_parsed_by_index_and_uuid() -> None:
    figures = gpu.parse_query(CANNED)
    assert figures["0"] == {"util": 87.0, "mem": 40211.0}
    assert figures["GPU-5f3c0a4e-1b2c-4d5e-8f90-123456789abc"] is figures["0"]
    assert figures["1"] == {"util": None, "mem": 3.0}
    assert "garbage line" not in figures


def test_usage_adds_up_to_the_job_metrics() -> None:
    usage = gpu.Usage()
    usage.add({"util": 80.0, "mem": 100.0})
    usage.add({"util": None, "mem": 300.0})
    usage.add({"util": 40.0, "mem": 200.0})
    alloc = gpu.allocation({"CUDA_VISIBLE_DEVICES": "0"}, slots=1)
    metrics = gpu.job_metrics(alloc, "0", 12.0, usage)
    assert metrics == {"gpu_devices": "0", "gpu_seconds": 12.0, "gpu_shared_by": 1,
                       "gpu_util_mean_pct": 60.0, "gpu_mem_peak_mib": 300.0,
                       "gpu_samples": 3}


def _stand_in(tmp_path: Path, body: str) -> str:
    tool = tmp_path / "nvidia-smi"
    tool.write_text("#!/bin/sh\n" + body)
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    return str(tool)


def _sample(sampler: gpu.Sampler) -> object:
    now = time.time()
    assert sampler.tick(now) is None  # started, not waited for
    deadline = now + 10
    while time.time() < deadline:
        figures = sampler.tick(time.time())
        if figures is not None or sampler.proc is None:
            return figures
        time.sleep(0.01)
    raise AssertionError("the stand-in nvidia-smi did not finish")


def test_sampler_runs_a_stand_in_tool_without_blocking(tmp_path: Path) -> None:
    tool = _stand_in(tmp_path, "printf '%s'\n" % CANNED.replace("\n", "\\n"))
    figures = _sample(gpu.Sampler(5.0, tool))
    assert isinstance(figures, dict) and figures["0"]["util"] == 87.0


def test_a_failing_or_absent_tool_gives_no_figures(tmp_path: Path) -> None:
    assert _sample(gpu.Sampler(5.0, _stand_in(tmp_path, "exit 9\n"))) is None
    absent = gpu.Sampler(5.0, str(tmp_path / "no-such-tool"))
    absent.tick(time.time())
    assert not absent.active
    assert not gpu.Sampler(5.0, "").active


def test_ledger_splits_device_time_into_busy_and_idle() -> None:
    ledger = gpu.Ledger(gpu.allocation({"CUDA_VISIBLE_DEVICES": "0,1"}, slots=2))
    start = ledger.last
    ledger.account(start + 10, ["0"])
    assert ledger.busy == pytest.approx(10) and ledger.idle == pytest.approx(10)


# -- the ready view ----------------------------------------------------------------------
def _marker(ready: Path, key: str, age: int) -> None:
    path = ready / key
    path.write_text("")
    when = 1_700_000_000 + age
    os.utime(path, (when, when))


def test_claims_interleave_servers_and_take_the_oldest_first(tmp_path: Path) -> None:
    for i in range(1000):
        _marker(tmp_path, "big=job%04d" % i, i)
    _marker(tmp_path, "small=only", 5000)
    _marker(tmp_path, "big=older", -1)
    queue = ReadyQueue(str(tmp_path))
    queue.refresh(time.time())
    first = [queue.pop() for _ in range(4)]
    assert "small=only" in first[:2]
    assert [k for k in first if k and k.startswith("big=")][:2] == ["big=older", "big=job0000"]


def test_a_drain_lists_the_directory_once_not_per_claim(tmp_path: Path) -> None:
    for i in range(300):
        _marker(tmp_path, "job%03d" % i, i)
    queue = ReadyQueue(str(tmp_path), min_rescan=60, rescan_every=60)
    now = time.time()
    taken = []
    while True:
        queue.refresh(now)
        key = queue.pop()
        if key is None:
            break
        os.rename(tmp_path / key, tmp_path / ("." + key))  # a claim changes the directory
        taken.append(key)
    assert taken == ["job%03d" % i for i in range(300)]
    assert queue.scans <= 2


def test_new_markers_are_seen_when_the_directory_changes(tmp_path: Path) -> None:
    queue = ReadyQueue(str(tmp_path), min_rescan=0, rescan_every=60)
    an_hour_ago = time.time() - 3600
    os.utime(tmp_path, (an_hour_ago, an_hour_ago))
    assert queue.refresh(time.time()) and queue.pop() is None
    assert not queue.refresh(time.time())  # unchanged: no listing
    (tmp_path / "late").write_text("")
    queue.refresh(time.time())
    assert queue.pop() == "late"
    queue.never("late")  # this pilot will not take it: it is not offered again
    # a directory time this fresh may hide a second change in the same tick: look again
    (tmp_path / "later").write_text("")
    assert queue.refresh(time.time())
    assert queue.pop() == "later"
    queue.refresh(time.time() + 100)
    assert queue.pop() == "later"  # not claimed (still there): offered again
    assert queue.pop() is None


# -- decisions ---------------------------------------------------------------------------
def test_release_margin_is_grace_plus_a_little_capped_for_short_pilots() -> None:
    assert d.release_margin(86400, 10) == 10 + d.RELEASE_MARGIN
    assert d.release_margin(6, 10) == pytest.approx(0.6)
    assert d.release_margin(None, 10) == 10 + d.RELEASE_MARGIN


def test_runtime_learned_from_releases_decides_fit_and_early_release() -> None:
    assert d.time_needed(30.0, 100.0) == 30.0
    assert d.time_needed(None, 100.0) == 100.0
    assert d.time_needed(None, None) is None
    assert d.cannot_finish(elapsed=10, learned=100, time_left=50)
    assert not d.cannot_finish(elapsed=60, learned=100, time_left=50)
    assert not d.cannot_finish(elapsed=10, learned=None, time_left=1)


def test_exit_statuses_a_stop_signal_may_cause() -> None:
    stops = frozenset({15, 2})
    assert d.stop_signalled(-15, stops) and d.stop_signalled(143, stops)
    assert not d.stop_signalled(1, stops) and not d.stop_signalled(-9, stops)
    assert not d.stop_signalled(137, stops)


# -- environment and attempts ----------------------------------------------------------------
def test_jobs_get_an_allowlisted_environment_and_the_slot_wins() -> None:
    pilot = {"PATH": "/bin", "HOME": "/h", "LC_ALL": "C", "SLURM_JOB_ID": "7",
             "PYTHONPATH": "/code", "SECRET_TOKEN": "x", "SITE_X": "1"}
    env = job_env(pilot, {"CUDA_VISIBLE_DEVICES": "9", "HPC_BATCH_JOB": "no", "MINE": "1"},
                  {"CUDA_VISIBLE_DEVICES": "0", "HPC_BATCH_JOB": "k"}, keep=["SITE_*"])
    assert env == {"PATH": "/bin", "HOME": "/h", "LC_ALL": "C", "SLURM_JOB_ID": "7",
                   "SITE_X": "1", "MINE": "1", "CUDA_VISIBLE_DEVICES": "0",
                   "HPC_BATCH_JOB": "k"}


@pytest.mark.parametrize("spec, fragment", [
    (JobSpec(key="k", outputs=["../evil"]), "output '../evil'"),
    (JobSpec(key="k", outputs=[p.RESULT]), "output"),
    (JobSpec(key="k", inputs=["/etc/passwd"]), "input '/etc/passwd'"),
    (JobSpec(key="k", inputs=["attempt-1"]), "input 'attempt-1'"),
    (JobSpec(key="k", walltime=-1.0), "walltime"),
    (JobSpec(key="k", env={"A B": "1"}), "env 'A B'"),
    (JobSpec(key="k", env={"A": "x\x00y"}), "env 'A'"),
])
def test_hostile_descriptions_are_refused(spec: JobSpec, fragment: str) -> None:
    assert any(fragment in problem for problem in spec_problems(spec))


def test_an_unreadable_job_json_is_the_jobs_error_not_the_pilots(tmp_path: Path) -> None:
    job = tmp_path / p.JOBS / "k"
    job.mkdir(parents=True)
    (job / p.META).write_text('{"key": "k", "walltime": "soon"}')
    with pytest.raises(JobInvalid, match="'walltime'"):
        load_job(str(tmp_path), "k")
    (job / p.META).unlink()
    (job / p.META).symlink_to("/etc/hostname")
    with pytest.raises(JobInvalid, match="safely"):
        load_job(str(tmp_path), "k")


def test_attempt_gets_its_own_directory_inputs_and_workspace(tmp_path: Path) -> None:
    root = str(tmp_path)
    job = tmp_path / p.JOBS / "s=k"
    job.mkdir(parents=True)
    (job / "in.txt").write_text("data")
    rendered = p.job_dir(root, "s=k")
    (job / p.SCRIPT).write_text("cd %s\ncp %s/in.txt %s/out\nls %s2 %s.x\n" % (
        rendered, rendered, rendered, rendered, rendered))
    first = Attempt.create(root, "s=k", starts=0)
    second = Attempt.create(root, "s=k", starts=0)
    assert (first.name, second.name) == ("attempt-1", "attempt-2")
    second.link_inputs(["in.txt"])
    assert os.stat(second.dir + "/in.txt").st_ino == os.stat(job / "in.txt").st_ino
    second.write_script("", root)
    assert Path(second.script).read_bytes() == GATE + (
        "cd %s\ncp %s/in.txt %s/out\nls %s2 %s.x\n" % (
            second.dir, second.dir, second.dir, rendered, rendered)).encode()
    (job / p.SCRIPT).write_text("#!/bin/bash\ncat /elsewhere/k/x\n")  # a workspace of its own
    second.write_script("/elsewhere/k", root)
    assert Path(second.script).read_bytes() == b"#!/bin/bash\n" + GATE + (
        "cat %s/x\n" % second.dir).encode()
    (job / "link").symlink_to(job / "in.txt")
    with pytest.raises(JobInvalid, match="not a regular file"):
        second.link_inputs(["link"])
    with pytest.raises(JobInvalid, match="'absent'"):
        second.link_inputs(["absent"])


def test_protocol_paths_for_the_collecting_side() -> None:
    assert p.result_path("/w", "k") == "/w/jobs/k/result.json"
    assert p.output_path("/w", "k", "o.txt", "attempt-3") == "/w/jobs/k/attempt-3/o.txt"
    assert p.output_path("/w", "k", "o.txt", "") == "/w/jobs/k/o.txt"
    assert p.log_path("/w", "k", p.STDOUT, "attempt-3") == "/w/jobs/k/attempt-3/stdout.txt"
    with pytest.raises(ValueError):
        p.output_path("/w", "k", "o.txt", "../../etc")
    assert not p.valid_attempt("attempt-0") and p.valid_attempt("attempt-12")


def test_the_watcher_kills_listed_groups_after_more_lines_than_a_pipe_holds() -> None:
    """The watcher reads its pipe only every 0.5 s and at the pilot's end: 275,000 bytes of
    lines (four pipes' worth) still reach it, and the one group still listed dies."""
    guard = GroupGuard()
    guard.start()
    tool = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        started = time.monotonic()
        for pgid in range(10**8, 10**8 + 12_500):  # above any pid_max: added and ended again
            guard.add(pgid)
            guard.remove(pgid)
        guard.add(tool.pid)
        guard.stop()  # as the pilot's death: the pipe closes
        assert tool.wait(timeout=10) == -signal.SIGKILL
        assert time.monotonic() - started < 10
    finally:
        if tool.poll() is None:
            tool.kill()
            tool.wait()


def test_settled_jobs_are_reported_together_and_never_before_their_settle_time() -> None:
    def settled(until: float) -> JobRun:
        job = JobRun("/w", "k%s" % until, "pilot", 0, "0", JobSpec(key="k"))
        job.settle_until = until
        return job

    assert reporting.due_at([], others_running=True) is None
    jobs = [settled(10.2), settled(10.0), settled(10.3)]
    assert reporting.due_at(jobs, others_running=False) == 10.0  # alone: at once
    assert reporting.due_at(jobs, others_running=True) == 10.0 + reporting.GATHER
    assert reporting.GATHER <= 0.1  # drop -> .finished stays well under its 0.5 s target


def test_results_synced_together_report_only_their_own_errors(tmp_path: Path) -> None:
    done = [tmp_path / ("r%d.json" % i) for i in range(3)]
    for path in done:
        path.write_text("{}\n")
    os.symlink(done[0], tmp_path / "link.json")
    paths = [str(done[0]), str(tmp_path / "gone.json"), str(tmp_path / "link.json")] + [
        str(path) for path in done[1:]]
    errors = durable.sync_files(paths)
    assert sorted(errors) == [str(tmp_path / "gone.json"), str(tmp_path / "link.json")]
