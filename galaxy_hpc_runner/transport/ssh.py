"""The ``ssh`` transport: the HPC head node over SSH (paramiko), host keys verified.

One connection (and one SFTP session) is reused across a pass and reopened,
with backoff, when it drops. Uploads go through SFTP to a temp name, are
checked by size and renamed into place; downloads stream through ``cat`` on an
exec channel (paramiko's prefetching ``get()`` can stall) into a local temp
file, are checked by size and renamed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import secrets
import shlex
import socket
import stat
import tempfile
import time
from collections.abc import Callable
from typing import BinaryIO, TypeVar

import paramiko
from paramiko.sftp import CMD_EXTENDED

from galaxy_hpc_runner.config import Config
from galaxy_hpc_runner.errors import CommandError, CommandTimeout, RemoteFileMissing, TransportError
from galaxy_hpc_runner.transport.base import Transport
from galaxy_hpc_runner.transport.runcmd import Completed

log = logging.getLogger(__name__)
T = TypeVar("T")
CHUNK = 1 << 20
WINDOW = 16 << 20  # bytes in flight per channel: loopback to a WAN head node
SMALL = 4 << 20  # files up to this size are read over SFTP, larger ones streamed by cat
RETRY_DELAYS = (0.5, 2.0)


def _fast_transport(sock: socket.socket, disabled_algorithms: dict[str, list[str]] | None = None
                    ) -> paramiko.Transport:
    """A paramiko Transport tuned for bulk data: a large window and AES-GCM first.

    GCM does encryption and integrity in one pass of the C library, where CTR
    adds a separate HMAC per packet; any cipher the server offers still works.
    """
    transport = paramiko.Transport(sock, default_window_size=WINDOW,
                                   disabled_algorithms=disabled_algorithms)
    preferred = tuple(transport._preferred_ciphers)
    gcm = tuple(name for name in preferred if name.endswith("gcm@openssh.com"))
    transport._preferred_ciphers = gcm + tuple(n for n in preferred if n not in gcm)
    return transport


def _passphrase(options: dict[str, str]) -> str | None:
    """From an environment variable or a file: never from the INI itself."""
    if options.get("passphrase_env"):
        value = os.environ.get(options["passphrase_env"])
        if value is None:
            raise TransportError("[transport] passphrase_env %s is not set"
                                 % options["passphrase_env"])
        return value
    if options.get("passphrase_file"):
        with open(os.path.expanduser(options["passphrase_file"]), encoding="utf-8") as handle:
            return handle.read().strip()
    return None


class SshTransport(Transport):
    def __init__(self, host: str, port: int = 22, user: str | None = None,
                 key_file: str | None = None, passphrase: str | None = None,
                 known_hosts: str | None = None, timeout: float = 20.0) -> None:
        self.host, self.port, self.user = host, port, user
        self.key_file, self.passphrase = key_file, passphrase
        self.known_hosts = os.path.expanduser(known_hosts or "~/.ssh/known_hosts")
        self.timeout = timeout
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None

    @classmethod
    def from_config(cls, cfg: Config) -> SshTransport:
        o = cfg.transport
        if not o.get("host"):
            raise TransportError("[transport] host is required for type = ssh")
        return cls(host=o["host"], port=int(o.get("port", "22")), user=o.get("user"),
                   key_file=os.path.expanduser(o["key_file"]) if o.get("key_file") else None,
                   passphrase=_passphrase(o), known_hosts=o.get("known_hosts"),
                   timeout=float(o.get("timeout", "20")))

    # -- connection ------------------------------------------------------------------
    def _connect(self) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        if not os.path.exists(self.known_hosts):
            raise TransportError("known_hosts file %s does not exist" % self.known_hosts)
        client.load_host_keys(self.known_hosts)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(self.host, port=self.port, username=self.user,
                           key_filename=self.key_file, passphrase=self.passphrase,
                           timeout=self.timeout, banner_timeout=self.timeout,
                           auth_timeout=self.timeout, allow_agent=False,
                           transport_factory=_fast_transport,
                           look_for_keys=self.key_file is None)
        except paramiko.BadHostKeyException as exc:
            raise TransportError("host key of %s:%d CHANGED (not the one in %s): refusing to "
                                 "connect" % (self.host, self.port, self.known_hosts)) from exc
        except paramiko.SSHException as exc:
            if "not found in known_hosts" in str(exc):
                raise TransportError("host key of %s:%d is unknown (not in %s): refusing to "
                                     "connect; add it with ssh-keyscan after checking it"
                                     % (self.host, self.port, self.known_hosts)) from exc
            raise TransportError("ssh to %s:%d failed: %s" % (self.host, self.port, exc)) from exc
        except OSError as exc:
            raise TransportError("cannot reach %s:%d: %s" % (self.host, self.port, exc)) from exc
        return client

    def _ssh(self) -> paramiko.SSHClient:
        transport = self._client.get_transport() if self._client else None
        if transport is None or not transport.is_active():
            self.close()
            self._client = self._connect()
            log.info("connected to %s:%d", self.host, self.port)
        assert self._client is not None
        return self._client

    def _sftp_client(self) -> paramiko.SFTPClient:
        client = self._ssh()
        if self._sftp is None:
            self._sftp = client.open_sftp()
        return self._sftp

    def close(self) -> None:
        for thing in (self._sftp, self._client):
            if thing is not None:
                with contextlib.suppress(OSError, paramiko.SSHException):
                    thing.close()
        self._sftp = self._client = None

    def _retry(self, what: str, op: Callable[[], T]) -> T:
        """Run ``op``; on a dropped connection reconnect with backoff and try again."""
        delays = list(RETRY_DELAYS)
        while True:
            try:
                return op()
            except (TimeoutError, TransportError, paramiko.SSHException, EOFError,
                    ConnectionError) as exc:
                if isinstance(exc, TransportError) and "refusing" in str(exc):
                    raise  # a host key problem does not heal by retrying
                if not delays:
                    if isinstance(exc, TransportError):
                        raise
                    raise TransportError("%s on %s failed: %s" % (what, self.host, exc)) from exc
                delay = delays.pop(0)
                log.warning("%s on %s failed (%s); reconnecting in %ss", what, self.host, exc,
                            delay)
                self.close()
                time.sleep(delay)

    # -- files -----------------------------------------------------------------------
    def listdir(self, path: str) -> list[str]:
        def op() -> list[str]:
            try:
                names = self._sftp_client().listdir(path)
            except FileNotFoundError:
                return []
            return sorted(n for n in names if not n.startswith("."))
        return self._retry("listdir", op)

    def _unless_missing(self, what: str, call: Callable[[], object]) -> bool:
        """Run ``call``; False when the path it names does not exist."""
        def op() -> bool:
            try:
                call()
            except FileNotFoundError:
                return False
            return True
        return self._retry(what, op)

    def exists(self, path: str) -> bool:
        return self._unless_missing("stat", lambda: self._sftp_client().stat(path))

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
        self._retry("mkdir", op)

    @staticmethod
    def _is_dir(sftp: paramiko.SFTPClient, path: str) -> bool:
        try:
            return stat.S_ISDIR(sftp.stat(path).st_mode or 0)
        except FileNotFoundError:
            return False

    def _tmp_name(self, remote: str) -> str:
        return posixpath.join(posixpath.dirname(remote),
                              ".tmp-%s-%s" % (posixpath.basename(remote), secrets.token_hex(4)))

    def put(self, local: str, remote: str) -> None:
        size = os.path.getsize(local)

        def op() -> None:
            sftp, tmp = self._sftp_client(), self._tmp_name(remote)
            try:
                with open(local, "rb") as src:
                    if size <= SMALL:
                        with sftp.open(tmp, "wb") as dst:
                            dst.write(src.read())
                    else:  # one stream beats SFTP's 32 KB requests for bulk data
                        self._stream_up(["dd", "of=" + tmp, "bs=1M", "status=none"], src)
                got = sftp.stat(tmp).st_size
                if got != size:
                    raise TransportError("upload of %s is %s bytes, expected %d" % (
                        local, got, size))
                sftp.posix_rename(tmp, remote)
            except BaseException:
                self._remove_quietly(tmp)
                raise
        self._retry("upload", op)

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

    def _session(self) -> paramiko.Channel:
        transport = self._ssh().get_transport()
        assert transport is not None
        return transport.open_session(timeout=self.timeout)

    def get(self, remote: str, local: str) -> None:
        def op() -> None:
            size = self._sftp_client().stat(remote).st_size or 0
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(local) or ".")
            try:
                with os.fdopen(fd, "wb") as out:
                    if size <= SMALL:  # one SFTP read beats starting a remote process
                        out.write(self.read_bytes(remote))
                        rc = 0
                    else:
                        rc = self._stream(["cat", "--", remote], out)
                got = os.path.getsize(tmp)
                if rc != 0 or got != size:
                    raise TransportError("download of %s: %d of %s bytes (cat rc %d)" % (
                        remote, got, size, rc))
                os.chmod(tmp, 0o644)
                os.replace(tmp, local)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        self._retry("download", op)

    def _stream(self, argv: list[str], out: BinaryIO) -> int:
        channel = self._session()
        channel.exec_command(shlex.join(argv))
        while block := channel.recv(CHUNK):
            out.write(block)
        return int(channel.recv_exit_status())

    def write_text(self, remote: str, text: str) -> None:
        data = text.encode("utf-8")

        def op() -> None:
            sftp, tmp = self._sftp_client(), self._tmp_name(remote)
            with sftp.open(tmp, "wb") as dst:
                dst.write(data)
            sftp.posix_rename(tmp, remote)
        self._retry("write", op)

    def read_bytes(self, remote: str, limit: int | None = None) -> bytes:
        def op() -> bytes:
            with self._sftp_client().open(remote, "rb") as src:
                if limit is not None:
                    size = src.stat().st_size
                    src.seek(max(0, size - limit))
                src.prefetch()
                return bytes(src.read())
        try:
            return self._retry("read", op)
        except FileNotFoundError as exc:
            raise RemoteFileMissing("%s does not exist on %s" % (remote, self.host)) from exc
        except OSError as exc:
            raise TransportError("cannot read %s: %s" % (remote, exc)) from exc

    def create_exclusive(self, remote: str, text: str) -> bool:
        data = text.encode("utf-8")

        def op() -> bool:
            try:
                with self._sftp_client().open(remote, "xb") as dst:
                    dst.write(data)
            except OSError as exc:
                if self._exists(remote):  # SFTP servers report EEXIST as a plain failure
                    return False
                raise TransportError("cannot create %s: %s" % (remote, exc)) from exc
            return True
        return self._retry("create", op)

    def _exists(self, remote: str) -> bool:
        try:
            self._sftp_client().lstat(remote)
        except FileNotFoundError:
            return False
        return True

    def rename(self, src: str, dst: str) -> bool:
        return self._unless_missing("rename",
                                    lambda: self._sftp_client().posix_rename(src, dst))

    def remove(self, path: str) -> None:
        def op() -> None:
            sftp = self._sftp_client()
            try:
                mode = sftp.lstat(path).st_mode or 0
            except FileNotFoundError:
                return
            if not stat.S_ISDIR(mode):
                sftp.remove(path)
            elif len(sftp.listdir(path)) > 100:  # big trees: one rm beats many requests
                self.run(["rm", "-rf", "--", path])
            else:
                self._remove_tree(sftp, path)
        self._retry("remove", op)

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
                self.run(["ln", "-f", "--", src, dst])
        self._retry("link", op)

    def _remove_quietly(self, path: str) -> None:
        with contextlib.suppress(OSError, paramiko.SSHException):
            if self._sftp is not None:
                self._sftp.remove(path)

    # -- commands --------------------------------------------------------------------
    def run(self, argv: list[str], timeout: float = 60.0, check: bool = True,
            stdin: str | None = None) -> Completed:
        """Run ``argv`` on the head node: every word quoted, never a config-built string."""
        def op() -> Completed:
            client = self._ssh()
            chan_in, chan_out, chan_err = client.exec_command(shlex.join(argv), timeout=timeout)
            if stdin is not None:
                chan_in.write(stdin)
            chan_in.channel.shutdown_write()
            try:
                out = chan_out.read().decode("utf-8", "replace")
                err = chan_err.read().decode("utf-8", "replace")
            except TimeoutError as exc:
                raise CommandTimeout("%s on %s did not finish within %ss" % (
                    argv[0], self.host, timeout)) from exc
            return Completed(argv, chan_out.channel.recv_exit_status(), out, err)
        done = self._retry("command %s" % argv[0], op)
        if check and done.rc != 0:
            raise CommandError(argv, done.rc, done.stdout, done.stderr)
        return done
