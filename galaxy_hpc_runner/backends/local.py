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


def _alive_pilot(pid: int) -> bool:
    """True when ``pid`` is a live (not zombie) hpc_worker process."""
    try:
        with open("/proc/%d/stat" % pid, encoding="ascii", errors="replace") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            cmdline = handle.read()
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X") and b"hpc_worker" in cmdline


class LocalBackend(Backend):
    """Ids are process ids; a pid reused by another program is not taken for a pilot."""

    name = "local"

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    def submit(self, spec: PilotSpec) -> str:
        os.makedirs(os.path.dirname(spec.output), exist_ok=True)
        env = dict(os.environ, **spec.env)
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

    def cancel(self, scheduler_id: str) -> None:
        if self._one(scheduler_id).state is PilotState.GONE:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(scheduler_id), signal.SIGTERM)
