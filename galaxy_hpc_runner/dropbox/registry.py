"""The HPC-side pilot registry, shared by every submitting server.

Every pilot has one entry ``W/pilots/PILOT.json`` (:class:`hpc_worker.records.PilotEntry`),
written by the server that submits it BEFORE it reaches the scheduler, beside the
pilot's own heartbeat ``W/pilots/PILOT.hb``. Submitters on any number of machines
read the registry before they decide to submit; every change to it is made under
the registry lock ``W/pilots/.lock``, which works over any transport:

- taking it is one exclusive create (``Transport.create_exclusive``: a complete temp
  file hard-linked to the name, locally or over SFTP; a link never replaces) of a file
  holding the owner, host, process, time and a token;
- giving it back removes it after checking the token is still ours;
- a lock whose holder ran on this host and is no longer alive (a killed submitter,
  restarted), one older than :data:`LOCK_STALE` seconds (by the time written in it, so
  the clocks of the submitting hosts must agree within that bound; NTP does), or one
  whose content stays empty or unreadable for :data:`LOCK_EMPTY_STALE`
  seconds (its holder died between create and write), is stale. It is broken under a
  second exclusive file ``.lock.break``: the breaker re-reads the lock, and only if it
  still holds the very token judged stale renames it aside to a unique name and removes
  it; so two breakers never remove a fresh lock.

The lock is held only to read and change entries (milliseconds to seconds), never
across a scheduler submission: the intent entry (state ``submitting``) is what the
other servers count while ``sbatch`` runs.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import posixpath
import random
import re
import secrets
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from galaxy_hpc_runner.config import Config
from galaxy_hpc_runner.errors import RemoteFileMissing, TransportError
from galaxy_hpc_runner.transport.base import Transport
from hpc_worker import protocol as p
from hpc_worker.records import Heartbeat, PilotEntry, ProtocolError
from hpc_worker.states import PilotState

log = logging.getLogger(__name__)

LOCK_NAME = p.REGISTRY_LOCK
BREAK_SUFFIX = ".break"
LOCK_STALE = 60.0  # seconds a lock may be held before another server breaks it
LOCK_EMPTY_STALE = 20.0  # seconds an empty or unreadable lock may stay so
LOCK_WAIT = 60.0  # seconds to wait for the lock before the pass gives up
GONE_REREAD = 300.0  # a gone entry is re-read this often (its submitter may correct it)
ENTRY_SUFFIX = p.PILOT_SUFFIXES[0]  # W/pilots/PILOT.json
HEARTBEAT_SUFFIX = p.PILOT_SUFFIXES[1]  # W/pilots/PILOT.hb
ENTRY_LIMIT = 64 << 10  # bytes read of one entry (an entry is a few hundred)


_ID_TIME = re.compile(r"(\d{8}T\d{6})")


class RegistryLockTimeout(TransportError):
    """Another server held the registry lock for longer than we waited."""


@dataclass
class LockHolder:
    owner: str
    epoch: float
    token: str
    raw: str  # the file's content as read (compared when it cannot be parsed)
    host: str = ""
    pid: int = 0

    def dead_here(self) -> bool:
        """True when the holder ran on this very host and its process is gone."""
        if not self.pid or self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False
        return False


def parse_lock(raw: str) -> LockHolder:
    """The holder written in a lock file; epoch 0 and no token when it is empty or torn."""
    try:
        data = json.loads(raw)
        return LockHolder(str(data["owner"]), float(data["epoch"]), str(data["token"]), raw,
                          str(data.get("host", "")), int(data.get("pid", 0)))
    except (ValueError, KeyError, TypeError):
        return LockHolder("", 0.0, "", raw)


def lock_text(server: str, token: str) -> str:
    return json.dumps({"owner": owner_name(server), "host": socket.gethostname(),
                       "pid": os.getpid(), "epoch": time.time(), "token": token})


class Registry:
    """The entries of W/pilots, read and written through the transport."""

    def __init__(self, transport: Transport, workspace: str, server: str) -> None:
        self.t = transport
        self.root = workspace
        self.server = server
        self.dir = posixpath.join(workspace, p.PILOTS)
        self.lock_path = posixpath.join(self.dir, LOCK_NAME)
        # gone entries (almost) never change: read again only every GONE_REREAD seconds
        self._gone: dict[str, tuple[float, PilotEntry]] = {}
        self._empty_seen: dict[str, float] = {}  # unreadable lock content -> first seen
        self._dir_ready = False

    # -- entries ---------------------------------------------------------------------
    def entry_path(self, pilot_id: str) -> str:
        return p.pilot_path(self.root, pilot_id, ENTRY_SUFFIX)

    def ids(self) -> list[str]:
        """Every pilot with a registry entry, of every server."""
        return [n[: -len(ENTRY_SUFFIX)] for n in self.t.listdir(self.dir)
                if n.endswith(ENTRY_SUFFIX)]

    def read(self, pilot_id: str) -> PilotEntry | None:
        """One entry; None when it is absent or unreadable (logged, naming the file)."""
        path = self.entry_path(pilot_id)
        try:
            entry = PilotEntry.loads(self.t.read_bytes(path, limit=ENTRY_LIMIT), path)
        except RemoteFileMissing:
            return None
        except ProtocolError as exc:
            log.error("pilot registry entry skipped: %s", exc)
            return None
        if entry.state is PilotState.GONE:
            self._gone[pilot_id] = (time.monotonic(), entry)
        return entry

    def entries(self) -> dict[str, PilotEntry]:
        """Every readable entry by pilot id (gone ones are read once per process)."""
        out = {}
        for pilot_id in self.ids():
            cached = self._gone.get(pilot_id)
            fresh = cached is not None and time.monotonic() - cached[0] < GONE_REREAD
            entry = cached[1] if cached is not None and fresh else self.read(pilot_id)
            if entry is not None:
                out[pilot_id] = entry
        return out

    def write(self, entry: PilotEntry) -> None:
        """Replace an entry atomically (callers hold the lock)."""
        self._ensure_dir()
        self.t.write_text(self.entry_path(entry.pilot_id), entry.dumps() + "\n")
        if entry.state is PilotState.GONE:
            self._gone[entry.pilot_id] = (time.monotonic(), entry)
        else:
            self._gone.pop(entry.pilot_id, None)

    def remove(self, pilot_id: str) -> None:
        """Forget a pilot: its entry, heartbeat, log and scheduler output."""
        for suffix in p.PILOT_SUFFIXES:
            self.t.remove(p.pilot_path(self.root, pilot_id, suffix))
        self._gone.pop(pilot_id, None)

    def heartbeat(self, pilot_id: str) -> Heartbeat | None:
        """A pilot's last heartbeat; None when it has none (yet) or it cannot be read."""
        return read_heartbeat(self.t, self.root, pilot_id)

    def queue_by_server(self) -> dict[str, dict[str, int]]:
        """Jobs waiting (ready) and running (claimed) on the HPC side, by submitting server
        (the server part of their workspace key; "" for keys without one)."""
        out: dict[str, dict[str, int]] = {}
        queues = (p.READY, p.CLAIMED)  # counted under their names: ready, claimed
        for queue in queues:
            for name in self.t.listdir(posixpath.join(self.root, queue)):
                counts = out.setdefault(p.server_of(p.split_claim(name)[0]),
                                        {posixpath.basename(q): 0 for q in queues})
                counts[posixpath.basename(queue)] += 1
        return out

    def picture(self, with_gone: bool = False) -> dict[str, Any]:
        """The site-wide picture: every pilot (``mine`` when this server submitted it,
        its heartbeat while not gone, ``gpu_time`` when it held GPUs: the heartbeat's
        GPU fields, of gone pilots too with ``with_gone``), each server's queue, every
        server seen."""
        pilots = []
        for entry in sorted(self.entries().values(), key=lambda e: e.submitted):
            item: dict[str, Any] = {
                "pilot_id": entry.pilot_id, "server": entry.submitter,
                "mine": entry.submitter == self.server, "state": str(entry.state),
                "scheduler_id": entry.scheduler_id, "backend": entry.backend,
                "submitted": entry.submitted, "slots": entry.slots}
            gone = entry.state is PilotState.GONE
            beat = self.heartbeat(entry.pilot_id) if with_gone or not gone else None
            if beat is not None and not gone:
                item["heartbeat"] = {"state": str(beat.state), "host": beat.host,
                                     "age_s": round(time.time() - beat.epoch, 1),
                                     "jobs": beat.running, "done": beat.done,
                                     "deadline": beat.deadline}
            if beat is not None and beat.gpus:
                item["gpu_time"] = {"gpus": beat.gpus, "slots_per_gpu": beat.slots_per_gpu,
                                    "gpu_busy_seconds": beat.gpu_busy_seconds,
                                    "gpu_idle_seconds": beat.gpu_idle_seconds}
            pilots.append(item)
        queue = self.queue_by_server()
        servers = sorted(({i["server"] for i in pilots} | set(queue) | {self.server}) - {""})
        return {"server": self.server, "servers": servers, "pilots": pilots, "queue": queue}

    def prune(self, cutoff: float) -> int:
        """Remove gone pilots submitted before ``cutoff`` (epoch), every file of theirs, and
        pilot files without an entry whose id dates from before it; the entries removed."""
        entries = self.entries()
        removed = 0
        for pid, entry in entries.items():
            if entry.state is PilotState.GONE and iso_epoch(entry.submitted) < cutoff:
                self.remove(pid)
                removed += 1
        for name in self.t.listdir(self.dir):  # files of pilots with no entry (older releases)
            pid, dot, suffix = name.rpartition(".")
            named = id_epoch(pid)
            if (dot + suffix in p.PILOT_SUFFIXES and pid not in entries and named is not None
                    and named < cutoff):
                self.t.remove(p.pilot_path(self.root, pid, dot + suffix))
        return removed

    def _ensure_dir(self) -> None:
        if not self._dir_ready:
            self.t.makedirs(self.dir)
            self._dir_ready = True

    # -- the lock --------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, wait: float = LOCK_WAIT) -> Iterator[str]:
        """Hold the registry lock; RegistryLockTimeout after ``wait`` seconds."""
        token = self.acquire(wait)
        try:
            yield token
        finally:
            self.release(token)

    def acquire(self, wait: float = LOCK_WAIT) -> str:
        self._ensure_dir()
        token = secrets.token_hex(8)
        text = lock_text(self.server, token)
        deadline = time.monotonic() + wait
        while not self._try_create(text):
            holder = self._break_if_stale()
            if time.monotonic() >= deadline:
                raise RegistryLockTimeout(
                    "the pilot registry lock %s is held by %s (since %s); if that submitter "
                    "is gone it is broken after %.0fs" % (
                        self.lock_path, holder.owner or "an unknown holder" if holder else "?",
                        _clock(holder.epoch) if holder else "?", LOCK_STALE))
            time.sleep(random.uniform(0.01, 0.08))
        return token

    def _try_create(self, text: str, tries: int = 5) -> bool:
        """One exclusive create; a failure while the lock is absent again (it was released
        just as we tried: some SFTP servers then answer a plain "Failure") is a lost race,
        tried again a few times before it counts as an error."""
        for attempt in range(tries):
            try:
                return self.t.create_exclusive(self.lock_path, text)
            except RemoteFileMissing:
                raise
            except TransportError:
                if self._read_lock(self.lock_path) is not None:
                    return False  # somebody holds it now: taken, as an exclusive create says
                if attempt == tries - 1:
                    raise
        return False

    def release(self, token: str) -> None:
        """Remove the lock if it is still ours (a broken lock is somebody else's now)."""
        holder = self._read_lock(self.lock_path)
        if holder is None or holder.token != token:
            log.error("pilot registry lock %s was taken from us (held past %.0fs?): left "
                      "alone", self.lock_path, LOCK_STALE)
            return
        self.t.remove(self.lock_path)

    def _read_lock(self, path: str) -> LockHolder | None:
        try:
            return parse_lock(self.t.read_text(path, limit=4096))
        except RemoteFileMissing:
            return None

    def _stale(self, holder: LockHolder) -> bool:
        if holder.token:
            return holder.dead_here() or time.time() - holder.epoch > LOCK_STALE
        first = self._empty_seen.setdefault(holder.raw, time.monotonic())
        return time.monotonic() - first > LOCK_EMPTY_STALE

    def _break_if_stale(self) -> LockHolder | None:
        """Break the lock if it is stale; the holder seen (None when it was gone)."""
        holder = self._read_lock(self.lock_path)
        if holder is None or not self._stale(holder):
            return holder
        breaker = self.lock_path + BREAK_SUFFIX
        mine = lock_text(self.server, secrets.token_hex(8))
        if not self.t.create_exclusive(breaker, mine):
            other = self._read_lock(breaker)
            if other is not None and time.time() - other.epoch > 2 * LOCK_STALE:
                self.t.remove(breaker)  # a breaker that died while breaking
            return holder
        try:
            again = self._read_lock(self.lock_path)
            if again is not None and again.raw == holder.raw:
                aside = "%s.stale-%s" % (self.lock_path, secrets.token_hex(6))
                if self.t.rename(self.lock_path, aside):
                    self.t.remove(aside)
                    log.warning("broke the stale pilot registry lock of %s (since %s)",
                                holder.owner or "an unknown holder", _clock(holder.epoch))
        finally:
            self.t.remove(breaker)
        self._empty_seen.pop(holder.raw, None)
        return holder


