"""The one small interface every scheduler backend implements."""

from __future__ import annotations

import abc
import os
import shlex
from dataclasses import dataclass, field

from galaxy_hpc_runner.config import Config
from galaxy_hpc_runner.errors import SchedulerError
from hpc_worker import protocol as p
from hpc_worker.states import PilotState

__all__ = ["Backend", "PilotSpec", "PilotState", "PilotStatus", "pilot_spec"]


@dataclass
class PilotStatus:
    state: PilotState
    reason: str = ""  # the scheduler's word for how it ended (TIMEOUT, CANCELLED, ...)

    @property
    def timed_out(self) -> bool:
        return self.reason.upper().startswith("TIMEOUT")


@dataclass
class PilotSpec:
    """One pilot to submit: its id, the command it runs, where its output goes."""

    pilot_id: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    workspace: str = ""
    walltime: float = 0.0
    slots: int = 1

    @property
    def output(self) -> str:
        return os.path.join(self.workspace, p.PILOTS, self.pilot_id + ".out")

    def shell_command(self) -> str:
        """The command as one shell line (for batch scripts), every word quoted."""
        env = " ".join("%s=%s" % (k, shlex.quote(v)) for k, v in sorted(self.env.items()))
        return ("exec env %s " % env if env else "exec ") + shlex.join(self.argv)


def pilot_spec(cfg: Config, pilot_id: str) -> PilotSpec:
    """The hpc-worker command line for a new pilot, from the [pilot] section."""
    pc = cfg.pilot
    argv = [pc.python, "-m", "hpc_worker", "--workspace", cfg.workspace,
            "--pilot-id", pilot_id, "--slots", str(pc.slots),
            "--idle-timeout", "%g" % pc.idle_timeout, "--walltime", "%g" % pc.walltime,
            "--poll", "%g" % pc.poll, "--heartbeat", "%g" % pc.heartbeat,
            "--grace", "%g" % pc.grace]
    return PilotSpec(pilot_id=pilot_id, argv=argv, env={"PYTHONPATH": pc.code_dir},
                     workspace=cfg.workspace, walltime=pc.walltime, slots=pc.slots)


class Backend(abc.ABC):
    """Submit a pilot, report pilot states, cancel a pilot."""

    name = "abstract"

    @abc.abstractmethod
    def submit(self, spec: PilotSpec) -> str:
        """Queue the pilot; returns the scheduler's id for it."""

    @abc.abstractmethod
    def status(self, ids: list[str]) -> dict[str, PilotStatus]:
        """The state of each pilot; UNKNOWN for all when the scheduler cannot be asked."""

    @abc.abstractmethod
    def cancel(self, scheduler_id: str) -> None:
        """Ask the scheduler to end the pilot (it gets SIGTERM and releases its jobs)."""

    def find_by_name(self, pilot_id: str) -> str | None:
        """The scheduler id of a queued or running pilot submitted as ``pilot_id``, or None.

        Asked after any submission whose outcome is uncertain (a killed submitter, a
        dropped connection), so a pilot is never submitted twice. SchedulerError when
        the scheduler cannot be asked or cannot look jobs up by name.
        """
        raise SchedulerError("the %s backend cannot look pilots up by name" % self.name)

    def ping(self) -> str:
        """Ask the scheduler something harmless; SchedulerError when it cannot answer."""
        return "nothing to ask"

    def dry_run(self, spec: PilotSpec) -> str:
        """What submit() would do, for ``hpc-batch pilot --dry-run``."""
        return spec.shell_command()
