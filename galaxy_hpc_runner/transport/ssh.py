"""The ``ssh`` transport: the HPC head node over SSH (paramiko), host keys verified.

One connection (and one SFTP session) is reused across a pass and reopened,
with backoff, when it drops: for reads, file moves and queries only. A command
that is not idempotent (``sbatch``) is sent once; if the connection fails after
it was sent, :class:`CommandOutcomeUnknown` says so. Every paramiko, socket and
SFTP failure becomes a TransportError naming the operation and the path.

Files on the HPC side are checked with ``lstat`` before they are read (a link
or a non-regular file is :class:`UnsafeRemoteFile`), the opened handle is
checked again, and large files stream through ``dd iflag=nofollow``. Uploads go
to a unique temp name (exclusive create), are checked by size, get the source's
mode (masked by the local umask) and are renamed into place. Many small files
move as one tar stream each way (:mod:`.ssh_stream`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import shlex
import stat
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO

import paramiko
from paramiko.sftp import CMD_EXTENDED

from galaxy_hpc_runner.errors import RemoteFileMissing, TransportError
from galaxy_hpc_runner.transport.base import (
    READ_CAP,
    Transport,
    UnsafeRemoteFile,
    masked_mode,
    open_regular,
    tmp_name,
)
from galaxy_hpc_runner.transport.ssh_session import (  # noqa: F401 - _passphrase: documented
    DROPPED,
    SshSession,
    _passphrase,
)

log = logging.getLogger(__name__)
CHUNK = 1 << 20
SMALL = 4 << 20  # files up to this size go over SFTP, larger ones stream through dd
RETRY_DELAYS = (0.5, 2.0)  # waits before each reconnect (read by ssh_session at each retry)


def _same_file(opened: Any, checked: Any, remote: str, exact: bool) -> None:
    """The handle we opened is still the regular file lstat showed (not a swapped-in link)."""
    if not stat.S_ISREG(opened.st_mode or 0) or opened.st_uid != checked.st_uid or (
            exact and (opened.st_size, opened.st_mtime) != (checked.st_size, checked.st_mtime)):
        raise UnsafeRemoteFile("refusing to read %s: it changed into another file while "
                               "being opened" % remote)


class SshTransport(SshSession, Transport):
    """Files on the HPC side over SFTP (and dd, and tar streams); see the module docstring."""

    # -- listing, checks -------------------------------------------------------------
    def listdir(self, path: str) -> list[str]:
        def op() -> list[str]:
            try:
                names = self._sftp_client().listdir(path)
            except FileNotFoundError:
                return []
            return sorted(n for n in names if not n.startswith("."))
        return self._do("listdir", path, op)

    def _unless_missing(self, what: str, path: str, call: Callable[[], object]) -> bool:
        """Run ``call``; False when the path it names does not exist."""
        def op() -> bool:
            try:
                call()
            except FileNotFoundError:
                return False
            return True
        return self._do(what, path, op)

    def exists(self, path: str) -> bool:
        return self._unless_missing("lstat", path, lambda: self._sftp_client().lstat(path))

    def makedirs(self, path: str) -> None:
        def op() -> None:
            sftp, missing = self._sftp_client(), []
            current = path.rstrip("/")
            while current and not self._is_dir(sftp, current):
                missing.append(current)
                current = posixpath.dirname(current)
            for directory in reversed(missing):
                try:
                    sftp.mkdir(directory)
                except OSError:
                    if not self._is_dir(sftp, directory):  # not made by somebody else
                        raise
        self._do("mkdir", path, op)

    @staticmethod
    def _is_dir(sftp: paramiko.SFTPClient, path: str) -> bool:
        try:
            return stat.S_ISDIR(sftp.stat(path).st_mode or 0)
        except FileNotFoundError:
            return False

    def _regular(self, sftp: paramiko.SFTPClient, remote: str, what: str) -> Any:
        """lstat of ``remote``: UnsafeRemoteFile unless it is a regular file (not a link)."""
        info = sftp.lstat(remote)
        mode = info.st_mode or 0
        if stat.S_ISLNK(mode):
            raise UnsafeRemoteFile("refusing to %s %s on %s: it is a symbolic link" % (
                what, remote, self.host))
        if not stat.S_ISREG(mode):
            raise UnsafeRemoteFile("refusing to %s %s on %s: it is not a regular file" % (
                what, remote, self.host))
        return info

    # -- files up --------------------------------------------------------------------
    def put(self, local: str, remote: str) -> None:
        with os.fdopen(open_regular(local, "upload", TransportError), "rb") as src:
            info = os.fstat(src.fileno())
            size, mode = info.st_size, masked_mode(info.st_mode)

            def op() -> None:
                sftp, tmp = self._sftp_client(), tmp_name(remote)
                src.seek(0)
                try:
                    if size <= SMALL:
                        with sftp.open(tmp, "wxb") as dst:
                            dst.set_pipelined(True)
                            dst.write(src.read())
                            dst.chmod(mode)
                    else:  # one stream beats SFTP's 32 KB requests for bulk data
                        self._stream_up(["dd", "of=" + tmp, "conv=excl", "oflag=nofollow",
                                         "bs=1M", "status=none"], src)
                        sftp.chmod(tmp, mode)
                    got = sftp.stat(tmp).st_size
                    if got != size:
                        raise TransportError("upload of %s to %s: %s bytes arrived, expected %d"
                                             % (local, remote, got, size))
                    sftp.posix_rename(tmp, remote)
                except BaseException:
                    self._remove_quietly(tmp)
                    raise
            self._do("upload", "%s to %s" % (local, remote), op)

    def _stream_up(self, argv: list[str], src: BinaryIO) -> None:
        channel = self._session()
        channel.exec_command(shlex.join(argv))
        while block := src.read(CHUNK):
            channel.sendall(block)
        channel.shutdown_write()
        rc = channel.recv_exit_status()
        if rc != 0:
            raise TransportError("%s on %s exited %d: %s" % (
                argv[0], self.host, rc, channel.recv_stderr(4096).decode(errors="replace")))

    def write_text(self, remote: str, text: str) -> None:
        data = text.encode("utf-8")

        def op() -> None:
            sftp, tmp = self._sftp_client(), tmp_name(remote)
            try:
                with sftp.open(tmp, "wxb") as dst:
                    dst.write(data)
                sftp.posix_rename(tmp, remote)
            except BaseException:
                self._remove_quietly(tmp)
                raise
        self._do("write", remote, op)

    # -- files down ------------------------------------------------------------------
    def get(self, remote: str, local: str) -> None:
        def op() -> None:
            sftp = self._sftp_client()
            info = self._regular(sftp, remote, "download")
            size = info.st_size or 0
            tmp = tmp_name(local)
            try:
                try:
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                except OSError as exc:
                    raise TransportError("download of %s: cannot write %s: %s" % (
                        remote, tmp, exc.strerror)) from exc
                with os.fdopen(fd, "wb") as out:
                    if size <= SMALL:  # one SFTP read beats starting a remote process
                        with sftp.open(remote, "rb") as src:
                            _same_file(src.stat(), info, remote, exact=True)
                            src.prefetch(size)
                            out.write(src.read(size + 1))
                        rc = 0
                    else:
                        rc = self._stream(["dd", "iflag=nofollow", "if=" + remote, "bs=1M",
                                           "status=none"], out, size)
                    out.flush()
                    got = os.fstat(out.fileno()).st_size
                    if rc != 0 or got != size:
                        raise TransportError("download of %s: %d of %s bytes (rc %d)" % (
                            remote, got, size, rc))
                    os.fchmod(out.fileno(), masked_mode(info.st_mode or 0o600))
                os.replace(tmp, local)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        self._do("download", "%s to %s" % (remote, local), op)

    def _stream(self, argv: list[str], out: BinaryIO, size: int) -> int:
        """``argv``'s stdout into ``out``; stops (rc -2) past ``size`` bytes: never unbounded."""
        channel = self._session()
        channel.exec_command(shlex.join(argv))
        got = 0
        while block := channel.recv(CHUNK):
            got += len(block)
            if got > size:
                channel.close()
                return -2
            out.write(block)
        return int(channel.recv_exit_status())

    def read_bytes(self, remote: str, limit: int | None = None,
                   max_bytes: int = READ_CAP) -> bytes:
        def op() -> bytes:
            sftp = self._sftp_client()
            info = self._regular(sftp, remote, "read")
            with sftp.open(remote, "rb") as src:
                now = src.stat()
                _same_file(now, info, remote, exact=False)
                size = now.st_size or 0
                if limit is None and size > max_bytes:
                    raise UnsafeRemoteFile("refusing to read %s on %s: %d bytes, over the "
                                           "%d-byte cap" % (remote, self.host, size, max_bytes))
                want = size if limit is None else min(size, max(0, limit))
                src.seek(size - want)
                if want:
                    src.prefetch(size)
                return bytes(src.read(want))
        return self._do("read", remote, op)

    # -- markers, locks, trees -------------------------------------------------------
    def create_exclusive(self, remote: str, text: str) -> bool:
        """Write ``text`` to a unique temp file, then hard-link it to ``remote`` (link(2)
        never replaces). After a dropped connection the retry tells its own file from
        another creator's by comparing the two inodes."""
        tmp = tmp_name(remote)
        self.write_text(tmp, text)
        try:
            try:
                return self._do("create", remote, lambda: self._link_new(tmp, remote, False),
                                idempotent=False)
            except TransportError as exc:
                if isinstance(exc, RemoteFileMissing) or self._alive():
                    raise
            log.warning("create %s on %s: connection lost; checking whose file it is",
                        remote, self.host)
            return self._do("create", remote, lambda: self._link_new(tmp, remote, True))
        finally:
            with contextlib.suppress(TransportError):
                self._do("remove", tmp, lambda: self._remove_quietly(tmp, strict=True))

    def _link_new(self, tmp: str, remote: str, retried: bool) -> bool:
        sftp = self._sftp_client()
        for attempt in range(3):
            try:
                sftp._request(CMD_EXTENDED, "hardlink@openssh.com", tmp, remote)
                return True
            except OSError:
                if not self._alive():  # dropped: whether it linked is for the retry to find out
                    raise
                if self._unless_missing("lstat", remote, lambda: sftp.lstat(remote)):
                    break  # taken
                if attempt == 2:  # not there, yet the link failed: not a race, a real failure
                    raise
                # it was there when linking and gone when looked at (released): link again
        if not retried:
            return False
        ids = self.run(["stat", "-c", "%d:%i", "--", tmp, remote], idempotent=True).stdout
        first, _, second = ids.strip().partition("\n")
        return bool(first) and first == second

    def rename(self, src: str, dst: str) -> bool:
        return self._unless_missing("rename", "%s to %s" % (src, dst),
                                    lambda: self._sftp_client().posix_rename(src, dst))

    def remove(self, path: str) -> None:
        def op() -> None:
            sftp = self._sftp_client()
            try:
                mode = sftp.lstat(path).st_mode or 0
            except FileNotFoundError:
                return
            if not stat.S_ISDIR(mode):
                with contextlib.suppress(FileNotFoundError):
                    sftp.remove(path)
            elif len(sftp.listdir(path)) > 100:  # big trees: one rm beats many requests
                self.run(["rm", "-rf", "--", path], idempotent=True)
            else:
                self._remove_tree(sftp, path)
        self._do("remove", path, op)

    def _remove_tree(self, sftp: paramiko.SFTPClient, path: str) -> None:
        for entry in sftp.listdir_attr(path):
            child = posixpath.join(path, entry.filename)
            if stat.S_ISDIR(entry.st_mode or 0):
                self._remove_tree(sftp, child)
            else:
                with contextlib.suppress(FileNotFoundError):
                    sftp.remove(child)
        with contextlib.suppress(FileNotFoundError):
            sftp.rmdir(path)

    def link(self, src: str, dst: str) -> None:
        """Hard link through OpenSSH's SFTP extension; ``ln`` where it is missing."""
        def op() -> None:
            sftp = self._sftp_client()
            with contextlib.suppress(FileNotFoundError):
                sftp.remove(dst)
            try:
                sftp._request(CMD_EXTENDED, "hardlink@openssh.com", src, dst)
            except OSError:
                if not self._alive():
                    raise
                self.run(["ln", "-f", "--", src, dst], idempotent=True)
        self._do("link", "%s to %s" % (src, dst), op)

    def _remove_quietly(self, path: str, strict: bool = False) -> None:
        if self._sftp is None and not strict:
            return
        try:
            (self._sftp_client() if strict else self._sftp).remove(path)  # type: ignore[union-attr]
        except FileNotFoundError:
            pass
        except (OSError, *DROPPED):
            if strict:
                raise

    # -- many files ------------------------------------------------------------------
    def put_many(self, pairs: Sequence[tuple[str, str]]) -> None:
        from galaxy_hpc_runner.transport import ssh_stream

        ssh_stream.put_many(self, pairs)

    def get_many(self, pairs: Sequence[tuple[str, str]]) -> None:
        from galaxy_hpc_runner.transport import ssh_stream

        ssh_stream.get_many(self, pairs)