def pilot_file(cfg: Config, pilot_id: str, suffix: str) -> str:
    """W/pilots/PILOT.SUFFIX, ``suffix`` one of ``hpc_worker.protocol.PILOT_SUFFIXES``."""
    return p.pilot_path(cfg.workspace, pilot_id, suffix)


def read_heartbeat(transport: Transport, root: str, pilot_id: str) -> Heartbeat | None:
    """The one heartbeat reader: W/pilots/PILOT.hb as a checked record, read with a bound;
    None when the pilot has none (yet) or it cannot be read."""
    path = p.pilot_path(root, pilot_id, HEARTBEAT_SUFFIX)
    try:
        return Heartbeat.loads(transport.read_bytes(path, limit=ENTRY_LIMIT), path)
    except (TransportError, ProtocolError):
        return None


def new_pilot_id(server: str) -> str:
    """``pilot-SERVER-YYYYmmddTHHMMSS-RANDOM``: also the scheduler job name."""
    return "pilot-%s-%s-%s" % (server, time.strftime("%Y%m%dT%H%M%S"), secrets.token_hex(3))


def submit_settle(cfg: Config) -> float:
    """Seconds after its intent by which a pilot's submission has surely ended."""
    return 2.0 * float(cfg.scheduler.get("command_timeout") or 60) + 10.0


def iso_epoch(stamp: str) -> float:
    """An ISO 8601 time as epoch seconds (0 when it is not one: older than everything)."""
    try:
        return datetime.datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return 0.0


def id_epoch(pilot_id: str) -> float | None:
    """When a pilot was named (its id carries the time), None when it does not say."""
    match = _ID_TIME.search(pilot_id)
    if not match:
        return None
    return time.mktime(time.strptime(match.group(1), "%Y%m%dT%H%M%S"))


def owner_name(server: str) -> str:
    """Who holds a lock: server tag, host and process, for the admin who reads it."""
    return "%s (%s pid %d)" % (server, socket.gethostname(), os.getpid())


def _clock(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(epoch)) if epoch else "an unknown time"
