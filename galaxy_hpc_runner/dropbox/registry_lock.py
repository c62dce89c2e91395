"""The pilot registry's lock ``W/pilots/.lock``: over any transport, with a short lease.

- Taking it is one exclusive create (``Transport.create_exclusive``: a complete temp file
  hard-linked to the name, locally or over SFTP; a link never replaces) of a file that
  names the holder (server, host, boot id, pid namespace, pid and the pid's start time)
  with a token and a sequence number.
- Holding it: the holder rewrites it (same token, next number) at least every
  :data:`LOCK_REFRESH` seconds while it works (:meth:`RegistryLock.keep`, called by every
  registry read and write), and once :data:`LOCK_LEASE` - :data:`LOCK_MARGIN` seconds
  passed since its last rewrite began, it writes nothing more under the lock
  (:class:`RegistryLockLost`) and leaves the file for the waiters to break.
- Giving it back removes it, if it is still ours and within the lease.

A waiter breaks it:

- at once when the holder ran on this very machine and is gone: same host name, boot id
  and pid namespace, and no process with that pid and start time any more (so a reused
  pid or a container of the same host name is never taken for it);
- else when its content has not changed for :data:`LOCK_LEASE` seconds by the WAITER's own
  clock. A live holder changes it more often than that and stops before it, so no clock
  of another host is compared: a holder that died on another host stalls the others for
  at most ``LOCK_LEASE`` seconds (plus a poll) after they first see its lock.

Breaking is done under a second exclusive file ``.lock.break`` (stale by the same rules):
the breaker re-reads the lock and only if it still holds the very content judged stale
renames it aside, checks what it moved is that content, and removes it. The rule assumes
no single step of a holder (one file operation) takes longer than ``LOCK_MARGIN`` seconds:
the holder checks its lease before each step, so only a step that itself lasts past the
margin could land after a waiter broke the lock.
"""

from __future__ import annotations

import json
import logging
import os
import random
import secrets
import socket
import time
from dataclasses import dataclass

from galaxy_hpc_runner.errors import RemoteFileMissing, TransportError
from galaxy_hpc_runner.transport.base import Transport

log = logging.getLogger(__name__)

BREAK_SUFFIX = ".break"
LOCK_LEASE = 15.0  # seconds a lock may stay unchanged before a waiter breaks it
LOCK_MARGIN = 5.0  # the holder stops this long before its lease ends
LOCK_REFRESH = 2.0  # the holder rewrites the lock when its content is older than this
LOCK_WAIT = 60.0  # seconds to wait for the lock before the pass gives up
LOCK_READ_LIMIT = 4096


class RegistryLockTimeout(TransportError):
    """Another server held the registry lock for longer than we waited."""


class RegistryLockLost(TransportError):
    """We held the registry lock past our lease: nothing more is written under it."""


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii") as handle:
            return handle.read(4096).strip()
    except (OSError, ValueError):
        return ""


def start_time(pid: int) -> str:
    """A process's start time (clock ticks since boot, /proc/PID/stat field 22); "" when
    there is no such process (or no /proc)."""
    text = _read("/proc/%d/stat" % pid)
    fields = text.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else ""


def identity() -> dict[str, object]:
    """What names this process on this machine, for a waiter on the same machine."""
    try:
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pidns = ""
    pid = os.getpid()
    return {"host": socket.gethostname(), "boot": _read("/proc/sys/kernel/random/boot_id"),
            "pidns": pidns, "pid": pid, "pid_start": start_time(pid)}


@dataclass
class LockHolder:
    owner: str
    epoch: float
    token: str
    raw: str  # the file's content as read (what staleness is judged on)
    host: str = ""
    pid: int = 0
    boot: str = ""
    pidns: str = ""
    pid_start: str = ""

    def dead_here(self) -> bool:
        """True when the holder ran on this very machine (host, boot, pid namespace) and
        its process (pid and start time) is gone."""
        me = identity()
        if not (self.pid and self.boot and self.pidns and self.pid_start) or (
                self.host, self.boot, self.pidns) != (me["host"], me["boot"], me["pidns"]):
            return False
        return start_time(self.pid) != self.pid_start


def parse_lock(raw: str) -> LockHolder:
    """The holder written in a lock file; epoch 0 and no token when it is empty or torn."""
    try:
        data = json.loads(raw)
        return LockHolder(str(data["owner"]), float(data["epoch"]), str(data["token"]), raw,
                          str(data.get("host", "")), int(data.get("pid", 0)),
                          str(data.get("boot", "")), str(data.get("pidns", "")),
                          str(data.get("pid_start", "")))
    except (ValueError, KeyError, TypeError, AttributeError):
        return LockHolder("", 0.0, "", raw)


def lock_text(server: str, token: str, seq: int = 0) -> str:
    me = identity()
    return json.dumps(dict(me, owner="%s (%s pid %d)" % (server, me["host"], os.getpid()),
                           epoch=time.time(), token=token, seq=seq))


@dataclass
class _Held:
    token: str
    seq: int
    since: float  # monotonic time the current content began to be written


