"""One job run by the pilot: start an attempt, watch it, end it, report or release it."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Union

from . import journal
from . import protocol as p
from .attempt import GATE_VARIABLE, Attempt, JobInvalid, job_env
from .gpu import Usage
from .records import JobSpec, Result, RunLine, learned_runtime
from .states import Reason, ReleaseReason, ResultStatus

log = logging.getLogger(__name__)
HOST = socket.gethostname()  # asked once: a system call per use otherwise


class JobRun:
    """A claimed job's attempt, its process group and what the pilot knows about it."""

    def __init__(self, root: str, key: str, pilot: str, slot: int, gpu: str, spec: JobSpec,
                 runs: Optional[List[RunLine]] = None) -> None:
        self.root = root
        self.key = key
        self.pilot = pilot
        self.slot = slot
        self.gpu = gpu
        self.spec = spec
        self.runs = runs or []
        self.learned = learned_runtime(self.runs)
        self.attempt: Optional[Attempt] = None
        self.proc: Optional[Process] = None
        self.start_time = 0.0
        self.start_iso = ""
        self.kill_reason = ""
        self.kill_due: Optional[float] = None  # SIGKILL the group at this time if still alive
        self.settle_until: Optional[float] = None
        self.usage = Usage()
        self.ended: Optional[float] = None  # when its shell was reaped and its group killed

    @property
    def claim_path(self) -> str:
        return p.marker(self.root, p.CLAIMED, p.claim_name(self.key, self.pilot))

    def walltime(self) -> Optional[float]:
        return self.spec.walltime

    def elapsed(self, now: float) -> float:
        """Seconds it ran: until its processes ended, if they did (not until its report,
        which waits for the settle time)."""
        end = now if self.ended is None else self.ended
        return max(0.0, end - self.start_time) if self.start_time else 0.0

    def start(self, pilot_env: Mapping[str, str], slot_env: Mapping[str, str],
              root_as_given: str, keep: Sequence[str] = (),
              announce: Callable[[int], None] = lambda _pgid: None) -> int:
        """Make a fresh attempt directory and start ``bash attempt-N.sh`` there, in its own
        session; returns the process group id.

        The attempt's script waits at its gate (``Attempt.write_script``) until
        ``announce(pgid)`` (the guard learns the group) returned and the pilot opened the
        gate; a pilot killed before that closes the gate's pipe, and the script leaves
        without running anything: no instant of a start leaves a job the guard cannot end."""
        starts = sum(1 for run in self.runs if run.start is not None)
        attempt = Attempt.create(self.root, self.key, starts)
        self.attempt = attempt
        attempt.link_inputs(self.spec.inputs)
        attempt.write_script(self.spec.workspace, root_as_given, self.spec.script_text)
        env = job_env(pilot_env, self.spec.env, dict(
            slot_env, HPC_BATCH_JOB=self.key, HPC_BATCH_SLOT=str(self.slot),
            HPC_BATCH_ATTEMPT=attempt.name, HPC_BATCH_WORKSPACE=attempt.dir), keep)
        env[GATE_VARIABLE] = "1"
        out, err = attempt.open_logs()
        gate, opener = os.pipe()  # both close on exec: only the pilot holds the opener
        try:
            self.proc = spawn(["bash", attempt.script], attempt.dir, env, (gate, out, err))
            # bash starts while its start line is written: it waits at its gate until then
            self._begin(attempt, opener, announce)
        finally:
            for fd in (out, err, gate, opener):
                os.close(fd)
        log.info("(%s) started on slot %s (gpu %s), pid %s in %s", self.key, self.slot,
                 self.gpu, self.proc.pid, attempt.name)
        return self.proc.pid

    def _begin(self, attempt: Attempt, opener: int, announce: Callable[[int], None]) -> None:
        """The spawned job, waiting at its gate: its start line in the journal, its live
        logs published, its group known to the guard; then the gate opens. Where any of
        that fails the gate never opens: the job is killed having run nothing, and reaped
        before the error goes on."""
        assert self.proc is not None
        try:
            self.start_time, self.start_iso = time.time(), p.now_iso()
            self._append(RunLine(pilot=self.pilot, start=self.start_iso, host=HOST,
                                 slot=self.slot, gpu=self.gpu, attempt=attempt.name))
            attempt.publish((p.STDOUT, p.STDERR))  # the live attempt, as its start line says
            announce(self.proc.pid)
        except BaseException:
            self.end_group()
            self.proc.wait()
            raise
        with contextlib.suppress(BrokenPipeError):  # bash is gone already: poll() tells
            os.write(opener, b"\n")

    def poll(self) -> Optional[int]:
        return None if self.proc is None else self.proc.poll()

    def overdue(self, now: float) -> bool:
        limit = self.walltime()
        return limit is not None and now - self.start_time > limit

    def terminate(self, reason: str, grace: float, now: float) -> None:
        """SIGTERM the job's whole group; SIGKILL follows after ``grace`` (see escalate)."""
        if self.kill_reason:
            return
        self.kill_reason = reason
        if self.proc is None or self.proc.poll() is not None:
            return
        log.info("(%s) stopping: %s", self.key, reason)
        _killpg(self.proc.pid, signal.SIGTERM)
        self.kill_due = now + grace

    def escalate(self, now: float) -> None:
        if self.kill_due is not None and now >= self.kill_due and self.poll() is None:
            assert self.proc is not None
            _killpg(self.proc.pid, signal.SIGKILL)
            self.kill_due = None

    def end_group(self) -> None:
        """Nothing of the attempt outlives it: SIGKILL what is left of its group."""
        if self.proc is not None:
            _killpg(self.proc.pid, signal.SIGKILL)

    @property
    def result_path(self) -> str:
        """The job's journal (``journal.py``): its result is a line appended there."""
        return os.path.join(p.job_dir(self.root, self.key), p.META)

    def write_result(self, scheduler_id: str, metrics: Dict[str, object]) -> Optional[Result]:
        """While the claim is ours: publish the attempt's files, then append its result to
        the job's journal, not yet synced (the pilot syncs the results of the jobs it
        reports together, then moves their claims: :meth:`finish`). A result in the journal
        thus always finds its files published. None, and nothing written, when the claim
        is no longer ours."""
        rc = self.poll()
        result = self._result(-1 if rc is None else rc)
        result.start, result.end, result.host = self.start_iso, p.now_iso(self.ended), HOST
        result.pilot, result.scheduler_id, result.slot = self.pilot, scheduler_id, self.slot
        result.metrics = dict(metrics, runtime_seconds=round(self.elapsed(time.time()), 3))
        attempt = self.attempt
        assert attempt is not None
        result.attempt = attempt.name
        if self._claim_taken("its result, not written: " + result.dumps()):
            return None
        attempt.publish((p.STDOUT, p.STDERR) + tuple(self.spec.outputs))
        journal.append(self.result_path, journal.line(result))
        return result

    def finish(self, result: Result) -> bool:
        """After ``result`` is synced: the claim to done/ (the marker last); False when the
        claim was taken meanwhile (its result is in the journal all the same)."""
        if not p.try_rename(self.claim_path, p.marker(self.root, p.DONE, self.key)):
            self._claim_taken("its result is in %s, not announced" % self.result_path)
            return False
        log.info("(%s) finished: %s (rc %s)", self.key, result.status, result.rc)
        return True

    def _claim_taken(self, detail: str) -> bool:
        """True (and logged) when the job's claim marker is no longer this pilot's."""
        if os.path.exists(self.claim_path):
            return False
        log.error("(%s) its claim was taken from this pilot: %s", self.key, detail)
        return True

    def release(self, reason: ReleaseReason) -> None:
        """Give the job back to the queue: the release line first (so whoever sees the
        marker back in ready/ can count it), then the marker; nothing when the claim is
        no longer ours."""
        if not os.path.exists(self.claim_path):
            log.error("(%s) its claim was taken from this pilot: not released", self.key)
            return
        self._append(RunLine(pilot=self.pilot, released=p.now_iso(), host=HOST,
                             slot=self.slot, gpu=self.gpu, reason=reason.value,
                             elapsed=round(self.elapsed(time.time()), 3),
                             attempt=self.attempt.name if self.attempt else ""))
        p.try_rename(self.claim_path, p.marker(self.root, p.READY, self.key))
        log.info("(%s) released for the next pilot (%s)", self.key, reason.value)

    def _append(self, line: RunLine) -> None:
        journal.append(os.path.join(p.job_dir(self.root, self.key), p.META), journal.line(line))

    def _result(self, rc: int) -> Result:
        if self.kill_reason == Reason.CANCELLED:
            return _error(rc, Reason.CANCELLED, "Cancelled while running")
        if self.kill_reason == Reason.WALLTIME:
            return _error(rc, Reason.WALLTIME,
                          "Killed after exceeding its walltime of %ss" % self.walltime())
        if rc < 0:
            return _error(rc, Reason.KILLED, "Remote command was killed by signal %s"
                          % _signal_name(-rc))
        if rc != 0:
            return _error(rc, Reason.FAILED, "Remote command failed with return code %d" % rc)
        missing, unsafe = self.check_outputs()
        if unsafe:
            return _error(rc, Reason.UNSAFE, "Remote command wrote %s as something other than "
                          "a regular file (a link or a directory): not collected"
                          % ", ".join(unsafe))
        if missing:
            return _error(rc, Reason.MISSING_OUTPUT,
                          "Remote command succeeded but did not produce: %s" % ", ".join(missing))
        return Result(status=ResultStatus.OK, message="processed OK", rc=0)

    def check_outputs(self) -> "tuple[List[str], List[str]]":
        """(missing, not a regular file) among the declared outputs of this attempt (its
        logs count as not regular when the job replaced or removed them)."""
        assert self.attempt is not None
        found = {name: self.attempt.regular_file(name) for name in self.spec.outputs}
        logs = [name for name in (p.STDOUT, p.STDERR) if not self.attempt.regular_file(name)]
        return ([n for n, ok in found.items() if ok is None],
                logs + [n for n, ok in found.items() if ok is False])


