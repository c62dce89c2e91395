"""The pilot deploys itself: a versioned zipapp of ``hpc_worker``, put into the workspace.

The submitter builds one self-contained file from the ``hpc_worker`` package it
imports itself (standard library only, Python 3.8+), a zipapp:
``hpc_worker-vN-HASH.pyz`` where N is :data:`hpc_worker.records.PROTOCOL_VERSION` and
HASH the first 12 hex digits of the SHA-256 of its sources. It uploads it once,
atomically, to ``W/bin/`` over the transport, and every pilot runs that very file
(``python W/bin/hpc_worker-v2-....pyz --workspace W ...``): the HPC side needs no
checkout and no install, and a pilot always speaks the protocol of the submitter that
queued it (another release has another file name; old files stay for pilots still
queued with them, until :func:`prune_programs` finds none uses them).

The bytes are deterministic (sorted entries, fixed timestamps and modes, no
compression), so two servers of one release upload the same file under the same
name, and a race between them is harmless (each upload is a rename).

Pruning. Old programs would pile up in ``W/bin``, one per release. :func:`prune_programs`
removes one only when all of these hold: it is not this release's program; this server
first saw it more than :data:`PROGRAM_KEEP` seconds ago (its own clock, kept in the
spool: no clock of another host is trusted); and, under the registry lock, no pilot
of any server that is not gone (being submitted, queued, running, unknown) may use it.
A registry entry names its program (``PilotEntry.program``, written with the intent);
while any live entry does not (written by an older submitter), nothing is removed, so
pruning then happens only while no pilot of any server is alive. A submitter checks
its program is there again right after writing a pilot's intent
(:meth:`PilotManager.submit`): a prune either ran before the intent (the program is
put back) or sees the intent (keeps it).
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import os
import posixpath
import re
import tempfile
import time
import zipfile
from collections.abc import Iterable
from pathlib import Path

import hpc_worker
from galaxy_hpc_runner.config import Config
from galaxy_hpc_runner.dropbox.registry import Registry
from galaxy_hpc_runner.errors import SchedulerError
from galaxy_hpc_runner.transport.base import Transport
from hpc_worker import protocol as p
from hpc_worker.records import PROTOCOL_VERSION, PilotEntry
from hpc_worker.states import PilotState

log = logging.getLogger(__name__)

BIN = p.BIN
SOURCE = Path(hpc_worker.__file__).resolve().parent
PACKAGE = SOURCE.name
FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # the zip format's epoch: no build time in the bytes
MAIN = ("# hpc_worker pilot, deployed by galaxy-hpc-batch\n"
        "import sys\n\nfrom hpc_worker.__main__ import main\n\nsys.exit(main())\n")
PREFLIGHT_TIMEOUT = 60.0
PROGRAM_NAME = re.compile(r"^hpc_worker-v\d+-[0-9a-f]{12}\.pyz$")
PROGRAM_KEEP = 86400.0  # seconds since first seen before an unused program may go
SEEN_FILE = "programs-seen.json"  # SPOOL/...: program name -> when this server first saw it


def _sources() -> list[tuple[str, bytes]]:
    """(archive name, bytes) of every module of the package, sorted."""
    files = sorted(path for path in SOURCE.glob("*.py") if path.is_file())
    if not files:
        raise SchedulerError("no hpc_worker sources in %s: reinstall galaxy-hpc-batch" % SOURCE)
    return [("%s/%s" % (PACKAGE, path.name), path.read_bytes()) for path in files]


@functools.lru_cache(maxsize=1)
def build() -> tuple[str, bytes]:
    """The zipapp's file name and bytes (built once per process)."""
    members = [("__main__.py", MAIN.encode("utf-8"))] + _sources()
    digest = hashlib.sha256()
    for name, data in members:
        digest.update(name.encode("utf-8") + b"\0" + data + b"\0")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=FIXED_TIME)
            info.external_attr = 0o644 << 16
            info.create_system = 3  # unix, whatever builds it
            archive.writestr(info, data)
    filename = "hpc_worker-v%d-%s.pyz" % (PROTOCOL_VERSION, digest.hexdigest()[:12])
    return filename, buffer.getvalue()


def program_name() -> str:
    return build()[0]


