"""The one small interface every scheduler backend implements, and the command runner.

Two shapes fit it:

- :class:`CommandBackend` (Slurm, and any future PBS/LSF backend): the backend only
  *builds* argument lists and *parses* the scheduler's output; the base class runs
  them through the transport with a timeout and maps every failure to
  :mod:`galaxy_hpc_runner.errors` (the psij-python shape).
- API backends (local processes, DRMAA) implement :class:`Backend` directly.

Idempotent submission: the scheduler's job name IS the pilot id, so after any
submission whose outcome is uncertain (:class:`SubmissionUncertain`) the caller asks
:meth:`Backend.find_by_name` before it submits again.
"""

from __future__ import annotations

import abc
import logging
import shlex
from dataclasses import dataclass, field

from galaxy_hpc_runner.config import Config
from galaxy_hpc_runner.errors import CommandError, CommandTimeout, SchedulerError, TransportError
from galaxy_hpc_runner.transport.base import CommandOutcomeUnknown, Transport
from hpc_worker import protocol as p
from hpc_worker.states import PilotState

__all__ = ["Backend", "CommandBackend", "PilotSpec", "PilotState", "PilotStatus",
           "SubmissionUncertain", "pilot_spec"]
log = logging.getLogger(__name__)
# W/pilots/PILOT.out: the scheduler's output (protocol order: .json .hb .log .out)
PILOT_OUTPUT_SUFFIX = p.PILOT_OUT


class SubmissionUncertain(SchedulerError):
    """A submission may or may not have reached the scheduler (dropped connection, timeout,
    an answer that is not a job id). Look the pilot up with ``find_by_name`` before
    submitting it again; never resubmit blindly."""

    def __init__(self, pilot_id: str, detail: str) -> None:
        self.pilot_id = pilot_id
        super().__init__("submission of pilot %s has an unknown outcome (%s); look it up by "
                         "name before submitting again" % (pilot_id, detail))


@dataclass
class PilotStatus:
    state: PilotState
    reason: str = ""  # the scheduler's word for how it ended (TIMEOUT, CANCELLED, ...)

    @property
    def timed_out(self) -> bool:
        return self.reason.upper().startswith("TIMEOUT")


@dataclass
class PilotSpec:
    """One pilot to submit: its id (also the scheduler job name), its command, its output."""

    pilot_id: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    workspace: str = ""
    walltime: float = 0.0
    slots: int = 1

    @property
    def output(self) -> str:
        return p.pilot_path(self.workspace, self.pilot_id, PILOT_OUTPUT_SUFFIX)

    def shell_command(self) -> str:
        """The command as one shell line (for batch scripts), every word quoted."""
        env = " ".join("%s=%s" % (k, shlex.quote(v)) for k, v in sorted(self.env.items()))
        return ("exec env %s " % env if env else "exec ") + shlex.join(self.argv)


def pilot_spec(cfg: Config, pilot_id: str) -> PilotSpec:
    """The hpc-worker command line for a new pilot, from the [pilot] section."""
    pc = cfg.pilot
    from galaxy_hpc_runner.dropbox.deploy import remote_program  # the deployed zipapp

    argv = [pc.python, remote_program(cfg), "--workspace", cfg.workspace,
            "--pilot-id", pilot_id, "--slots", str(pc.slots),
            "--idle-timeout", "%g" % pc.idle_timeout, "--walltime", "%g" % pc.walltime,
            "--poll", "%g" % pc.poll, "--heartbeat", "%g" % pc.heartbeat,
            "--grace", "%g" % pc.grace]
    if pc.slots_per_gpu != 1:  # slots sharing one allocated GPU (hpc_worker.gpu)
        argv += ["--slots-per-gpu", str(pc.slots_per_gpu)]
    return PilotSpec(pilot_id=pilot_id, argv=argv, env={},
                     workspace=cfg.workspace, walltime=pc.walltime, slots=pc.slots)


class Backend(abc.ABC):
    """Submit a pilot, report pilot states, cancel a pilot, find a pilot by its id."""

    name = "abstract"

    @abc.abstractmethod
    def submit(self, spec: PilotSpec) -> str:
        """Queue the pilot under the job name ``spec.pilot_id``; the scheduler's id for it.

        SubmissionUncertain when it may have been queued all the same; any other
        SchedulerError means it was not.
        """

    @abc.abstractmethod
    def status(self, ids: list[str]) -> dict[str, PilotStatus]:
        """The state of each pilot; SchedulerError when the scheduler cannot be asked."""

    @abc.abstractmethod
    def cancel(self, scheduler_id: str) -> None:
        """Ask the scheduler to end the pilot (it gets SIGTERM and releases its jobs).

        No error when the pilot is already gone.
        """

    def find_by_name(self, pilot_id: str) -> str | None:
        """The scheduler id of the job submitted as ``pilot_id``, or None when it has none.

        Asked after any submission whose outcome is uncertain (a killed submitter, a
        dropped connection), so a pilot is never submitted twice. The job may be
        queued, running or recently ended: ``status()`` tells which. SchedulerError
        when the scheduler cannot be asked or cannot look jobs up by name.
        """
        raise SchedulerError("the %s backend cannot look pilots up by name" % self.name)

    def ping(self) -> str:
        """Ask the scheduler something harmless; SchedulerError when it cannot answer."""
        return "nothing to ask"

    def dry_run(self, spec: PilotSpec) -> str:
        """What submit() would do, for ``hpc-batch pilot --dry-run``."""
        return spec.shell_command()


