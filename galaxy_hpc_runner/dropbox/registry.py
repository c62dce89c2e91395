"""The HPC-side pilot registry, shared by every submitting server.

Every pilot has one entry ``W/pilots/PILOT.json`` (:class:`hpc_worker.records.PilotEntry`),
written by the server that submits it BEFORE it reaches the scheduler, beside the
pilot's own heartbeat ``W/pilots/PILOT.hb``. Submitters on any number of machines
read the registry before they decide to submit; every change to it is made under
the registry lock ``W/pilots/.lock`` (:mod:`.registry_lock`: an exclusive create that
works over any transport, with a short lease the holder refreshes; a holder that died on
this machine is seen at once, one that died elsewhere after at most ``LOCK_LEASE``
seconds of a waiter's own clock).

The lock is held only to read and change entries (milliseconds to seconds), never
across a scheduler submission: the intent entry (state ``submitting``) is what the
other servers count while ``sbatch`` runs.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import posixpath
import re
import secrets
import time
from collections.abc import Iterator
from typing import Any

from galaxy_hpc_runner.config import Config
from galaxy_hpc_runner.dropbox.registry_lock import (
    BREAK_SUFFIX,
    LOCK_LEASE,
    LOCK_WAIT,
    LockHolder,
    RegistryLock,
    RegistryLockLost,
    RegistryLockTimeout,
    lock_text,
    parse_lock,
)
from galaxy_hpc_runner.errors import RemoteFileMissing, TransportError
from galaxy_hpc_runner.transport.base import Transport
from hpc_worker import protocol as p
from hpc_worker.records import Heartbeat, PilotEntry, ProtocolError
from hpc_worker.states import PilotState

__all__ = ["BREAK_SUFFIX", "LOCK_LEASE", "LOCK_NAME", "LOCK_WAIT", "LockHolder", "Registry",
           "RegistryLockLost", "RegistryLockTimeout", "lock_text", "parse_lock"]
log = logging.getLogger(__name__)

LOCK_NAME = p.REGISTRY_LOCK
GONE_REREAD = 300.0  # a gone entry is re-read this often (its submitter may correct it)
ENTRY_SUFFIX = p.PILOT_SUFFIXES[0]  # W/pilots/PILOT.json
HEARTBEAT_SUFFIX = p.PILOT_SUFFIXES[1]  # W/pilots/PILOT.hb
ENTRY_LIMIT = 64 << 10  # bytes read of one entry (an entry is a few hundred)
GONE_BEATS = 50  # gone pilots whose last heartbeat the site picture reads (GPU time)


_ID_TIME = re.compile(r"(\d{8}T\d{6})")


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
        self._lock = RegistryLock(transport, self.lock_path, server)
        self._dir_ready = False
        self.beats: dict[str, Heartbeat | None] | None = None  # see heartbeat()

    # -- entries ---------------------------------------------------------------------
    def entry_path(self, pilot_id: str) -> str:
        return p.pilot_path(self.root, pilot_id, ENTRY_SUFFIX)

    def ids(self) -> list[str]:
        """Every pilot with a registry entry, of every server."""
        self._lock.keep()
        return [n[: -len(ENTRY_SUFFIX)] for n in self.t.listdir(self.dir)
                if n.endswith(ENTRY_SUFFIX)]

    def read(self, pilot_id: str) -> PilotEntry | None:
        """One entry; None when it is absent or unreadable (logged, naming the file)."""
        path = self.entry_path(pilot_id)
        self._lock.keep()
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
        self._lock.keep()
        self.t.write_text(self.entry_path(entry.pilot_id), entry.dumps() + "\n")
        if entry.state is PilotState.GONE:
            self._gone[entry.pilot_id] = (time.monotonic(), entry)
        else:
            self._gone.pop(entry.pilot_id, None)

    def remove(self, pilot_id: str) -> None:
        """Forget a pilot: its entry, heartbeat, log and scheduler output."""
        self._lock.keep()
        for suffix in p.PILOT_SUFFIXES:
            self.t.remove(p.pilot_path(self.root, pilot_id, suffix))
        self._gone.pop(pilot_id, None)

    def heartbeat(self, pilot_id: str) -> Heartbeat | None:
        """A pilot's last heartbeat; None when it has none (yet) or it cannot be read.
        With ``beats`` set (a dict), each pilot's is read once and kept there."""
        if self.beats is None:
            return read_heartbeat(self.t, self.root, pilot_id)
        if pilot_id not in self.beats:
            self.beats[pilot_id] = read_heartbeat(self.t, self.root, pilot_id)
        return self.beats[pilot_id]

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
        GPU fields, with ``with_gone`` of the newest :data:`GONE_BEATS` gone pilots too),
        each server's queue, every server seen."""
        pilots = []
        ordered = sorted(self.entries().values(), key=lambda e: e.submitted)
        gone_ids = [e.pilot_id for e in ordered if e.state is PilotState.GONE]
        last_words = set(gone_ids[-GONE_BEATS:]) if with_gone else set()
        for entry in ordered:
            item: dict[str, Any] = {
                "pilot_id": entry.pilot_id, "server": entry.submitter,
                "mine": entry.submitter == self.server, "state": str(entry.state),
                "scheduler_id": entry.scheduler_id, "backend": entry.backend,
                "submitted": entry.submitted, "slots": entry.slots}
            gone = entry.state is PilotState.GONE
            beat = self.heartbeat(entry.pilot_id) if (
                not gone or entry.pilot_id in last_words) else None
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
        """Hold the registry lock; RegistryLockTimeout after ``wait`` seconds. Every
        registry read and write inside refreshes its lease when due."""
        token = self.acquire(wait)
        try:
            yield token
        finally:
            self.release(token)

    def acquire(self, wait: float = LOCK_WAIT) -> str:
        self._ensure_dir()
        return self._lock.acquire(wait)

    def release(self, token: str) -> None:
        self._lock.release(token)

    def keep(self) -> None:
        """Refresh the lock's lease when due (RegistryLockLost when it is over); callers
        doing other work under the lock call it before each step."""
        self._lock.keep()


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
