"""Many small files over ssh as one tar stream each way, through one exec channel.

Over SFTP each file costs several round trips (open, write, fsetstat, close,
stat, rename); here a whole batch is one channel: the helper in
:mod:`.tarpipe` runs on the head node under the pilot's Python and places (or
packs) every file with the same guarantees as ``put``/``get``: a unique temp
name, a size check, the source's mode, a rename, and no link followed on the
HPC side. Where that Python cannot be started (exit 127), the batch falls back
to one ``put``/``get`` per file.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shlex
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import paramiko

from galaxy_hpc_runner.errors import TransportError
from galaxy_hpc_runner.transport import tarpipe
from galaxy_hpc_runner.transport.base import (
    ManyTransferError,
    Transport,
    masked_mode,
    open_regular,
    tmp_name,
)

if TYPE_CHECKING:
    from galaxy_hpc_runner.transport.ssh import SshTransport

log = logging.getLogger(__name__)
HELPER = Path(tarpipe.__file__).read_text(encoding="utf-8")
NOT_FOUND = 127


class _ChannelWriter(io.RawIOBase):
    def __init__(self, channel: paramiko.Channel) -> None:
        super().__init__()
        self.channel = channel

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.channel.sendall(bytes(data))
        return len(data)


class _ChannelReader(io.RawIOBase):
    def __init__(self, channel: paramiko.Channel) -> None:
        super().__init__()
        self.channel = channel

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        block = self.channel.recv(len(buffer))
        buffer[:len(block)] = block
        return len(block)


def helper_available(t: SshTransport) -> bool:
    """Whether ``t.python`` starts on the head node (asked once per transport)."""
    known: bool | None = getattr(t, "_tarpipe_ok", None)
    if known is None:
        done = t.run([t.python, "-c", "import tarfile"], check=False, idempotent=True)
        known = done.rc == 0
        if not known:
            log.warning("%s cannot be started on %s (%s): moving files one at a time",
                        t.python, t.host, done.stderr.strip()[-200:])
        t._tarpipe_ok = known  # type: ignore[attr-defined]
    return known


def _helper(t: SshTransport, mode: str) -> paramiko.Channel:
    channel = t._session()
    channel.settimeout(max(t.timeout, 60.0))
    channel.exec_command(shlex.join([t.python, "-c", HELPER, mode]))
    return channel


def _finish(channel: paramiko.Channel, what: str, t: SshTransport) -> tuple[int, bytes]:
    """The helper's exit status and the end of its stderr."""
    rc = channel.recv_exit_status()
    err = b""
    while channel.recv_stderr_ready():
        err += channel.recv_stderr(65536)
    if rc not in (0, NOT_FOUND):
        raise TransportError("%s stream on %s: %s exited %d: %s" % (
            what, t.host, t.python, rc, err.decode("utf-8", "replace").strip()[-500:]))
    return rc, err


# -- upload ------------------------------------------------------------------------------

def put_many(t: SshTransport, pairs: Sequence[tuple[str, str]]) -> None:
    if not helper_available(t):
        return Transport.put_many(t, pairs)
    failed: dict[str, str] = {}
    opened: list[tuple[int, os.stat_result, str]] = []
    for local, remote in pairs:
        try:
            fd = open_regular(local, "upload", TransportError)
        except TransportError as exc:
            failed[remote] = str(exc)
            continue
        opened.append((fd, os.fstat(fd), remote))
    try:
        if opened:
            failed.update(t._do("upload", "%d files" % len(opened),
                                lambda: _put_stream(t, opened)))
    except _NoHelper:
        log.warning("%s cannot be started on %s: uploading one file at a time", t.python, t.host)
        return Transport.put_many(t, pairs)
    finally:
        for fd, _, _ in opened:
            os.close(fd)
    if failed:
        raise ManyTransferError("upload", failed)


class _NoHelper(Exception):
    """The head node has no such Python: move files one at a time."""


