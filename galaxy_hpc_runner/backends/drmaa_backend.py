"""The ``drmaa`` backend: the pilot through the python ``drmaa`` package (DRMAA 1.0).

DRM-agnostic: the same code drives Grid Engine's libdrmaa (used in the tests)
and slurm-drmaa at a site that has it. ``[scheduler] native_spec`` passes
DRM-specific options (slurm-drmaa wants e.g. ``--gres=gres:gpu:1 --mem=100``).
"""

from __future__ import annotations

import logging
import shlex
import threading
from typing import Any

from galaxy_hpc_runner.backends.base import Backend, PilotSpec, PilotState, PilotStatus
from galaxy_hpc_runner.config import Config
from galaxy_hpc_runner.errors import ConfigError, SchedulerError

log = logging.getLogger(__name__)


def _import_drmaa() -> Any:
    try:
        import drmaa
    except (ImportError, RuntimeError, OSError) as exc:
        raise ConfigError(
            "the drmaa backend needs the python 'drmaa' package and a DRMAA library "
            "(DRMAA_LIBRARY_PATH); Grid Engine's libdrmaa also needs the process started with "
            "GLIBC_TUNABLES=glibc.rtld.optional_static_tls=4096000: %s" % exc) from exc
    return drmaa


class DrmaaBackend(Backend):
    """DRMAA 1.0 cannot list jobs by name: ``find_by_name`` raises SchedulerError (the
    caller treats the pilot as unknown). The job name is still the pilot id, for people."""

    name = "drmaa"

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.drmaa = _import_drmaa()
        self._lock = threading.Lock()  # a DRMAA session is not thread-safe
        self._session: Any = None

    def _s(self) -> Any:
        if self._session is None:
            session = self.drmaa.Session()
            try:
                session.initialize()
            except self.drmaa.errors.DrmaaException as exc:
                raise SchedulerError("cannot open a DRMAA session: %s" % exc) from exc
            self._session = session
        return self._session

    def ping(self) -> str:
        with self._lock:
            return "DRMAA session to %s" % self._s().contact

    def native_spec(self, spec: PilotSpec) -> str:
        return self.cfg.scheduler.get("native_spec", "")

    def submit(self, spec: PilotSpec) -> str:
        with self._lock:
            session = self._s()
            jt = session.createJobTemplate()
            try:
                jt.remoteCommand = spec.argv[0]
                jt.args = spec.argv[1:]
                jt.jobName = spec.pilot_id
                jt.jobEnvironment = spec.env
                jt.workingDirectory = spec.workspace
                jt.outputPath = ":" + spec.output
                jt.joinFiles = True
                if self.native_spec(spec):
                    jt.nativeSpecification = self.native_spec(spec)
                return str(session.runJob(jt))
            except self.drmaa.errors.DrmaaException as exc:
                raise SchedulerError("DRMAA refused the pilot: %s" % exc) from exc
            finally:
                session.deleteJobTemplate(jt)

    def status(self, ids: list[str]) -> dict[str, PilotStatus]:
        with self._lock:
            return {sid: self._one(sid) for sid in ids}

    def _one(self, sid: str) -> PilotStatus:
        js = self.drmaa.JobState
        try:
            state = self._s().jobStatus(sid)
        except self.drmaa.errors.InvalidJobException:
            return PilotStatus(PilotState.GONE, "no longer known to the DRM")
        except self.drmaa.errors.DrmaaException as exc:
            raise SchedulerError("DRMAA cannot tell the state of %s: %s" % (sid, exc)) from exc
        if state in (js.QUEUED_ACTIVE, js.SYSTEM_ON_HOLD, js.USER_ON_HOLD,
                     js.USER_SYSTEM_ON_HOLD):
            return PilotStatus(PilotState.PENDING, str(state))
        if state in (js.RUNNING, js.SYSTEM_SUSPENDED, js.USER_SUSPENDED):
            return PilotStatus(PilotState.RUNNING)
        if state in (js.DONE, js.FAILED):
            return PilotStatus(PilotState.GONE, str(state))
        return PilotStatus(PilotState.UNKNOWN, str(state))

    def cancel(self, scheduler_id: str) -> None:
        with self._lock:
            try:
                self._s().control(scheduler_id, self.drmaa.JobControlAction.TERMINATE)
            except self.drmaa.errors.InvalidJobException:
                pass
            except self.drmaa.errors.DrmaaException as exc:
                raise SchedulerError("DRMAA cannot terminate %s: %s" % (scheduler_id, exc)) from exc

    def dry_run(self, spec: PilotSpec) -> str:
        return "DRMAA runJob: remoteCommand=%s args=%s env=%s nativeSpecification=%r" % (
            spec.argv[0], shlex.join(spec.argv[1:]), spec.env, self.native_spec(spec))
