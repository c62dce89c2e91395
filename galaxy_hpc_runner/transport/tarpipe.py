"""Many small files as one tar stream through one exec channel, verified, no link followed.

This module's text is sent to the HPC side and run there by the pilot's Python
(``python -c``), so it is standard library only and Python 3.8. The submitting
side imports it too (``MANIFEST``, ``STATUS``, and the tests run both halves
locally).

``unpack`` (upload): stdin is a tar stream whose first member ``MANIFEST`` is a
JSON list of ``[destination, size, mode]``; member ``i`` (named ``str(i)``) is
file ``i``. Each file is written to a unique temp name in its destination
directory (made when missing), opened with O_EXCL|O_NOFOLLOW, checked by size,
given its mode and renamed into place. stdout: one JSON object, ``{"errors":
{"i": "why"}}``.

``pack`` (download): stdin is a JSON list of paths. Each is opened with
O_NOFOLLOW|O_NONBLOCK and must be a regular file; member ``i`` holds its bytes
(the size fstat gave), and a last member ``STATUS`` holds ``{"errors": {"i":
"why"}}`` for the files that could not be sent whole.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import secrets
import stat
import sys
import tarfile
from typing import IO

MANIFEST = "manifest.json"
STATUS = "status.json"
CHUNK = 1 << 20


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno == errno.ELOOP:
        return "it is a symbolic link"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


def _write_member(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: str, size: int,
                  mode: int) -> None:
    """One member to a temp file beside ``dest``, checked, then renamed into place."""
    directory = os.path.dirname(dest) or "."
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, ".tmp-%s-%s" % (os.path.basename(dest), secrets.token_hex(4)))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        source = tar.extractfile(member)
        if source is None:
            raise ValueError("member %s is not a file" % member.name)
        written = 0
        with os.fdopen(fd, "wb") as out:
            while True:
                block = source.read(CHUNK)
                if not block:
                    break
                out.write(block)
                written += len(block)
            out.flush()
            if written != size or member.size != size:
                raise OSError(errno.EIO, "%d bytes arrived, expected %d" % (written, size))
            os.fchmod(out.fileno(), mode)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def unpack(stream: IO[bytes]) -> dict[str, str]:
    """Receive the files of an upload stream; {index: why} of those not placed."""
    errors: dict[str, str] = {}
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        manifest: list[list[object]] | None = None
        for member in tar:
            if member.name == MANIFEST:
                handle = tar.extractfile(member)
                manifest = json.loads(handle.read().decode("utf-8")) if handle else []
                continue
            if manifest is None or not member.name.isdigit() or not member.isfile() or \
                    int(member.name) >= len(manifest):
                raise ValueError("unexpected member %r in the upload stream" % member.name)
            index = int(member.name)
            dest, size, mode = (str(manifest[index][0]), int(str(manifest[index][1])),
                                int(str(manifest[index][2])))
            try:
                _write_member(tar, member, dest, size, mode)
            except (OSError, ValueError) as exc:
                errors[str(index)] = "%s: %s" % (dest, _why(exc))
    return errors


def _open_regular(path: str) -> tuple[int, os.stat_result]:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "it is not a regular file")
    return fd, info


class _Exactly(io.RawIOBase):
    """At most ``size`` bytes of ``fd``, padded with zeros if it shrank (then flagged)."""

    def __init__(self, fd: int, size: int) -> None:
        super().__init__()
        self.fd, self.left, self.short = fd, size, False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        want = min(len(buffer), self.left)
        if want <= 0:
            return 0
        block = os.read(self.fd, want) if not self.short else b""
        if not block:
            self.short = True
            block = bytes(want)
        buffer[:len(block)] = block
        self.left -= len(block)
        return len(block)


def pack(paths: list[str], stream: IO[bytes]) -> None:
    """Send each regular file of ``paths`` as member ``i``; STATUS names the failures."""
    errors: dict[str, str] = {}
    with tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for index, path in enumerate(paths):
            try:
                fd, info = _open_regular(path)
            except OSError as exc:
                errors[str(index)] = "%s: %s" % (path, _why(exc))
                continue
            try:
                member = tarfile.TarInfo(str(index))
                member.size, member.mode = info.st_size, stat.S_IMODE(info.st_mode)
                member.mtime = int(info.st_mtime)
                source = _Exactly(fd, info.st_size)
                tar.addfile(member, io.BufferedReader(source, CHUNK))
                if source.short:
                    errors[str(index)] = "%s: it shrank while being read" % path
            finally:
                os.close(fd)
        data = json.dumps({"errors": errors}).encode("utf-8")
        member = tarfile.TarInfo(STATUS)
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data))


def main(argv: list[str]) -> int:
    if argv[1:] == ["unpack"]:
        errors = unpack(sys.stdin.buffer)
        sys.stdout.write(json.dumps({"errors": errors}))
        return 0
    if argv[1:] == ["pack"]:
        paths = json.loads(sys.stdin.buffer.read().decode("utf-8"))
        pack(paths, sys.stdout.buffer)
        sys.stdout.buffer.flush()
        return 0
    sys.stderr.write("usage: tarpipe unpack|pack\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
