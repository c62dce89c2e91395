"""The ``slurm`` backend: sbatch / squeue / scontrol / scancel through the transport's shell.

Locally when the submitting host is a Slurm client, over SSH otherwise. Every
option becomes its own argument; the batch script is the quoted pilot command.
"""

from __future__ import annotations

import logging
import shlex

from galaxy_hpc_runner.backends.base import Backend, PilotSpec, PilotState, PilotStatus
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


def slurm_time(seconds: float) -> str:
    """Seconds as Slurm's D-HH:MM:SS (rounded up to whole minutes)."""
    minutes = max(1, int(-(-seconds // 60)))
    days, rest = divmod(minutes, 1440)
    return "%d-%02d:%02d:00" % (days, rest // 60, rest % 60)


class SlurmBackend(Backend):
    name = "slurm"

    def __init__(self, cfg: Config, transport: Transport) -> None:
        self.cfg = cfg
        self.t = transport
        self.opts = cfg.scheduler
        self.timeout = float(self.opts.get("command_timeout", "60"))

    def sbatch_argv(self, spec: PilotSpec) -> list[str]:
        argv = ["sbatch", "--parsable", "--job-name=hpc-batch-pilot",
                "--output=%s" % spec.output, "--chdir=%s" % spec.workspace,
                "--time=%s" % (self.opts.get("time") or slurm_time(spec.walltime)),
                "--signal=%s" % self.opts.get("signal", "B:USR1@120"),
                "--cpus-per-task=%s" % self.opts.get("cpus", str(spec.slots))]
        argv += ["--%s=%s" % (key, self.opts[key]) for key in OPTION_KEYS if self.opts.get(key)]
        argv += shlex.split(self.opts.get("extra_args", ""))
        return argv

    def batch_script(self, spec: PilotSpec) -> str:
        return "#!/bin/bash\n# galaxy-hpc-batch pilot %s\n%s\n" % (
            spec.pilot_id, spec.shell_command())

    def submit(self, spec: PilotSpec) -> str:
        done = self.t.run(self.sbatch_argv(spec), timeout=self.timeout,
                          stdin=self.batch_script(spec))
        job_id = done.stdout.strip().split(";")[0]
        if not job_id.isdigit():
            raise SchedulerError("sbatch answered %r, not a job id" % done.stdout.strip())
        return job_id

    def dry_run(self, spec: PilotSpec) -> str:
        return "%s <<'EOF'\n%sEOF" % (shlex.join(self.sbatch_argv(spec)),
                                       self.batch_script(spec))

    def status(self, ids: list[str]) -> dict[str, PilotStatus]:
        if not ids:
            return {}
        argv = ["squeue", "--noheader", "--states=all", "--jobs=%s" % ",".join(ids),
                "--format=%i|%T|%r"]
        try:
            done = self.t.run(argv, timeout=self.timeout)
        except CommandError as exc:
            if "Invalid job id" not in exc.stderr:
                raise  # controller down or similar: the caller reads UNKNOWN
            return {sid: self._one(sid) for sid in ids}
        seen = self._parse_squeue(done.stdout)
        return {sid: seen.get(sid) or PilotStatus(PilotState.GONE, "no longer known to Slurm")
                for sid in ids}

    @staticmethod
    def _parse_squeue(text: str) -> dict[str, PilotStatus]:
        out = {}
        for line in text.splitlines():
            parts = line.strip().split("|")
            if len(parts) >= 2:
                out[parts[0]] = _status(parts[1], parts[2] if len(parts) > 2 else "")
        return out

    def _one(self, sid: str) -> PilotStatus:
        """One job through scontrol (squeue refuses a list holding an aged-out id)."""
        try:
            done = self.t.run(["scontrol", "--oneliner", "show", "job", sid],
                              timeout=self.timeout)
        except CommandError as exc:
            if "Invalid job id" in exc.stderr:
                return PilotStatus(PilotState.GONE, "no longer known to Slurm")
            raise
        fields = dict(item.split("=", 1) for item in done.stdout.split() if "=" in item)
        return _status(fields.get("JobState", ""), fields.get("Reason", ""))

    def ping(self) -> str:
        """The controller answers and knows the configured partition."""
        out = self.t.run(["sinfo", "--noheader", "--format=%R"], timeout=self.timeout).stdout
        partitions = out.split()
        wanted = self.opts.get("partition")
        if wanted and wanted not in partitions:
            raise SchedulerError("partition %r is not one of %s" % (wanted, ", ".join(partitions)))
        return "partitions %s" % ", ".join(partitions)

    def cancel(self, scheduler_id: str) -> None:
        self.t.run(["scancel", scheduler_id], timeout=self.timeout)


def _status(state: str, reason: str) -> PilotStatus:
    state = state.strip().upper()
    if state in PENDING_STATES:
        return PilotStatus(PilotState.PENDING, reason)
    if state in RUNNING_STATES:
        return PilotStatus(PilotState.RUNNING)
    if not state:
        return PilotStatus(PilotState.UNKNOWN)
    return PilotStatus(PilotState.GONE, state)
