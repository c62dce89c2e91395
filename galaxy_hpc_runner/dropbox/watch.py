"""Wake the submitter on change, not on a timer.

Between passes the loop looks, every :data:`POLL` seconds, at what can bring new work:
the dropbox directory (a new ``NAME.job``, a ``NAME.cancel``) and the HPC side's
``W/queue/done`` (a job ended). Locally that is one ``stat`` of each directory (its
inode and modification time); over another transport it is one listing of
``W/queue/done`` every :data:`REMOTE_POLL` seconds. A change starts the next pass at
once; without one, a full pass still runs every ``interval`` seconds (the safety net
for file systems whose directory times do not show every change).

A directory whose time is within :data:`FRESH` seconds of the look may still change in
the same timestamp tick without its time moving, so such a look counts as a change
(one more pass, never a missed one).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING

from galaxy_hpc_runner.errors import HpcBatchError, TransportError
from galaxy_hpc_runner.transport.base import LocalTransport, Transport
from hpc_worker import protocol as p

if TYPE_CHECKING:
    from galaxy_hpc_runner.dropbox.submitter import PassReport, Submitter

log = logging.getLogger(__name__)

POLL = 0.05  # seconds between looks at the local directories (two stats)
REMOTE_POLL = 0.5  # seconds between listings of W/queue/done over a remote transport
FRESH = 0.05  # seconds: a directory time this recent may hide a change in the same tick
CLEAN_SLICE = 64  # finished jobs whose HPC files one quiet pass of the loop removes
STATUS_EVERY = 1.0  # seconds: the pass status files while passes follow each other closely
UNSURE = object()  # a signature that never equals another one: look again


class ChangeWatch:
    """Signatures of the directories a pass reacts to; :meth:`changed_since` compares."""

    def __init__(self, local: list[str], transport: Transport, remote: list[str]) -> None:
        self.local = list(local)
        self.transport = transport
        self.remote_is_local = isinstance(transport, LocalTransport)
        self.remote = list(remote)
        self.poll = POLL if self.remote_is_local else REMOTE_POLL
        self._remote_due = 0.0
        self._remote_sig: Hashable = None

    def signature(self) -> tuple[Hashable, ...]:
        sig: list[Hashable] = [_stat_signature(path) for path in self.local]
        if self.remote_is_local:
            sig += [_stat_signature(path) for path in self.remote]
        else:
            sig.append(self._remote_signature())
        return tuple(sig)

    def _remote_signature(self) -> Hashable:
        """A listing of the remote directories, at most every REMOTE_POLL seconds."""
        now = time.monotonic()
        if now >= self._remote_due:
            self._remote_due = now + REMOTE_POLL
            try:
                self._remote_sig = tuple(tuple(self.transport.listdir(path))
                                         for path in self.remote)
            except (TransportError, OSError) as exc:  # the next full pass reports it
                log.debug("cannot look at %s: %s", self.remote, exc)
        return self._remote_sig

    def wait(self, before: tuple[Hashable, ...], event: threading.Event,
             timeout: float, idle: Callable[[], None] | None = None) -> bool:
        """Until a signature differs from ``before``, ``event`` is set or ``timeout``
        passes; True on a change. ``idle`` runs once, at the first look that finds
        nothing changed."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or event.wait(min(self.poll, left)):
                return False
            if self.changed_since(before):
                return True
            if idle is not None:
                idle()
                idle = None

    def changed_since(self, before: tuple[Hashable, ...]) -> bool:
        now = self.signature()
        return any(a is UNSURE or a != b for a, b in zip(before, now, strict=True))


def _stat_signature(path: str) -> Hashable:
    try:
        info = os.stat(path)
    except OSError:
        return None
    if time.time() - info.st_mtime_ns / 1e9 < FRESH:  # an entry change sets it
        return UNSURE
    return (info.st_ino, info.st_mtime_ns, info.st_ctime_ns)


class QuietDirectory:
    """Whether a directory is as it was at a look that left nothing to do in it.

    Entries coming, going or renamed in move the directory's time; a file changed in
    place does not (a description touched to resubmit it), so a full look is due at
    least every ``rescan_every`` seconds anyway."""

    def __init__(self, path: str, rescan_every: float = 30.0) -> None:
        self.path = path
        self.rescan_every = rescan_every
        self._quiet: Hashable = None
        self._since = 0.0

    def key(self) -> Hashable:
        """Take it before the look: what changes during the look counts as a change."""
        return _stat_signature(self.path)

    def unchanged(self, key: Hashable) -> bool:
        return (key is not None and key is not UNSURE and key == self._quiet
                and time.monotonic() - self._since < self.rescan_every)

    def looked(self, key: Hashable, complete: bool) -> None:
        """A full look taken at ``key``; ``complete``: it left nothing for the next look."""
        if key != self._quiet or not complete:
            self._since = time.monotonic()
        self._quiet = key if complete else None


def for_submitter(sub: Submitter) -> ChangeWatch:
    return ChangeWatch([str(sub.cfg.dropbox)], sub.transport, [sub.stager.path(p.DONE)])


def run_loop(sub: Submitter, stop: threading.Event, interval: float,
             wake: threading.Event | None = None,
             before_pass: Callable[[], None] | None = None) -> None:
    """Passes until ``stop`` is set: at once after a change or when the last pass left
    work for the next (a backlog is taken in chunks), else every ``interval`` seconds.
    ``wake`` cuts the pause short too; ``before_pass`` runs first in every round. The
    loop outlives any one bad pass."""
    watch = for_submitter(sub)
    event = wake or stop
    sub.status.every = STATUS_EVERY  # passes in a burst: the status files once a second
    sub.clean_slice = CLEAN_SLICE  # after a burst, its files go a slice a pass
    _prepare(sub)
    try:
        while not stop.is_set():
            if wake is not None:
                wake.clear()
            before = watch.signature()  # taken before the pass: what changes in it counts
            report = _one_round(sub, before_pass)
            if report is not None and report.more:
                continue
            watch.wait(before, event, interval, idle=sub.status.flush)
    finally:
        sub.status.flush()


def _prepare(sub: Submitter) -> None:
    """Deploy and check the pilot program when the loop starts, not when the first job
    wants a pilot (0.1-0.2 s locally, more over ssh). A failure is logged here; the first
    pilot submission tries again and reports it in its pass."""
    try:
        log.info("pilot preflight: %s", sub.pilots.preflight())
    except HpcBatchError as exc:
        log.error("pilot preflight failed (tried again before the first pilot): %s", exc)
    except Exception:  # the loop outlives it, as it outlives any one bad pass
        log.exception("pilot preflight failed (tried again before the first pilot)")


def _one_round(sub: Submitter, before_pass: Callable[[], None] | None) -> PassReport | None:
    try:
        if before_pass is not None:
            before_pass()
        return sub.run_pass()
    except HpcBatchError as exc:
        log.error("submitter pass failed: %s", exc)
    except Exception:
        log.exception("unexpected error in a submitter pass")
    return None
