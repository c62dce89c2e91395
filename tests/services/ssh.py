"""A private OpenSSH server on 127.0.0.1 for paramiko-based tests.

Host and client keys (ed25519), authorized_keys and sshd_config live in a
private base directory; ``sshd -D -e -f CFG`` runs as a child process.  The
port and the keys survive :meth:`SshServer.stop` / :meth:`SshServer.start`, so
tests can simulate an outage.  Variables passed as ``env`` are put into every
login session with ``SetEnv`` (a login shell does not inherit our environment).
"""

from __future__ import annotations

import getpass
import logging
import socket
from collections.abc import Mapping
from pathlib import Path

from ._proc import Daemon, Service, free_port, run, sbin, tail, wait_for

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
PRIVSEP_DIR = Path("/run/sshd")


def _setenv_value(name: str, value: str) -> str:
    if any(c in name for c in " =\"'\n") or any(c in value for c in '"\n'):
        raise ValueError(f"cannot pass {name}={value!r} through sshd SetEnv")
    return f'"{name}={value}"'


class SshServer(Service):
    """``sshd -D -e`` on 127.0.0.1:``port`` accepting the generated client key."""

    def __init__(
        self,
        base_dir: Path | str,
        port: int | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.base_dir = Path(base_dir).resolve()
        self.host = HOST
        self.port = port or free_port(HOST)
        self.user = getpass.getuser()
        self.login_env = dict(env or {})
        self._sshd = Daemon(
            "sshd",
            [sbin("sshd"), "-D", "-e", "-f", str(self.config_path)],
            self.base_dir / "sshd.log",
        )

    # -- files -----------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.base_dir / "sshd_config"

    @property
    def host_key_path(self) -> Path:
        return self.base_dir / "hostkey_ed25519"

    @property
    def client_key_path(self) -> Path:
        """Private key (ed25519, no passphrase) that the server accepts."""
        return self.base_dir / "client_ed25519"

    @property
    def known_hosts_path(self) -> Path:
        """A known_hosts file holding the host key for ``[127.0.0.1]:PORT``."""
        return self.base_dir / "known_hosts"

    @property
    def host_key_public(self) -> str:
        """The host public key line, e.g. ``ssh-ed25519 AAAA...``."""
        text = self.host_key_path.with_suffix(".pub").read_text().split()
        return f"{text[0]} {text[1]}"

    @property
    def log_path(self) -> Path:
        return self._sshd.log_path

    def _keygen(self, path: Path, comment: str) -> None:
        if not path.exists():
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])

    def _sshd_config(self) -> str:
        lines = [
            f"Port {self.port}",
            f"ListenAddress {HOST}",
            f"HostKey {self.host_key_path}",
            f"PidFile {self.base_dir / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.base_dir / 'authorized_keys'}",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "Subsystem sftp internal-sftp",
        ]
        if self.login_env:
            pairs = " ".join(_setenv_value(k, v) for k, v in self.login_env.items())
            lines.append(f"SetEnv {pairs}")
        return "\n".join(lines) + "\n"

    def _prepare(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.base_dir.chmod(0o755)  # the login user must read authorized_keys
        PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        self._keygen(self.host_key_path, "test-host")
        self._keygen(self.client_key_path, "test-client")
        client_pub = self.client_key_path.with_suffix(".pub").read_text()
        (self.base_dir / "authorized_keys").write_text(client_pub)
        self.known_hosts_path.write_text(f"[{HOST}]:{self.port} {self.host_key_public}\n")
        self.config_path.write_text(self._sshd_config())
        run([sbin("sshd"), "-t", "-f", str(self.config_path)])

    # -- lifecycle -----------------------------------------------------------------

    def start(self, timeout: float = 15.0) -> None:
        """Start sshd (same port and keys as before) and wait for its banner."""
        self._prepare()
        self._launch(self._sshd)

        def ready() -> bool:
            self._sshd.check_alive()
            return self._banner() is not None

        try:
            wait_for(ready, timeout, f"sshd banner on {HOST}:{self.port}", interval=0.05)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{tail(self.log_path)}") from exc
        log.info("sshd up on %s:%d", HOST, self.port)

    def _banner(self) -> bytes | None:
        try:
            with socket.create_connection((HOST, self.port), timeout=2) as sock:
                data = sock.recv(256)
        except OSError:
            return None
        return data if data.startswith(b"SSH-") else None

    def stop(self) -> None:
        """Stop sshd and end the sessions it serves (so an outage is an outage)."""
        self._sshd.stop(kill_children=True)
        super().stop()