def report_unrunnable(root: str, key: str, pilot: str, scheduler_id: str,
                      exc: JobInvalid) -> None:
    """A claimed job whose description cannot be run ends in error, the pilot goes on."""
    result = _error(None, exc.reason, str(exc))
    result.end, result.host = p.now_iso(), HOST
    result.pilot, result.scheduler_id = pilot, scheduler_id
    with contextlib.suppress(OSError):  # the journal, where there is one: its last result
        journal.append(os.path.join(p.job_dir(root, key), p.META), journal.line(result))
    try:  # and result.json, which a submitter reads when the journal holds no result
        p.atomic_write(p.result_path(root, key), result.dumps() + "\n")
    except OSError as write_exc:
        # its directory is gone: done without a result (the submitter reports that),
        # never claimed for ever by a live pilot
        log.error("(%s) cannot be run (%s) and its result cannot be written: %s",
                  key, exc, write_exc)
    p.try_rename(p.marker(root, p.CLAIMED, p.claim_name(key, pilot)),
                 p.marker(root, p.DONE, key))
    log.error("(%s) cannot be run: %s", key, exc)


def _error(rc: Optional[int], reason: Reason, message: str) -> Result:
    return Result(status=ResultStatus.ERROR, message=message, rc=rc, reason=reason)