class CommandBackend(Backend):
    """A scheduler driven by its command-line tools through the transport.

    Subclasses build argument lists and parse text; this class runs them. Reads
    (status, find, ping, cancel) may be retried by the transport after a dropped
    connection; the submission is run once, and an uncertain outcome is reported
    as :class:`SubmissionUncertain`, never retried.
    """

    def __init__(self, cfg: Config, transport: Transport, timeout: float = 60.0) -> None:
        self.cfg = cfg
        self.t = transport
        self.timeout = timeout

    # -- what a subclass provides ---------------------------------------------------
    @abc.abstractmethod
    def submit_argv(self, spec: PilotSpec) -> list[str]: ...

    def submit_stdin(self, spec: PilotSpec) -> str | None:
        """The batch script fed to the submit command on stdin (None: nothing)."""
        return None

    @abc.abstractmethod
    def parse_submit(self, stdout: str) -> str:
        """The job id in the submit command's output; SchedulerError when there is none."""

    @abc.abstractmethod
    def status_argv(self, ids: list[str]) -> list[str]: ...

    @abc.abstractmethod
    def parse_status(self, stdout: str, ids: list[str]) -> dict[str, PilotStatus]:
        """A status for every id in ``ids`` (GONE for those the scheduler no longer lists)."""

    @abc.abstractmethod
    def cancel_argv(self, scheduler_id: str) -> list[str]: ...

    def status_gone(self, exc: CommandError) -> bool:
        """True when a failed status command says one of the ids is no longer known (then
        each id is asked on its own, and one the scheduler forgot is GONE)."""
        return False

    def cancel_gone(self, exc: CommandError) -> bool:
        """True when a failed cancel says the job no longer exists (nothing to cancel)."""
        return False

    def find_argv(self, pilot_id: str) -> list[str] | None:
        """The command listing jobs named ``pilot_id``; None: this scheduler cannot."""
        return None

    def parse_find(self, stdout: str, pilot_id: str) -> str | None:
        return None

    def ping_argv(self) -> list[str] | None:
        return None

    def parse_ping(self, stdout: str) -> str:
        return stdout.strip() or "answered"

    # -- what this class runs --------------------------------------------------------
    def _call(self, argv: list[str], stdin: str | None = None, idempotent: bool = True) -> str:
        """Run ``argv`` through the transport; its stdout. CommandError, CommandTimeout,
        TransportError (head node unreachable) and CommandOutcomeUnknown propagate."""
        log.debug("%s backend runs %s", self.name, argv)
        return self.t.run(argv, timeout=self.timeout, stdin=stdin,
                          idempotent=idempotent).stdout

    def submit(self, spec: PilotSpec) -> str:
        argv = self.submit_argv(spec)
        try:
            out = self._call(argv, stdin=self.submit_stdin(spec), idempotent=False)
        except (CommandOutcomeUnknown, CommandTimeout) as exc:
            raise SubmissionUncertain(spec.pilot_id, str(exc)) from exc
        except CommandError as exc:
            if exc.rc < 0:  # killed or no exit status: it may have queued the job
                raise SubmissionUncertain(spec.pilot_id, str(exc)) from exc
            raise
        except TransportError as exc:  # the command never started: nothing was queued
            raise SchedulerError("cannot submit pilot %s: %s" % (spec.pilot_id, exc)) from exc
        try:
            return self.parse_submit(out)
        except SchedulerError as exc:
            raise SubmissionUncertain(spec.pilot_id, str(exc)) from exc

    def status(self, ids: list[str]) -> dict[str, PilotStatus]:
        if not ids:
            return {}
        try:
            out = self._call(self.status_argv(ids))
        except CommandError as exc:
            if not self.status_gone(exc):
                raise  # the scheduler cannot be asked: the caller reads UNKNOWN
            if len(ids) == 1:
                return self.parse_status("", ids)
            return {sid: status for one in ids for sid, status in self.status([one]).items()}
        return self.parse_status(out, ids)

    def cancel(self, scheduler_id: str) -> None:
        try:
            self._call(self.cancel_argv(scheduler_id))
        except CommandError as exc:
            if not self.cancel_gone(exc):
                raise

    def find_by_name(self, pilot_id: str) -> str | None:
        argv = self.find_argv(pilot_id)
        if argv is None:
            return super().find_by_name(pilot_id)
        return self.parse_find(self._call(argv), pilot_id)

    def ping(self) -> str:
        argv = self.ping_argv()
        if argv is None:
            return super().ping()
        return self.parse_ping(self._call(argv))

    def dry_run(self, spec: PilotSpec) -> str:
        stdin = self.submit_stdin(spec)
        line = shlex.join(self.submit_argv(spec))
        return line if stdin is None else "%s <<'EOF'\n%sEOF" % (line, stdin)
