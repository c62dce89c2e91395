"""The Slurm backend builds command lines and parses canned output (no Slurm needed).

The canned texts are what Slurm 22.05 printed on the test cluster, plus the odd
shapes sites produce (cluster suffixes, banners from wrappers, names holding '|').
"""

from __future__ import annotations

import shlex
from pathlib import Path
from types import SimpleNamespace

import pytest

from galaxy_hpc_runner.backends.base import PilotSpec, SubmissionUncertain
from galaxy_hpc_runner.backends.slurm import SlurmBackend, parse_squeue, slurm_status, slurm_time
from galaxy_hpc_runner.config import Config
from galaxy_hpc_runner.errors import CommandError, SchedulerError
from galaxy_hpc_runner.transport.base import LocalTransport
from hpc_worker.states import PilotState

SQUEUE_ALL = """\
3|CANCELLED|None|pilot|odd
1|COMPLETED|None|pilot-x1
2|COMPLETED|None|pilot-x2
4|FAILED|BadConstraints|big
5|PENDING|Resources|pilot-20261127T031500-a1b2c3
6|RUNNING|None|pilot-20261127T031501-d4e5f6
7|TIMEOUT|TimeLimit|pilot-old
8|COMPLETING|None|pilot-ending
9_1|PENDING|Priority|array-task
"""


def make_config(**scheduler: str) -> Config:
    """The backend reads only the [scheduler] section."""
    return SimpleNamespace(scheduler=scheduler)  # type: ignore[return-value]


@pytest.fixture
def backend() -> SlurmBackend:
    return SlurmBackend(make_config(gres="gpu:1", partition="debug"), LocalTransport())


def spec(walltime: float = 3600.0) -> PilotSpec:
    return PilotSpec(pilot_id="pilot-20261127T031500-a1b2c3", argv=["/usr/bin/python3", "-m",
                     "hpc_worker", "--pilot-id", "pilot-20261127T031500-a1b2c3"],
                     env={"PYTHONPATH": "/opt/code dir"}, workspace="/scratch/w",
                     walltime=walltime, slots=2)


def test_sbatch_names_the_job_after_the_pilot_and_exports_nothing(backend: SlurmBackend) -> None:
    argv = backend.submit_argv(spec())
    assert argv[:4] == ["sbatch", "--parsable", "--job-name=pilot-20261127T031500-a1b2c3",
                        "--export=NONE"]
    assert "--time=0-01:00:00" in argv and "--cpus-per-task=2" in argv
    assert "--gres=gpu:1" in argv and "--partition=debug" in argv
    assert "--output=/scratch/w/pilots/pilot-20261127T031500-a1b2c3.out" in argv


def test_the_time_limit_is_always_the_pilot_walltime() -> None:
    backend = SlurmBackend(make_config(time="1"), LocalTransport())
    argv = backend.submit_argv(spec(walltime=7200))
    assert [a for a in argv if a.startswith("--time")] == ["--time=0-02:00:00"]


def test_batch_script_sets_what_the_pilot_needs_quoted(backend: SlurmBackend) -> None:
    script = backend.submit_stdin(spec())
    assert script.startswith("#!/bin/bash\n")
    last = script.strip().splitlines()[-1]
    assert shlex.split(last)[:3] == ["exec", "env", "PYTHONPATH=/opt/code dir"]
    assert backend.dry_run(spec()).startswith("sbatch --parsable --job-name=pilot-")


@pytest.mark.parametrize("seconds,expected", [
    (1, "0-00:01:00"), (60, "0-00:01:00"), (61, "0-00:02:00"), (86400, "1-00:00:00"),
    (90061, "1-01:02:00")])
def test_slurm_time_rounds_up_to_minutes(seconds: float, expected: str) -> None:
    assert slurm_time(seconds) == expected


@pytest.mark.parametrize("out,job_id", [
    ("12345\n", "12345"), ("12345;cluster-a\n", "12345"),
    ("sbatch: site notice: use --account\n777\n", "777"), ("  42  \n\n", "42")])
def test_parse_submit(backend: SlurmBackend, out: str, job_id: str) -> None:
    assert backend.parse_submit(out) == job_id


