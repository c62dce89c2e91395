"""How the submitting side reaches the HPC workspace: a small interface and the local one.

Paths given to a transport are HPC-side paths. Every write is atomic (temp
name, then rename) and every copy is checked by size, so a file that is
visible is complete.
"""

from __future__ import annotations

import abc
import contextlib
import os
import shutil
import tempfile

from galaxy_hpc_runner.errors import RemoteFileMissing, TransportError
from galaxy_hpc_runner.transport.runcmd import Completed, run_command
from hpc_worker import protocol as p


class Transport(abc.ABC):
    """File and command access to the HPC side."""

    @abc.abstractmethod
    def listdir(self, path: str) -> list[str]:
        """Visible names in ``path`` (empty when it does not exist)."""

    @abc.abstractmethod
    def exists(self, path: str) -> bool: ...

    @abc.abstractmethod
    def makedirs(self, path: str) -> None: ...

    @abc.abstractmethod
    def put(self, local: str, remote: str) -> None:
        """Copy a local file to ``remote`` atomically, verified by size."""

    @abc.abstractmethod
    def get(self, remote: str, local: str) -> None:
        """Copy ``remote`` to ``local`` atomically, verified by size."""

    @abc.abstractmethod
    def write_text(self, remote: str, text: str) -> None:
        """Atomically replace ``remote`` with ``text``."""

    @abc.abstractmethod
    def read_bytes(self, remote: str, limit: int | None = None) -> bytes:
        """The file's content; with ``limit``, its last ``limit`` bytes."""

    @abc.abstractmethod
    def rename(self, src: str, dst: str) -> bool:
        """Atomic rename; False when ``src`` no longer exists."""

    @abc.abstractmethod
    def remove(self, path: str) -> None:
        """Remove a file or a whole tree; no error when it is gone."""

    @abc.abstractmethod
    def run(self, argv: list[str], timeout: float = 60.0, check: bool = True,
            stdin: str | None = None) -> Completed:
        """Run a command where the scheduler's client tools are."""

    @abc.abstractmethod
    def link(self, src: str, dst: str) -> None:
        """Hard-link ``src`` to ``dst`` on the HPC side (shared inputs)."""

    @abc.abstractmethod
    def create_exclusive(self, remote: str, text: str) -> bool:
        """Create ``remote`` holding ``text`` only if nothing is there (O_EXCL); False if taken.

        The one primitive the HPC-side locks are built on: it works the same on a
        local file system and over SFTP.
        """

    def read_text(self, remote: str, limit: int | None = None) -> str:
        return self.read_bytes(remote, limit).decode("utf-8", "replace")

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op for most transports
        """Drop connections; the next call reopens them."""


class LocalTransport(Transport):
    """The HPC workspace is a local or shared file system path."""

    def listdir(self, path: str) -> list[str]:
        return p.listdir(path)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def makedirs(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    def put(self, local: str, remote: str) -> None:
        self._copy(local, remote)

    def get(self, remote: str, local: str) -> None:
        self._copy(remote, local)

    def write_text(self, remote: str, text: str) -> None:
        p.atomic_write(remote, text)

    def read_bytes(self, remote: str, limit: int | None = None) -> bytes:
        try:
            with open(remote, "rb") as handle:
                if limit is not None:
                    size = os.fstat(handle.fileno()).st_size
                    handle.seek(max(0, size - limit))
                return handle.read()
        except FileNotFoundError as exc:
            raise RemoteFileMissing("%s does not exist" % remote) from exc
        except OSError as exc:
            raise TransportError("cannot read %s: %s" % (remote, exc.strerror)) from exc

    def rename(self, src: str, dst: str) -> bool:
        return p.try_rename(src, dst)

    def create_exclusive(self, remote: str, text: str) -> bool:
        try:
            fd = os.open(remote, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            return False
        except OSError as exc:
            raise TransportError("cannot create %s: %s" % (remote, exc.strerror)) from exc
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        return True

    def remove(self, path: str) -> None:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def link(self, src: str, dst: str) -> None:
        try:
            if os.path.exists(dst):
                os.unlink(dst)
            os.link(src, dst)
        except OSError:  # another file system: a copy does as well
            self._copy(src, dst)

    def run(self, argv: list[str], timeout: float = 60.0, check: bool = True,
            stdin: str | None = None) -> Completed:
        return run_command(argv, timeout=timeout, check=check, stdin=stdin)

    @staticmethod
    def _copy(src: str, dst: str) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(dst) or ".")
        os.close(fd)
        try:
            shutil.copyfile(src, tmp)
            want, got = os.path.getsize(src), os.path.getsize(tmp)
            if want != got:
                raise TransportError("copy of %s is %d bytes, expected %d" % (src, got, want))
            os.chmod(tmp, 0o644)
            os.replace(tmp, dst)
        except OSError as exc:
            raise TransportError("cannot copy %s to %s: %s" % (src, dst, exc)) from exc
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
