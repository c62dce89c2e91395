"""The ssh session under the ssh transport: one connection, reopened when it drops, and
commands.

``_do`` is the one place paramiko, socket and SFTP failures are turned into
TransportErrors naming the operation and the path; it retries only what is
idempotent. ``run`` sends a command that is not idempotent once: a connection
lost after it was sent is :class:`CommandOutcomeUnknown`, never a second run.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import shlex
import socket
import time
from collections.abc import Callable
from typing import TypeVar

import paramiko

from galaxy_hpc_runner.config import Config
from galaxy_hpc_runner.errors import CommandError, CommandTimeout, RemoteFileMissing, TransportError
from galaxy_hpc_runner.transport.base import CommandOutcomeUnknown
from galaxy_hpc_runner.transport.runcmd import Completed

log = logging.getLogger(__name__)
T = TypeVar("T")
S = TypeVar("S", bound="SshSession")
WINDOW = 16 << 20  # bytes in flight per channel: loopback to a WAN head node
DROPPED = (EOFError, paramiko.SSHException, ConnectionError, TimeoutError, socket.timeout)


class _Unreachable(TransportError):
    """The connection could not be made (worth another try, unlike a host key problem)."""


def _fast_transport(sock: socket.socket, disabled_algorithms: dict[str, list[str]] | None = None
                    ) -> paramiko.Transport:
    """A paramiko Transport tuned for bulk data: a large window and AES-GCM first."""
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
        try:
            with open(os.path.expanduser(options["passphrase_file"]), encoding="utf-8") as handle:
                return handle.read().strip()
        except OSError as exc:
            raise TransportError("[transport] passphrase_file %s: %s" % (
                options["passphrase_file"], exc.strerror)) from exc
    return None


def retry_delays() -> tuple[float, ...]:
    """The waits before each reconnect (the ssh module's RETRY_DELAYS, patchable in tests)."""
    from galaxy_hpc_runner.transport import ssh

    return tuple(ssh.RETRY_DELAYS)


class SshSession:
    """Connection, retries and commands; :class:`~.ssh.SshTransport` adds the files."""

    def __init__(self, host: str, port: int = 22, user: str | None = None,
                 key_file: str | None = None, passphrase: str | None = None,
                 known_hosts: str | None = None, timeout: float = 20.0,
                 python: str = "python3") -> None:
        self.host, self.port, self.user = host, port, user
        self.key_file, self.passphrase = key_file, passphrase
        self.known_hosts = os.path.expanduser(known_hosts or "~/.ssh/known_hosts")
        self.timeout = timeout
        self.python = python  # on the head node, for the tar streams of put_many/get_many
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None

    @classmethod
    def from_config(cls: type[S], cfg: Config) -> S:
        o = cfg.transport
        if not o.get("host"):
            raise TransportError("[transport] host is required for type = ssh")
        return cls(host=o["host"], port=int(o.get("port", "22")), user=o.get("user"),
                   key_file=os.path.expanduser(o["key_file"]) if o.get("key_file") else None,
                   passphrase=_passphrase(o), known_hosts=o.get("known_hosts"),
                   timeout=float(o.get("timeout", "20")), python=cfg.pilot.python)

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
        except paramiko.AuthenticationException as exc:  # permanent: never retried
            raise TransportError(
                "ssh to %s@%s:%d: authentication failed (%s): check [transport] user, key_file "
                "and passphrase_env/passphrase_file" % (
                    self.user or getpass.getuser(), self.host, self.port, exc)) from exc
        except paramiko.BadHostKeyException as exc:
            raise TransportError("host key of %s:%d CHANGED (not the one in %s): refusing to "
                                 "connect" % (self.host, self.port, self.known_hosts)) from exc
        except paramiko.SSHException as exc:
            if "not found in known_hosts" in str(exc):
                raise TransportError("host key of %s:%d is unknown (not in %s): refusing to "
                                     "connect; add it with ssh-keyscan after checking it"
                                     % (self.host, self.port, self.known_hosts)) from exc
            raise _Unreachable("ssh to %s:%d failed: %s" % (self.host, self.port, exc)) from exc
        except (OSError, EOFError) as exc:
            raise _Unreachable("cannot reach %s:%d: %s" % (self.host, self.port, exc)) from exc
        return client

    def _ssh(self) -> paramiko.SSHClient:
        if not self._alive():
            self.close()
            self._client = self._connect()
            log.info("connected to %s:%d", self.host, self.port)
        assert self._client is not None
        return self._client

    def _alive(self) -> bool:
        transport = self._client.get_transport() if self._client else None
        return transport is not None and transport.is_active()

    def _reachable(self) -> bool:
        return self._alive()

    def _sftp_client(self) -> paramiko.SFTPClient:
        client = self._ssh()
        if self._sftp is None:
            try:
                self._sftp = client.open_sftp()
            except paramiko.SSHException as exc:  # e.g. "Channel closed": no sftp subsystem
                if not self._alive():
                    raise _Unreachable("ssh to %s:%d dropped: %s" % (
                        self.host, self.port, exc)) from exc
                raise TransportError(
                    "%s:%d refused an SFTP session (%s): the head node's sshd needs the sftp "
                    "subsystem (Subsystem sftp ... in sshd_config)" % (self.host, self.port, exc)
                ) from exc
        return self._sftp

    def _session(self) -> paramiko.Channel:
        transport = self._ssh().get_transport()
        assert transport is not None
        return transport.open_session(timeout=self.timeout)

    def close(self) -> None:
        for thing in (self._sftp, self._client):
            if thing is not None:
                with contextlib.suppress(Exception):
                    thing.close()
        self._sftp = self._client = None

    def _do(self, what: str, path: str, op: Callable[[], T], idempotent: bool = True) -> T:
        """Run ``op``; a dropped connection is reopened (with backoff) and ``op`` tried again
        when ``idempotent``. Every failure leaves as a TransportError naming ``what`` and
        ``path``; a refusal by the HPC side (no such file, permission) is never retried."""
        delays = list(retry_delays()) if idempotent else []
        while True:
            try:
                return op()
            except _Unreachable as exc:
                failure: BaseException = exc
            except TransportError:
                raise
            except FileNotFoundError as exc:
                raise RemoteFileMissing("%s %s on %s: it does not exist" % (
                    what, path, self.host)) from exc
            except DROPPED as exc:
                failure = exc
            except (OSError, ValueError) as exc:  # SFTP status errors; paramiko's "Socket is
                # closed" (OSError) and "I/O operation on closed file" (ValueError)
                errno = exc.errno if isinstance(exc, OSError) else None
                if errno is not None or self._alive():
                    raise TransportError("%s %s on %s failed: %s" % (
                        what, path, self.host, getattr(exc, "strerror", None) or exc)) from exc
                failure = exc
            if not delays:
                if isinstance(failure, TransportError):
                    raise failure
                self.close()
                raise TransportError("%s %s on %s failed: connection lost (%s)" % (
                    what, path, self.host, failure or type(failure).__name__)) from failure
            delay = delays.pop(0)
            log.warning("%s %s on %s failed (%s); reconnecting in %ss", what, path, self.host,
                        failure, delay)
            self.close()
            time.sleep(delay)

    # -- commands --------------------------------------------------------------------
    def run(self, argv: list[str], timeout: float = 60.0, check: bool = True,
            stdin: str | None = None, idempotent: bool = False) -> Completed:
        """Run ``argv`` on the head node: every word quoted, never a config-built string."""
        what = "command %s" % argv[0]
        if idempotent:
            done = self._do(what, "", lambda: self._exec(argv, timeout, stdin))
        else:
            channel = self._do(what, "(opening a channel)", self._session)  # nothing sent yet
            try:
                done = self._exec(argv, timeout, stdin, channel)
            except (CommandTimeout, CommandOutcomeUnknown):
                raise
            except (OSError, ValueError, *DROPPED) as exc:
                self.close()
                raise CommandOutcomeUnknown(
                    "%s on %s: the connection failed after it was sent (%s); it may or may "
                    "not have run" % (argv[0], self.host, exc or type(exc).__name__)) from exc
        if check and done.rc != 0:
            raise CommandError(argv, done.rc, done.stdout, done.stderr)
        return done

    def _exec(self, argv: list[str], timeout: float, stdin: str | None,
              channel: paramiko.Channel | None = None) -> Completed:
        channel = channel or self._session()
        channel.settimeout(timeout)
        channel.exec_command(shlex.join(argv))
        try:
            if stdin is not None:
                channel.sendall(stdin.encode("utf-8"))
            channel.shutdown_write()
            with channel.makefile("rb") as out_file, channel.makefile_stderr("rb") as err_file:
                out = out_file.read().decode("utf-8", "replace")
                err = err_file.read().decode("utf-8", "replace")
        except TimeoutError as exc:
            channel.close()
            raise CommandTimeout("%s on %s did not finish within %ss" % (
                argv[0], self.host, timeout)) from exc
        rc = channel.recv_exit_status()
        if rc == -1:  # closed without an exit status: the connection went away
            raise EOFError("no exit status from %s" % argv[0])
        return Completed(argv, rc, out, err)
