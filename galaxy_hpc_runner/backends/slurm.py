"""The ``slurm`` backend: it builds sbatch / squeue / scancel / sinfo command lines and
parses their output; :class:`CommandBackend` runs them through the transport.

Locally when the submitting host is a Slurm client, over SSH otherwise. Every
option becomes its own argument; the batch script is the quoted pilot command.

- The job name is the pilot id, so a pilot can be found by name after an
  uncertain submission (``squeue --me --name=PILOT --states=all``).
- State: ``squeue --jobs=ID,... --states=all``; when one id has aged out of the
  controller (``Invalid job id``), each id is asked alone and the forgotten one is gone.
- ``--export=NONE``: the pilot does not inherit the submitter's environment
  (secrets, a passphrase variable); it gets the user's login environment on the
  node, and the batch script sets what the pilot needs (``PYTHONPATH``).
- ``--time`` always comes from the pilot's walltime: one setting feeds both
  the scheduler and the pilot.
"""

from __future__ import annotations

import logging
import shlex

from galaxy_hpc_runner.backends.base import CommandBackend, PilotSpec, PilotState, PilotStatus
from galaxy_hpc_runner.config import Config
from galaxy_hpc_runner.errors import CommandError, SchedulerError
from galaxy_hpc_runner.transport.base import Transport

log = logging.getLogger(__name__)

PENDING_STATES = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
                  "RESV_DEL_HOLD", "SUSPENDED"}
RUNNING_STATES = {"RUNNING", "COMPLETING", "STOPPED", "SIGNALING", "STAGE_OUT",
                  "RESIZING", "UPDATE_DB"}
# Anything else (COMPLETED, FAILED, CANCELLED, TIMEOUT, NODE_FAIL, PREEMPTED,
# OUT_OF_MEMORY, BOOT_FAIL, DEADLINE, ...) means the pilot is gone.
OPTION_KEYS = ("partition", "gres", "mem", "account", "qos")
SQUEUE_FORMAT = "--format=%i|%T|%r|%j"  # id|state|reason|name (the name last: it may hold '|')
GONE_FROM_SLURM = "no longer known to Slurm"
INVALID_JOB = "Invalid job id"