# -- spawning ------------------------------------------------------------------------------
# The job's shell is started with posix_spawn(3) in a new session (POSIX_SPAWN_SETSID): the
# C library's vfork-like path, on Python 3.8 and 3.9 too, where subprocess forks the whole
# pilot (1.6-1.8 ms of the pilot's CPU per start there, 0.25 ms this way). As subprocess
# does: SIGPIPE and SIGXFSZ back to their defaults (Python ignores them), no blocked
# signal, only stdin/stdout/stderr passed on (every other descriptor of the pilot is
# close-on-exec: Python's own are, inherited ones are made so by ``seal_descriptors``),
# bash found on the job's own PATH. Where the C library cannot start a new session this
# way (glibc before 2.26) it is subprocess with ``start_new_session`` (no preexec_fn).
Process = Union["Child", "subprocess.Popen[bytes]"]
_SPAWN = {"posix_spawn": hasattr(os, "posix_spawn") and hasattr(os, "POSIX_SPAWN_DUP2")}
_HOME: List[int] = []  # the pilot's working directory, held open to come back to
_FOUND: Dict[str, str] = {}  # "PATH\0name" -> the program found there
_DEFAULTED = tuple(getattr(signal, name) for name in ("SIGPIPE", "SIGXFSZ")
                   if hasattr(signal, name))


