"""Process helpers shared by the test services: free ports, polling, daemons.

Every daemon runs in the foreground as a child of the test process (PID 1 on
the test machines does not reap orphans), with stdout+stderr going to a log
file, and is stopped with terminate + wait (kill after a timeout).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, TypeVar

log = logging.getLogger(__name__)

STOP_TIMEOUT = 30.0

_S = TypeVar("_S", bound="Service")


def free_port(host: str = "") -> int:
    """Return a TCP port that is free right now (on all interfaces by default)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def sbin(name: str) -> str:
    """Absolute path of a daemon binary (/usr/sbin may be missing from PATH)."""
    return shutil.which(name) or f"/usr/sbin/{name}"


def wait_for(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    interval: float = 0.05,
) -> None:
    """Poll ``predicate`` until it is true; raise TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


def run(
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    check: bool = True,
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    """Run a client command and capture its output (text)."""
    full_env = {**os.environ, **env} if env else None
    proc = subprocess.run(
        list(argv), env=full_env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
        )
    return proc


def tail(path: Path, lines: int = 30) -> str:
    """Return the last ``lines`` lines of a log file (or a note that it is missing)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"<no log at {path}>"


def _read_ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name is in parentheses and may contain spaces
    return int(stat.rsplit(")", 1)[1].split()[1])


def descendants(pid: int) -> list[int]:
    """All live descendants of ``pid`` (scanned from /proc), children first."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            ppid = _read_ppid(int(entry.name))
            if ppid is not None:
                parents.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        found.extend(kids)
        todo.extend(kids)
    return found


def is_alive(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def kill_strays(pids: Sequence[int], timeout: float = 5.0) -> None:
    """SIGTERM processes that are not our children, SIGKILL those that stay."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        live = [pid for pid in pids if is_alive(pid)]
        for pid in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

        def all_gone(live: list[int] = live) -> bool:
            return not any(is_alive(p) for p in live)

        try:
            wait_for(all_gone, timeout, "stray processes to exit")
            return
        except TimeoutError:
            log.warning("processes %s ignored %s", live, sig.name)


class Daemon:
    """One foreground daemon run as a child process, logging to a file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env else None
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        if self.running:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        log.debug("starting %s: %s", self.name, " ".join(self.argv))
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env} if self.env else None,
            cwd=self.cwd,
        )

    def check_alive(self) -> None:
        """Raise RuntimeError (with the log tail) if the daemon has exited."""
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise RuntimeError(
                f"{self.name} is not running (exit {code}); log {self.log_path}:\n"
                f"{tail(self.log_path)}"
            )

    def stop(self, timeout: float = STOP_TIMEOUT, kill_children: bool = False) -> None:
        """Terminate and wait; SIGKILL after ``timeout``; optionally end descendants."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            strays = descendants(proc.pid) if kill_children else []
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s ignored SIGTERM for %.0fs; killing", self.name, timeout)
                proc.kill()
                proc.wait()
            if strays:
                kill_strays(strays)
            log.debug("%s stopped (exit %s)", self.name, proc.returncode)
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None


class Service:
    """Base for services made of daemons; stops them in reverse start order."""

    def __init__(self) -> None:
        self._daemons: list[Daemon] = []

    def start(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _launch(self, daemon: Daemon) -> Daemon:
        daemon.start()
        if daemon not in self._daemons:
            self._daemons.append(daemon)
        return daemon

    def stop(self) -> None:
        errors: list[BaseException] = []
        for daemon in reversed(self._daemons):
            try:
                daemon.stop()
            except Exception as exc:  # keep stopping the others
                log.exception("stopping %s failed", daemon.name)
                errors.append(exc)
        self._daemons.clear()
        if errors:
            raise errors[0]

    def __enter__(self: _S) -> _S:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
