"""A job's processes die with its pilot, even when the pilot is killed with SIGKILL.

Each job runs in its own session and process group (``start_new_session``: done by
the standard library in the child, no ``preexec_fn``, so the cheap spawn path stays
open). One watcher process per pilot, forked once at start, holds the read end of a
pipe; the pilot tells it every job's process group as it starts and ends. When the
pilot dies, whatever the signal, the kernel closes the write end; the watcher reads
end-of-file and sends SIGKILL to every group still listed: the tool, not only its
shell. The watcher ignores the stop signals a scheduler sends to all processes, so it
outlives the pilot long enough to do this; it runs in its own session.

Standard library only, Python 3.8.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
from typing import Set

log = logging.getLogger(__name__)

DRAIN_EVERY = 500  # ms: the watcher reads the pipe this often, so it never fills
IGNORED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2,
           signal.SIGCHLD)


class GroupGuard:
    def __init__(self) -> None:
        self.pid = 0
        self.fd = -1

    def start(self) -> None:
        read_fd, write_fd = os.pipe()  # both close on exec: no job inherits them
        pid = os.fork()
        if pid == 0:  # the watcher
            code = 0
            try:
                os.close(write_fd)
                _watch(read_fd)
            except BaseException:
                code = 1
            os._exit(code)
        os.close(read_fd)
        self.pid, self.fd = pid, write_fd

    def add(self, pgid: int) -> None:
        self._say(b"+%d\n" % pgid)

    def remove(self, pgid: int) -> None:
        self._say(b"-%d\n" % pgid)

    def _say(self, line: bytes) -> None:
        if self.fd < 0:
            return
        try:
            os.write(self.fd, line)
        except OSError as exc:
            log.warning("job watcher unreachable (%s): jobs may outlive a killed pilot", exc)

    def stop(self) -> None:
        """Close the pipe (the watcher kills any group still listed, then leaves)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.pid:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
            self.pid = 0


def _watch(read_fd: int) -> None:
    """Wait for the pilot's end of the pipe to close (the kernel's hang-up, not each line:
    a line written wakes nobody, so a job's start costs the pilot one cheap write), read
    what the pipe holds every DRAIN_EVERY ms meanwhile, and at the hang-up read the rest
    (a closed pipe keeps its data) and kill every group still listed."""
    signal.set_wakeup_fd(-1)
    for sig in IGNORED:
        signal.signal(sig, signal.SIG_IGN)
    os.setsid()
    _close_others(read_fd)
    os.set_blocking(read_fd, False)
    poller = select.poll()
    poller.register(read_fd, 0)  # no events asked for: only a hang-up or an error wakes it
    groups: Set[int] = set()
    pending, ended = b"", False
    while not ended:
        with contextlib.suppress(InterruptedError):
            poller.poll(DRAIN_EVERY)
        pending, ended = _drain(read_fd, groups, pending)
    for pgid in groups:
        with contextlib.suppress(OSError):
            os.killpg(pgid, signal.SIGKILL)


def _drain(read_fd: int, groups: Set[int], pending: bytes) -> "tuple[bytes, bool]":
    """Apply every whole line the pipe holds; (the unfinished rest, end of file seen)."""
    while True:
        try:
            chunk = os.read(read_fd, 65536)
        except (BlockingIOError, InterruptedError):
            return pending, False
        if not chunk:
            return pending, True
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            _apply(groups, line)


def _apply(groups: Set[int], line: bytes) -> None:
    try:
        pgid = int(line[1:])
    except ValueError:
        return
    if line.startswith(b"+"):
        groups.add(pgid)
    else:
        groups.discard(pgid)


def _close_others(keep: int) -> None:
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        fds = list(range(3, 1024))
    for fd in fds:
        if fd > 2 and fd != keep:
            with contextlib.suppress(OSError):
                os.close(fd)