class RegistryLock:
    """One server's handle on the lock file ``path``."""

    def __init__(self, transport: Transport, path: str, server: str) -> None:
        self.t = transport
        self.path = path
        self.server = server
        self._held: _Held | None = None
        self._seen: dict[str, tuple[str, float]] = {}  # path -> (content, first seen)

    def acquire(self, wait: float = LOCK_WAIT) -> str:
        """Take the lock; its token. RegistryLockTimeout after ``wait`` seconds."""
        token = secrets.token_hex(8)
        deadline = time.monotonic() + wait
        while True:
            began = time.monotonic()
            if self._try_create(self.path, lock_text(self.server, token)):
                self._held = _Held(token, 0, began)
                return token
            holder = self._break_if_stale()
            if time.monotonic() >= deadline:
                raise RegistryLockTimeout(
                    "the pilot registry lock %s is held by %s (since %s); if that submitter "
                    "is gone it is broken once it stayed unchanged for %.0fs" % (
                        self.path, holder.owner or "an unknown holder" if holder else "?",
                        _clock(holder.epoch) if holder else "?", LOCK_LEASE))
            time.sleep(random.uniform(0.01, 0.08))

    def keep(self) -> None:
        """While held: refresh the lease when due; RegistryLockLost once it is (nearly)
        over. A no-op when not held."""
        held = self._held
        if held is None:
            return
        age = time.monotonic() - held.since
        if age > LOCK_LEASE - LOCK_MARGIN:
            self._held = None
            raise RegistryLockLost(
                "held the pilot registry lock %s for %.1fs without a refresh (its lease is "
                "%gs): nothing more is written under it; the next pass tries again" % (
                    self.path, age, LOCK_LEASE))
        if age > LOCK_REFRESH:
            began = time.monotonic()
            held.seq += 1
            self.t.write_text(self.path, lock_text(self.server, held.token, held.seq))
            held.since = began

    def release(self, token: str) -> None:
        """Remove the lock if it is still ours and within our lease; else leave it (a
        waiter breaks it, or already did)."""
        held, self._held = self._held, None
        if held is None or held.token != token or \
                time.monotonic() - held.since > LOCK_LEASE - LOCK_MARGIN:
            log.error("pilot registry lock %s: held past its %gs lease, left for the other "
                      "servers to break", self.path, LOCK_LEASE)
            return
        holder = self._read_lock(self.path)
        if holder is None or holder.token != token:
            log.error("pilot registry lock %s was taken from us: left alone", self.path)
            return
        self.t.remove(self.path)

    def _try_create(self, path: str, text: str, tries: int = 5) -> bool:
        """One exclusive create; a failure while the lock is absent again (it was released
        just as we tried: some SFTP servers then answer a plain "Failure") is a lost race,
        tried again a few times before it counts as an error."""
        for attempt in range(tries):
            try:
                return self.t.create_exclusive(path, text)
            except RemoteFileMissing:
                raise
            except TransportError:
                if self._read_lock(path) is not None:
                    return False  # somebody holds it now: taken, as an exclusive create says
                if attempt == tries - 1:
                    raise
        return False

    def _read_lock(self, path: str) -> LockHolder | None:
        try:
            return parse_lock(self.t.read_text(path, limit=LOCK_READ_LIMIT))
        except RemoteFileMissing:
            return None

    def stale(self, path: str, holder: LockHolder) -> bool:
        """The holder is gone from this machine, or the content did not change for
        LOCK_LEASE seconds of ours (see the module docstring)."""
        if holder.dead_here():
            return True
        now = time.monotonic()
        content, first = self._seen.get(path, (None, now))
        if content != holder.raw:
            self._seen[path] = (holder.raw, now)
            return False
        return now - first > LOCK_LEASE

    def _break_if_stale(self) -> LockHolder | None:
        """Break the lock if it is stale; the holder seen (None when it was gone)."""
        holder = self._read_lock(self.path)
        if holder is None or not self.stale(self.path, holder):
            return holder
        breaker = self.path + BREAK_SUFFIX
        began = time.monotonic()
        if not self._try_create(breaker, lock_text(self.server, secrets.token_hex(8))):
            other = self._read_lock(breaker)
            if other is not None and self.stale(breaker, other):
                self._remove_if(breaker, other.raw)  # a breaker that died while breaking
            return holder
        try:
            again = self._read_lock(self.path)
            if again is not None and again.raw == holder.raw and self._remove_if(
                    self.path, holder.raw, began):
                log.warning("broke the stale pilot registry lock of %s (since %s)",
                            holder.owner or "an unknown holder", _clock(holder.epoch))
        finally:
            if time.monotonic() - began <= LOCK_LEASE - LOCK_MARGIN:
                self.t.remove(breaker)  # else it is stale by now: left to the others
        self._seen.pop(self.path, None)
        return holder

    def _remove_if(self, path: str, raw: str, began: float | None = None) -> bool:
        """Rename ``path`` aside and remove it if what moved is ``raw``; put back what is
        not (a fresh file taken by mistake). False when nothing was removed."""
        if began is not None and time.monotonic() - began > LOCK_LEASE - LOCK_MARGIN:
            return False  # our own break hold is over: another breaker may be at work
        aside = "%s.stale-%s" % (path, secrets.token_hex(6))
        if not self.t.rename(path, aside):
            return False
        moved = self._read_lock(aside)
        if moved is not None and moved.raw != raw:
            if not self._try_create(path, moved.raw):
                log.error("pilot registry lock %s: a fresh lock was moved aside while a "
                          "stale one was broken and another took its place", path)
            self.t.remove(aside)
            return False
        self.t.remove(aside)
        return True


def _clock(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(epoch)) if epoch else "an unknown time"