@pytest.mark.parametrize("out", ["", "Submitted batch job\n", "error\n", "12a\n"])
def test_parse_submit_refuses_what_is_not_a_job_id(backend: SlurmBackend, out: str) -> None:
    with pytest.raises(SchedulerError, match="not a job id"):
        backend.parse_submit(out)


def test_parse_squeue_every_shape() -> None:
    seen = parse_squeue(SQUEUE_ALL + "\n  \nslurm_load_jobs: banner without pipes\n")
    assert seen["3"] == (slurm_status("CANCELLED"), "pilot|odd")
    assert seen["5"][0].state is PilotState.PENDING and seen["5"][0].reason == "Resources"
    assert seen["6"][0].state is PilotState.RUNNING
    assert seen["7"][0].state is PilotState.GONE and seen["7"][0].timed_out
    assert seen["8"][0].state is PilotState.RUNNING
    assert seen["9_1"][0].state is PilotState.PENDING
    assert len(seen) == 9


@pytest.mark.parametrize("state,expected", [
    ("PENDING", PilotState.PENDING), ("SUSPENDED", PilotState.PENDING),
    ("REQUEUED", PilotState.PENDING), ("RUNNING", PilotState.RUNNING),
    ("COMPLETING", PilotState.RUNNING), ("SIGNALING", PilotState.RUNNING),
    ("COMPLETED", PilotState.GONE), ("CANCELLED by 0", PilotState.GONE),
    ("TIMEOUT+", PilotState.GONE), ("NODE_FAIL", PilotState.GONE),
    ("OUT_OF_MEMORY", PilotState.GONE), ("PREEMPTED", PilotState.GONE),
    ("", PilotState.UNKNOWN), ("running", PilotState.RUNNING)])
def test_slurm_states(state: str, expected: PilotState) -> None:
    assert slurm_status(state).state is expected


def test_status_of_ids_squeue_no_longer_lists_is_gone(backend: SlurmBackend) -> None:
    argv = backend.status_argv(["5", "6"])
    assert "--jobs=5,6" in argv and "--states=all" in argv
    states = backend.parse_status(SQUEUE_ALL, ["5", "6", "7", "99"])
    assert [states[i].state for i in ("5", "6", "7", "99")] == [
        PilotState.PENDING, PilotState.RUNNING, PilotState.GONE, PilotState.GONE]
    assert states["7"].reason == "TIMEOUT" and "no longer known" in states["99"].reason


def test_find_by_name_prefers_a_live_job(backend: SlurmBackend) -> None:
    argv = backend.find_argv("pilot-x1")
    assert "--name=pilot-x1" in argv and "--states=all" in argv and "--me" in argv
    assert backend.parse_find(SQUEUE_ALL, "pilot-x1") == "1"
    assert backend.parse_find(SQUEUE_ALL, "pilot|odd") == "3"
    assert backend.parse_find("", "pilot-x1") is None
    assert backend.parse_find(SQUEUE_ALL, "pilot-x") is None  # names match whole
    twice = "10|COMPLETED|None|p\n11|RUNNING|None|p\n12|PENDING|None|p\n"
    assert backend.parse_find(twice, "p") == "11"


def test_cancel_of_a_job_slurm_forgot_is_not_an_error(backend: SlurmBackend) -> None:
    assert backend.cancel_argv("5") == ["scancel", "5"]
    gone = CommandError(["scancel", "5"], 1, "", "scancel: error: Invalid job id specified\n")
    assert backend.cancel_gone(gone)
    assert not backend.cancel_gone(CommandError(["scancel", "5"], 1, "", "Access denied"))


def test_ping_knows_the_partition(backend: SlurmBackend) -> None:
    assert backend.parse_ping("debug\ngpu\n") == "partitions debug, gpu"
    with pytest.raises(SchedulerError, match="'debug' is not one of gpu"):
        backend.parse_ping("gpu\n")


def test_an_unparsable_sbatch_answer_makes_the_submission_uncertain(
        backend: SlurmBackend, tmp_path: Path) -> None:
    fake = tmp_path / "sbatch"
    fake.write_text("#!/bin/sh\necho 'Submitted batch job (wrapper ate the id)'\n")
    fake.chmod(0o755)
    backend.submit_argv = lambda s: [str(fake)]  # type: ignore[method-assign]
    with pytest.raises(SubmissionUncertain, match="look it up by name"):
        backend.submit(spec())
