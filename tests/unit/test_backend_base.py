"""The command-backend runner maps every failure; local and DRMAA fit the same interface.

The transport here is a small stand-in that answers or fails as told: it stands for
faults (a connection dropped after ``sbatch`` was sent) that a real sshd cannot be
made to produce at a chosen instant. The real thing runs in tests/test_hpc_slurm.py.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

import galaxy_hpc_runner.backends as backends
from galaxy_hpc_runner.backends.base import Backend, SubmissionUncertain
from galaxy_hpc_runner.backends.local import LocalBackend, pilot_environment, pilot_id_of
from galaxy_hpc_runner.backends.slurm import SlurmBackend
from galaxy_hpc_runner.errors import CommandError, CommandTimeout, SchedulerError, TransportError
from galaxy_hpc_runner.transport.base import CommandOutcomeUnknown, LocalTransport
from galaxy_hpc_runner.transport.runcmd import Completed
from hpc_worker.states import PilotState
from tests.unit.test_backend_slurm import SQUEUE_ALL, spec


class Scripted(LocalTransport):
    """Answers each run() with the next scripted outcome; records what it was asked."""

    def __init__(self, *outcomes: str | BaseException) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[tuple[list[str], bool]] = []

    def run(self, argv: list[str], timeout: float = 60.0, check: bool = True,
            stdin: str | None = None, idempotent: bool = False) -> Completed:
        self.calls.append((argv, idempotent))
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return Completed(argv, 0, outcome, "")


def slurm(*outcomes: str | BaseException) -> tuple[SlurmBackend, Scripted]:
    t = Scripted(*outcomes)
    return SlurmBackend(SimpleNamespace(scheduler={}), t), t  # type: ignore[arg-type]


def test_pilot_state_comes_from_the_one_vocabulary() -> None:
    assert backends.PilotState is PilotState


def test_submit_is_sent_once_and_not_as_a_retryable_read() -> None:
    backend, t = slurm("4242\n")
    assert backend.submit(spec()) == "4242"
    assert len(t.calls) == 1 and t.calls[0][1] is False


@pytest.mark.parametrize("failure", [
    CommandOutcomeUnknown("connection lost after sbatch was sent"),
    CommandTimeout("sbatch did not finish within 60s"),
    CommandError(["sbatch"], -1, "", "")])
def test_an_uncertain_submission_says_look_it_up(failure: BaseException) -> None:
    backend, t = slurm(failure)
    with pytest.raises(SubmissionUncertain) as info:
        backend.submit(spec())
    assert info.value.pilot_id == spec().pilot_id and len(t.calls) == 1


def test_a_refused_or_unsent_submission_is_a_plain_scheduler_error() -> None:
    backend, _ = slurm(CommandError(["sbatch"], 1, "", "sbatch: error: invalid partition"))
    with pytest.raises(SchedulerError) as info:
        backend.submit(spec())
    assert not isinstance(info.value, SubmissionUncertain)
    backend, _ = slurm(TransportError("cannot reach head:22"))
    with pytest.raises(SchedulerError, match="cannot reach") as info2:
        backend.submit(spec())
    assert not isinstance(info2.value, SubmissionUncertain)


def test_queries_are_idempotent_and_transport_errors_stay_transport_errors() -> None:
    backend, t = slurm(SQUEUE_ALL, SQUEUE_ALL, "debug\n", TransportError("cannot reach"))
    assert backend.status(["6"])["6"].state is PilotState.RUNNING
    assert backend.find_by_name("pilot-x2") == "2"
    assert backend.ping() == "partitions debug"
    assert all(idempotent for _, idempotent in t.calls)
    with pytest.raises(TransportError, match="cannot reach"):
        backend.status(["6"])
    assert backend.status([]) == {}


def test_an_id_slurm_forgot_makes_each_id_asked_alone() -> None:
    invalid = CommandError(["squeue"], 1, "", "slurm_load_jobs error: Invalid job id specified")
    backend, t = slurm(invalid, "6|RUNNING|None|pilot-b\n", invalid)
    states = backend.status(["6", "1"])
    assert states["6"].state is PilotState.RUNNING and states["1"].state is PilotState.GONE
    assert [argv[3] for argv, _ in t.calls] == ["--jobs=6,1", "--jobs=6", "--jobs=1"]
    backend, _ = slurm(CommandError(["squeue"], 1, "", "Unable to contact slurm controller"))
    with pytest.raises(CommandError, match="Unable to contact"):
        backend.status(["6", "1"])


def test_cancel_of_a_forgotten_job_is_quiet_and_other_failures_are_not() -> None:
    backend, _ = slurm(CommandError(["scancel"], 1, "", "Invalid job id specified"),
                       CommandError(["scancel"], 1, "", "Access/permission denied"))
    backend.cancel("5")
    with pytest.raises(CommandError, match="permission"):
        backend.cancel("5")


def test_drmaa_cannot_look_up_by_name() -> None:
    class Api(Backend):
        name = "drmaa"

        def submit(self, spec: Any) -> str:
            return "1"

        def status(self, ids: list[str]) -> dict[str, Any]:
            return {}

        def cancel(self, scheduler_id: str) -> None:
            pass
    with pytest.raises(SchedulerError, match="cannot look pilots up by name"):
        Api().find_by_name("pilot-x")


@pytest.fixture
def fake_pilot() -> Iterator[subprocess.Popen[bytes]]:
    """A real process whose command line looks like a pilot's."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "hpc_worker",
                             "--pilot-id", "pilot-test-find-1"])
    yield proc
    proc.kill()
    proc.wait()


def test_local_backend_finds_a_live_pilot_by_its_id(
        fake_pilot: subprocess.Popen[bytes]) -> None:
    backend = LocalBackend(SimpleNamespace())  # type: ignore[arg-type]
    deadline = time.monotonic() + 5
    while backend.find_by_name("pilot-test-find-1") is None and time.monotonic() < deadline:
        time.sleep(0.01)  # the child's cmdline appears once it has exec'd
    assert backend.find_by_name("pilot-test-find-1") == str(fake_pilot.pid)
    assert backend.find_by_name("pilot-test-find") is None
    fake_pilot.kill()
    fake_pilot.wait()
    assert backend.find_by_name("pilot-test-find-1") is None


def test_pilot_id_of_both_spellings() -> None:
    assert pilot_id_of([b"python", b"-m", b"hpc_worker", b"--pilot-id", b"p1"]) == "p1"
    assert pilot_id_of([b"python", b"--pilot-id=p2"]) == "p2"
    assert pilot_id_of([b"python", b"--pilot-id"]) is None


def test_local_pilot_does_not_inherit_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HPC_KEY_PASS", "s3cret")
    monkeypatch.setenv("SLURM_JOB_ID", "99")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    env = pilot_environment({"PYTHONPATH": "/code"})
    assert "HPC_KEY_PASS" not in env and "SLURM_JOB_ID" not in env
    assert env["PYTHONPATH"] == "/code" and env["LC_ALL"] == "C.UTF-8" and "PATH" in env