def slurm_time(seconds: float) -> str:
    """Seconds as Slurm's D-HH:MM:SS (rounded up to whole minutes)."""
    minutes = max(1, int(-(-seconds // 60)))
    days, rest = divmod(minutes, 1440)
    return "%d-%02d:%02d:00" % (days, rest // 60, rest % 60)


def slurm_status(state: str, reason: str = "") -> PilotStatus:
    """One Slurm job state (``RUNNING``, ``CANCELLED by 0``, ``TIMEOUT+``) as a PilotStatus."""
    words = state.strip().upper().split()
    word = words[0].rstrip("+") if words else ""
    if word in PENDING_STATES:
        return PilotStatus(PilotState.PENDING, reason.strip())
    if word in RUNNING_STATES:
        return PilotStatus(PilotState.RUNNING)
    if not word:
        return PilotStatus(PilotState.UNKNOWN)
    return PilotStatus(PilotState.GONE, word)


def parse_squeue(text: str) -> dict[str, tuple[PilotStatus, str]]:
    """``squeue --format=%i|%T|%r|%j`` lines -> {job id: (status, job name)}.

    Lines that are not of that shape (banners, warnings a site's wrapper prints)
    are skipped, never guessed at.
    """
    out: dict[str, tuple[PilotStatus, str]] = {}
    for line in text.splitlines():
        parts = line.strip().split("|", 3)
        if len(parts) < 2 or not parts[0].strip() or " " in parts[0].strip():
            continue
        reason = parts[2] if len(parts) > 2 else ""
        name = parts[3] if len(parts) > 3 else ""
        out[parts[0].strip()] = (slurm_status(parts[1], reason), name.strip())
    return out


class SlurmBackend(CommandBackend):
    name = "slurm"

    def __init__(self, cfg: Config, transport: Transport) -> None:
        self.opts = cfg.scheduler
        super().__init__(cfg, transport, float(self.opts.get("command_timeout", "60")))
        if self.opts.get("time"):
            log.warning("[scheduler] time = %s is ignored: the Slurm time limit is the pilot's "
                        "walltime ([pilot] walltime)", self.opts["time"])

    # -- submit ----------------------------------------------------------------------
    def submit_argv(self, spec: PilotSpec) -> list[str]:
        argv = ["sbatch", "--parsable", "--job-name=%s" % spec.pilot_id, "--export=NONE",
                "--output=%s" % spec.output, "--chdir=%s" % spec.workspace,
                "--time=%s" % slurm_time(spec.walltime),
                "--signal=%s" % self.opts.get("signal", "B:USR1@120"),
                "--cpus-per-task=%s" % self.opts.get("cpus", str(spec.slots))]
        argv += ["--%s=%s" % (key, self.opts[key]) for key in OPTION_KEYS if self.opts.get(key)]
        argv += shlex.split(self.opts.get("extra_args", ""))
        return argv

    # the old name, kept for callers that print the command
    sbatch_argv = submit_argv

    def submit_stdin(self, spec: PilotSpec) -> str:
        return self.batch_script(spec)

    @staticmethod
    def batch_script(spec: PilotSpec) -> str:
        return "#!/bin/bash\n# galaxy-hpc-batch pilot %s\n%s\n" % (
            spec.pilot_id, spec.shell_command())

    def parse_submit(self, stdout: str) -> str:
        """``sbatch --parsable``: ``ID`` or ``ID;CLUSTER`` on the last line of its output."""
        lines = [line.strip() for line in stdout.splitlines() if line.strip()]
        job_id = lines[-1].split(";")[0].strip() if lines else ""
        if not job_id.isdigit():
            raise SchedulerError("sbatch answered %r, not a job id" % stdout.strip()[-200:])
        return job_id

    # -- status ----------------------------------------------------------------------
    def status_argv(self, ids: list[str]) -> list[str]:
        return ["squeue", "--noheader", "--states=all", "--jobs=%s" % ",".join(ids),
                SQUEUE_FORMAT]

    def status_gone(self, exc: CommandError) -> bool:
        """squeue refuses a whole list when one id in it has aged out of the controller."""
        return INVALID_JOB in exc.stderr

    def parse_status(self, stdout: str, ids: list[str]) -> dict[str, PilotStatus]:
        seen = parse_squeue(stdout)
        return {sid: seen[sid][0] if sid in seen else PilotStatus(PilotState.GONE,
                                                                  GONE_FROM_SLURM)
                for sid in ids}

    # -- find ------------------------------------------------------------------------
    def find_argv(self, pilot_id: str) -> list[str]:
        return ["squeue", "--noheader", "--states=all", "--me", "--name=%s" % pilot_id,
                SQUEUE_FORMAT]

    def parse_find(self, stdout: str, pilot_id: str) -> str | None:
        """The id of the job named ``pilot_id``; a queued or running one before ended ones."""
        named = [(sid, status) for sid, (status, name) in parse_squeue(stdout).items()
                 if name == pilot_id]
        if len(named) > 1:
            log.warning("%d Slurm jobs are named %s: %s", len(named), pilot_id,
                        ", ".join(sid for sid, _ in named))
        named.sort(key=lambda item: (item[1].state is PilotState.GONE, _job_number(item[0])))
        return named[0][0] if named else None

    # -- cancel, ping ----------------------------------------------------------------
    def cancel_argv(self, scheduler_id: str) -> list[str]:
        return ["scancel", scheduler_id]

    def cancel_gone(self, exc: CommandError) -> bool:
        return INVALID_JOB in exc.stderr

    def ping_argv(self) -> list[str]:
        return ["sinfo", "--noheader", "--format=%R"]

    def parse_ping(self, stdout: str) -> str:
        """The controller answers and knows the configured partition."""
        partitions = stdout.split()
        wanted = self.opts.get("partition")
        if wanted and wanted not in partitions:
            raise SchedulerError("partition %r is not one of %s" % (wanted, ", ".join(partitions)))
        return "partitions %s" % ", ".join(partitions)


def _job_number(sid: str) -> int:
    head = sid.split("_")[0]
    return int(head) if head.isdigit() else 0
