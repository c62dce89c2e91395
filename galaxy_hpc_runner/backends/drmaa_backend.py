"""The ``drmaa`` backend: the pilot through the python ``drmaa`` package (DRMAA 1.0).

DRM-agnostic: the same code drives Grid Engine's libdrmaa (used in the tests)
and slurm-drmaa at a site that has it. ``[scheduler] native_spec`` passes
DRM-specific options (slurm-drmaa wants e.g. ``--gres=gres:gpu:1 --mem=100``).

How a pilot ended: DRMAA 1.0 says only "done" or "failed" (and forgets the job
once another session asks). Where Grid Engine's ``qacct`` is on the PATH, its
accounting record tells a hard-limit kill (``failed 37 : qmaster enforced h_rt``)
from any other end; such a pilot is reported ``TIMEOUT`` like Slurm's, so its claims
count as walltime releases, not lost attempts. Grid Engine writes that record up to
its ``flush_time`` (15 s by default) after the end: a pilot this session saw end
other than by its own exit 0 (signalled, aborted; Grid Engine says "done" or
"failed" for an h_rt kill alike) is reported UNKNOWN (nothing is reclaimed, no pilot
is added) until the record is there, at most :data:`ACCOUNTING_WAIT` seconds. A
pilot no session saw end is judged on the record there is, if any.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shlex
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Any

from galaxy_hpc_runner.backends.base import Backend, PilotSpec, PilotState, PilotStatus
from galaxy_hpc_runner.config import Config
from galaxy_hpc_runner.errors import ConfigError, SchedulerError

log = logging.getLogger(__name__)

ACCOUNTING_WAIT = 60.0  # longest wait for Grid Engine's accounting record of an ended pilot
ACCOUNTING_POLL = 3.0  # qacct at most this often per pilot while waiting
QACCT_TIMEOUT = 20.0
HARD_LIMIT_KILL = 37  # Grid Engine's "failed 37 : qmaster enforced h_rt, h_cpu, or h_vmem limit"
GONE_FROM_DRM = "no longer known to the DRM"


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
        self._ended: dict[str, float] = {}  # seen ended, accounting record not yet written
        self._asked: dict[str, float] = {}  # when qacct was last asked about it

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
            return self._ended_status(sid, "")
        except self.drmaa.errors.DrmaaException as exc:
            raise SchedulerError("DRMAA cannot tell the state of %s: %s" % (sid, exc)) from exc
        if state in (js.QUEUED_ACTIVE, js.SYSTEM_ON_HOLD, js.USER_ON_HOLD,
                     js.USER_SYSTEM_ON_HOLD):
            return PilotStatus(PilotState.PENDING, str(state))
        if state in (js.RUNNING, js.SYSTEM_SUSPENDED, js.USER_SUSPENDED):
            return PilotStatus(PilotState.RUNNING)
        if state in (js.DONE, js.FAILED):
            if self._exited_cleanly(sid):
                return PilotStatus(PilotState.GONE, str(state))
            return self._ended_status(sid, str(state))  # killed: by a hard limit?
        return PilotStatus(PilotState.UNKNOWN, str(state))

    def _ended_status(self, sid: str, state: str) -> PilotStatus:
        """GONE with the accounting's word on how it ended; UNKNOWN while a pilot this
        session saw end has no accounting record yet (bounded by ACCOUNTING_WAIT)."""
        now = time.monotonic()
        waiting = PilotStatus(PilotState.UNKNOWN, "%s; waiting for its accounting record"
                              % (state or "ended"))
        if now - self._asked.get(sid, -ACCOUNTING_POLL) < ACCOUNTING_POLL:
            return waiting  # qacct reads the whole accounting file: not at every pass
        self._asked[sid] = now
        record, may_come = qacct(sid)
        if (record is None and may_come and (state or sid in self._ended)
                and now - self._ended.setdefault(sid, now) < ACCOUNTING_WAIT):
            return waiting
        self._ended.pop(sid, None)
        self._asked.pop(sid, None)
        if record is None:
            return PilotStatus(PilotState.GONE, state or GONE_FROM_DRM)
        self._reap(sid)
        return PilotStatus(PilotState.GONE, end_reason(record))

    def _exited_cleanly(self, sid: str) -> bool:
        """The job's own exit 0 (its JobInfo, which this reaps): no limit killed it."""
        try:
            info = self._s().wait(sid, self.drmaa.Session.TIMEOUT_NO_WAIT)
        except self.drmaa.errors.DrmaaException:
            return False
        return bool(info.hasExited and info.exitStatus == 0 and not info.hasSignal)

    def _reap(self, sid: str) -> None:
        """Free the session's memory of an ended job (its JobInfo); errors do not matter."""
        with contextlib.suppress(self.drmaa.errors.DrmaaException):
            self._s().wait(sid, self.drmaa.Session.TIMEOUT_NO_WAIT)

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


@dataclass
class Accounting:
    """The fields of a Grid Engine accounting record (``qacct -j``) that tell how it ended."""

    failed: str = "0"  # "37  : qmaster enforced h_rt, h_cpu, or h_vmem limit"
    exit_status: str = ""
    wallclock: str = ""  # ru_wallclock, "6s"
    category: str = ""  # the requests, "-l h_rt=5"


QACCT_LINE = re.compile(r"^(failed|exit_status|ru_wallclock|category)\s+(.*)$")


def qacct(sid: str) -> tuple[Accounting | None, bool]:
    """Grid Engine's accounting record of job ``sid`` (``qacct -j``), and whether a
    missing record may still come (``qacct`` runs and only lacks it)."""
    try:
        proc = subprocess.run(["qacct", "-j", sid], capture_output=True, text=True,
                              timeout=QACCT_TIMEOUT, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("qacct -j %s: %s", sid, exc)
        return None, False
    if proc.returncode != 0:
        return None, "not found" in proc.stderr
    if "=====" not in proc.stdout:
        return None, True
    record = Accounting()
    for line in proc.stdout.splitlines():  # the last record wins: a reused id's newest
        match = QACCT_LINE.match(line)
        if match:
            name = match.group(1).replace("ru_", "", 1)
            setattr(record, name, match.group(2).strip())
    return record, False


def end_reason(record: Accounting) -> str:
    """``TIMEOUT ...`` for a hard wallclock kill (what ``PilotStatus.timed_out`` reads),
    else ``FAILED n: why`` or ``DONE exit N``."""
    words = record.failed.split()
    code = words[0] if words else "0"
    if code == str(HARD_LIMIT_KILL) and _hit_h_rt(record):
        return "TIMEOUT (Grid Engine: %s)" % record.failed
    if code != "0":
        return "FAILED %s" % record.failed
    return "DONE exit %s" % (record.exit_status.split() or ["?"])[0]


def _hit_h_rt(record: Accounting) -> bool:
    """Failed 37 is h_rt, h_cpu or h_vmem: it is the wallclock when the job asked for no
    h_rt of its own (a queue limit) or ran at least as long as the h_rt it asked for."""
    match = re.search(r"h_rt=([0-9:]+)", record.category)
    if not match:
        return True
    limit = 0
    for part in match.group(1).split(":"):
        limit = limit * 60 + int(part or "0")
    wallclock = re.match(r"[0-9.]+", record.wallclock)
    return wallclock is None or float(wallclock.group(0)) >= limit - 1