def remote_program(cfg: Config) -> str:
    """Where the pilot program lives on the HPC side: W/bin/hpc_worker-vN-HASH.pyz."""
    return posixpath.join(cfg.workspace, BIN, program_name())


def ensure_deployed(cfg: Config, transport: Transport) -> str:
    """Upload the pilot program unless it is already there; its HPC-side path.

    The upload is the transport's atomic put (temp name, size check, rename): a
    visible program is a complete one. TransportError when it cannot be put there.
    """
    path = remote_program(cfg)
    if transport.exists(path):
        return path
    transport.makedirs(posixpath.dirname(path))
    data = build()[1]
    fd, local = tempfile.mkstemp(prefix="hpc-worker-", suffix=".pyz")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        transport.put(local, path)
    finally:
        os.unlink(local)
    log.info("deployed the pilot program %s (%d bytes)", path, len(data))
    return path


def verify(cfg: Config, transport: Transport) -> str:
    """Deploy, then run ``python PROGRAM --version`` on the HPC side; what it answered.

    A wrong ``[pilot] python`` (missing, or older than 3.8) or an unwritable workspace
    shows here, before any queue wait; so would a program that does not speak this
    side's protocol version. SchedulerError naming the setting.
    """
    path = ensure_deployed(cfg, transport)
    python = cfg.pilot.python
    try:
        done = transport.run([python, path, "--version"], timeout=PREFLIGHT_TIMEOUT)
    except SchedulerError as exc:
        raise SchedulerError(
            "pilot preflight: %s %s --version failed on the HPC side (set [pilot] python to "
            "a Python 3.8 or newer there): %s" % (python, path, exc)) from exc
    answer = (done.stdout.strip() or done.stderr.strip() or "(no output)").splitlines()[0]
    if not answer.endswith("protocol version %d" % PROTOCOL_VERSION):
        raise SchedulerError("pilot preflight: %s answered %r, not protocol version %d: remove "
                             "it so that it is deployed again" % (path, answer, PROTOCOL_VERSION))
    return "%s runs %s (%s)" % (python, posixpath.basename(path), answer)


def programs_in_use(entries: Iterable[PilotEntry]) -> set[str] | None:
    """The program file names the pilots that are not gone may run; None when one of them
    does not say (then any program may be in use)."""
    used = set()
    for entry in entries:
        if entry.state is PilotState.GONE:
            continue
        if not entry.program:
            return None
        used.add(posixpath.basename(entry.program))
    return used


def prune_programs(cfg: Config, transport: Transport, registry: Registry,
                   now: float | None = None) -> list[str]:
    """Remove the old pilot programs in W/bin that no live pilot may use (see the module
    docstring for the rule); the names removed. TransportError when W/bin or the
    registry cannot be read (nothing is removed then)."""
    now = time.time() if now is None else now
    bin_dir = posixpath.join(cfg.workspace, BIN)
    names = [n for n in transport.listdir(bin_dir) if PROGRAM_NAME.match(n)]
    seen = _first_seen(cfg, names, now)
    current = program_name()
    old = [n for n in names if n != current and now - seen[n] > PROGRAM_KEEP]
    if not old:
        return []
    removed = []
    with registry.lock():
        in_use = programs_in_use(registry.entries().values())
        if in_use is None:
            log.debug("pilot programs %s kept: a live pilot does not say which it runs", old)
            return []
        for name in old:
            if name not in in_use:
                registry.keep()  # the lock's lease, refreshed (or given up) before each step
                transport.remove(posixpath.join(bin_dir, name))
                removed.append(name)
    if removed:
        log.info("removed %d old pilot program(s) no pilot uses: %s", len(removed),
                 ", ".join(removed))
    return removed


def _first_seen(cfg: Config, names: list[str], now: float) -> dict[str, float]:
    """When this server first saw each program (now for new ones); the spool's file keeps
    the programs there now."""
    path = cfg.spool / SEEN_FILE
    try:
        known = p.read_json(str(path))
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    seen = {}
    for name in names:
        value = known.get(name)
        seen[name] = float(value) if isinstance(value, (int, float)) else now
    if seen != known:
        p.write_json(str(path), seen)
    return seen