class Child:
    """A job's shell started by posix_spawn: ``pid``, ``poll()`` and ``wait()`` as
    subprocess.Popen has them (a negative code: killed by that signal)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: Optional[int] = None

    def poll(self) -> Optional[int]:
        if self.returncode is None:
            self._reap(os.WNOHANG)
        return self.returncode

    def wait(self) -> int:
        while self.returncode is None:
            self._reap(0)
        return self.returncode

    def _reap(self, flags: int) -> None:
        try:
            pid, status = os.waitpid(self.pid, flags)
        except ChildProcessError:  # reaped elsewhere: never here, as the pilot waits itself
            self.returncode = 255
            return
        if pid == self.pid:
            self.returncode = (-os.WTERMSIG(status) if os.WIFSIGNALED(status)
                               else os.WEXITSTATUS(status))


def spawn(argv: List[str], cwd: str, env: Dict[str, str],
          fds: "tuple[int, int, int]") -> Process:
    """Start ``argv`` in ``cwd`` in a new session with ``fds`` as its stdin, stdout, stderr."""
    home = _home() if _SPAWN["posix_spawn"] and min(fds) > 2 else -1
    if home >= 0:
        actions = [(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(fds)]
        exe = _find(argv[0], env.get("PATH", os.defpath))
        os.chdir(cwd)  # posix_spawn has no working directory of its own before Python 3.13
        try:
            return Child(os.posix_spawn(exe, argv, env, file_actions=actions, setsid=True,
                                        setsigdef=_DEFAULTED, setsigmask=()))
        except NotImplementedError:
            _SPAWN["posix_spawn"] = False  # no POSIX_SPAWN_SETSID: the fallback from now on
        finally:
            os.fchdir(home)
    return subprocess.Popen(argv, cwd=cwd, env=env, stdin=fds[0], stdout=fds[1],
                            stderr=fds[2], start_new_session=True)


def _home() -> int:
    if not _HOME:
        try:
            _HOME.append(os.open(".", getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY))
        except OSError:  # an unreadable or vanished working directory: subprocess, then
            _HOME.append(-1)
    return _HOME[0]


def _find(name: str, path: str) -> str:
    key = path + "\0" + name
    if key not in _FOUND:
        exe = shutil.which(name, path=path)
        if exe is None:
            raise FileNotFoundError(errno.ENOENT, "not found on the job's PATH", name)
        _FOUND[key] = exe
    return _FOUND[key]


def seal_descriptors() -> None:
    """Make every descriptor above stderr that the pilot inherited close-on-exec, so a job
    started by posix_spawn gets none of them (what subprocess's close_fds does)."""
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        fds = list(range(3, 256))
    for fd in fds:
        if fd > 2:
            with contextlib.suppress(OSError):
                os.set_inheritable(fd, False)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


__all__ = ["Child", "JobInvalid", "JobRun", "report_unrunnable", "seal_descriptors", "spawn"]