def _put_stream(t: SshTransport, opened: list[tuple[int, os.stat_result, str]]
                ) -> dict[str, str]:
    manifest = [[remote, info.st_size, masked_mode(info.st_mode)] for _, info, remote in opened]
    channel = _helper(t, "unpack")
    short: list[str] = []
    with tarfile.open(fileobj=_ChannelWriter(channel), mode="w|",
                      format=tarfile.PAX_FORMAT) as tar:
        data = json.dumps(manifest).encode("utf-8")
        member = tarfile.TarInfo(tarpipe.MANIFEST)
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data))
        for index, (fd, info, remote) in enumerate(opened):
            os.lseek(fd, 0, os.SEEK_SET)
            member = tarfile.TarInfo(str(index))
            member.size = info.st_size
            source = tarpipe._Exactly(fd, info.st_size)
            tar.addfile(member, io.BufferedReader(source, tarpipe.CHUNK))
            if source.short:
                short.append(remote)
    channel.shutdown_write()
    report = _ChannelReader(channel).read()
    rc, _ = _finish(channel, "upload", t)
    if rc == NOT_FOUND:
        raise _NoHelper()
    errors = json.loads(report.decode("utf-8"))["errors"]
    failed = {opened[int(i)][2]: why for i, why in errors.items()}
    for remote in short:  # the local file shrank while it was sent: do not leave it there
        with contextlib.suppress(TransportError):
            t.remove(remote)
        failed[remote] = "the local file shrank while it was sent"
    return failed


# -- download ----------------------------------------------------------------------------

def get_many(t: SshTransport, pairs: Sequence[tuple[str, str]]) -> None:
    if not pairs:
        return
    if not helper_available(t):
        return Transport.get_many(t, pairs)
    try:
        failed = t._do("download", "%d files" % len(pairs), lambda: _get_stream(t, pairs))
    except _NoHelper:
        log.warning("%s cannot be started on %s: downloading one file at a time", t.python,
                    t.host)
        return Transport.get_many(t, pairs)
    if failed:
        raise ManyTransferError("download", failed)


def _get_stream(t: SshTransport, pairs: Sequence[tuple[str, str]]) -> dict[str, str]:
    channel = _helper(t, "pack")
    channel.sendall(json.dumps([remote for remote, _ in pairs]).encode("utf-8"))
    channel.shutdown_write()
    pending: dict[int, str] = {}
    failed: dict[str, str] = {}
    status: dict[str, dict[str, str]] = {}
    try:
        reader = io.BufferedReader(_ChannelReader(channel), 1 << 20)
        # an empty stream (the helper failed) is not a tar file: _finish says why
        with contextlib.suppress(tarfile.ReadError), tarfile.open(fileobj=reader,
                                                                  mode="r|") as tar:
            for member in tar:
                if member.name == tarpipe.STATUS:
                    handle = tar.extractfile(member)
                    status = json.loads(handle.read()) if handle else {}
                    continue
                index = int(member.name)
                remote, local = pairs[index]
                try:
                    pending[index] = _receive(tar, member, local)
                except TransportError as exc:
                    failed[remote] = str(exc)
        rc, _ = _finish(channel, "download", t)
        if rc == NOT_FOUND:
            raise _NoHelper()
        errors = status.get("errors", {})
        for index, (remote, local) in enumerate(pairs):
            if str(index) in errors:
                failed[remote] = errors[str(index)]
            elif index in pending:
                os.replace(pending.pop(index), local)
            elif remote not in failed:
                failed[remote] = "not sent by the HPC side"
        return failed
    finally:
        for tmp in pending.values():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def _receive(tar: tarfile.TarFile, member: tarfile.TarInfo, local: str) -> str:
    """One member into a temp file beside ``local``: checked by size, given its mode."""
    tmp = tmp_name(local)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out:
            source = tar.extractfile(member)
            if source is not None:
                while block := source.read(1 << 20):
                    out.write(block)
            out.flush()
            got = os.fstat(out.fileno()).st_size
            if got != member.size:
                raise TransportError("download to %s: %d of %d bytes" % (local, got, member.size))
            os.fchmod(out.fileno(), masked_mode(member.mode))
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise TransportError("download to %s failed: %s" % (local, exc.strerror or exc)) from exc
    except TransportError:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return tmp
