"""The ``local`` backend: the pilot as a detached process on this machine."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess

from galaxy_hpc_runner.backends.base import Backend, PilotSpec, PilotState, PilotStatus
from galaxy_hpc_runner.config import Config
from galaxy_hpc_runner.errors import SchedulerError

log = logging.getLogger(__name__)


PROC = "/proc"
# What a local pilot keeps of the submitter's environment (like Slurm's --export=NONE,
# which gives the login basics): never the submitter's secrets or its own scheduler ids.
ENV_KEEP = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR",
            "TERM", "CUDA_VISIBLE_DEVICES")


def pilot_environment(extra: dict[str, str]) -> dict[str, str]:
    """The allowlisted part of this process's environment plus the pilot's own variables."""
    env = {k: v for k, v in os.environ.items() if k in ENV_KEEP or k.startswith("LC_")}
    env.update(extra)
    return env


def _pilot_argv(pid: int) -> list[bytes] | None:
    """The argv of ``pid`` when it is a live (not zombie) hpc_worker process, else None."""
    try:
        with open("%s/%d/stat" % (PROC, pid), encoding="ascii", errors="replace") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
        with open("%s/%d/cmdline" % (PROC, pid), "rb") as handle:
            argv = handle.read().split(b"\0")
    except (OSError, IndexError):
        return None
    if state in ("Z", "X") or not any(b"hpc_worker" in word for word in argv):
        return None
    return argv


def _alive_pilot(pid: int) -> bool:
    return _pilot_argv(pid) is not None


def pilot_id_of(argv: list[bytes]) -> str | None:
    """The value after ``--pilot-id`` (or of ``--pilot-id=X``) in a pilot's argv."""
    for i, word in enumerate(argv):
        if word == b"--pilot-id" and i + 1 < len(argv):
            return argv[i + 1].decode("utf-8", "replace")
        if word.startswith(b"--pilot-id="):
            return word.split(b"=", 1)[1].decode("utf-8", "replace")
    return None


class LocalBackend(Backend):
    """Ids are process ids; a pid reused by another program is not taken for a pilot."""

    name = "local"

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    def submit(self, spec: PilotSpec) -> str:
        os.makedirs(os.path.dirname(spec.output), exist_ok=True)
        env = pilot_environment(spec.env)
        try:
            with open(spec.output, "ab") as out:
                proc = subprocess.Popen(spec.argv, stdin=subprocess.DEVNULL, stdout=out,
                                        stderr=subprocess.STDOUT, env=env, cwd=spec.workspace,
                                        start_new_session=True)
        except OSError as exc:
            raise SchedulerError("cannot start pilot %s: %s" % (spec.argv[0], exc)) from exc
        self._children[proc.pid] = proc
        return str(proc.pid)

    def status(self, ids: list[str]) -> dict[str, PilotStatus]:
        return {sid: self._one(sid) for sid in ids}

    def _one(self, sid: str) -> PilotStatus:
        pid = int(sid)
        child = self._children.get(pid)
        if child is not None and child.poll() is not None:
            del self._children[pid]
            return PilotStatus(PilotState.GONE, "exit %s" % child.returncode)
        if not _alive_pilot(pid):
            return PilotStatus(PilotState.GONE, "exited")
        return PilotStatus(PilotState.RUNNING)

    def find_by_name(self, pilot_id: str) -> str | None:
        """The pid of the live pilot process started with ``--pilot-id pilot_id``."""
        try:
            pids = sorted(int(name) for name in os.listdir(PROC) if name.isdigit())
        except OSError as exc:
            raise SchedulerError("cannot list processes in %s: %s" % (PROC, exc.strerror)) from exc
        for pid in pids:
            argv = _pilot_argv(pid)
            if argv is not None and pilot_id_of(argv) == pilot_id:
                return str(pid)
        return None

    def cancel(self, scheduler_id: str) -> None:
        if self._one(scheduler_id).state is PilotState.GONE:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(scheduler_id), signal.SIGTERM)
