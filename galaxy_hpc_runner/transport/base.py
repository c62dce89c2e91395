"""How the submitting side reaches the HPC workspace: a small interface and the local one.

Paths given to a transport are HPC-side paths. The contract, checked by
``tests/test_transport_contract.py`` on the local and the ssh transport alike:

- every write is atomic (temp name, then rename) and every copy is checked by
  size, so a file that is visible is complete;
- HPC-side files are never followed through a symbolic link: ``get``,
  ``get_many`` and ``read_bytes`` of a link or of anything but a regular file
  raise :class:`UnsafeRemoteFile` naming the file; reads are bounded
  (``max_bytes``) and never load more than they return;
- copies keep the source's permission bits, masked by this process's umask
  (never a forced 0644);
- ``run`` runs a command once unless the caller says it is idempotent; a
  command whose outcome is unknown raises :class:`CommandOutcomeUnknown`;
- every failure is a :class:`~galaxy_hpc_runner.errors.TransportError` (or a
  scheduler error from ``run``) naming the operation and the path.
"""

from __future__ import annotations

import abc
import contextlib
import errno
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Sequence

from galaxy_hpc_runner.errors import RemoteFileMissing, TransportError
from galaxy_hpc_runner.transport.runcmd import Completed, run_command
from hpc_worker import protocol as p

READ_CAP = 16 << 20  # read_bytes refuses a larger file unless the caller allows more
TMP_PREFIX = ".tmp-"  # every temp name starts so; listdir never shows them


class UnsafeRemoteFile(TransportError):
    """An HPC-side file is a symbolic link, or not a regular file, or too big to read."""


class CommandOutcomeUnknown(TransportError):
    """The connection failed after a command was sent: it may or may not have run."""


class ManyTransferError(TransportError):
    """Some files of a ``put_many``/``get_many`` did not arrive; the others did.

    ``failed`` maps the destination path of each missing file to why.
    """

    def __init__(self, what: str, failed: dict[str, str]) -> None:
        self.failed = failed
        first = sorted(failed.items())[:3]
        super().__init__("%s: %d file(s) failed: %s%s" % (
            what, len(failed), "; ".join("%s: %s" % item for item in first),
            " ..." if len(failed) > 3 else ""))


def masked_mode(mode: int) -> int:
    """The permission bits of ``mode`` as a new file of this process gets them."""
    return p.umask_mode(stat.S_IMODE(mode))


def open_regular(path: str, what: str = "read", missing: type[TransportError] = RemoteFileMissing
                 ) -> int:
    """Open ``path`` read-only without following a link or blocking; a regular file only."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise missing("cannot %s %s: it does not exist" % (what, path)) from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeRemoteFile("refusing to %s %s: it is a symbolic link" % (what, path)
                                   ) from exc
        raise TransportError("cannot %s %s: %s" % (what, path, exc.strerror)) from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafeRemoteFile("refusing to %s %s: it is not a regular file" % (what, path))
    return fd


def tmp_name(path: str) -> str:
    """A unique, recognisable temp name beside ``path`` (same directory, same file system)."""
    head, tail = os.path.split(path)
    return os.path.join(head, "%s%s-%s" % (TMP_PREFIX, tail, secrets.token_hex(4)))


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
        """Copy a local regular file to ``remote`` atomically, verified by size, keeping
        its mode (masked by the umask). The local file is opened without following a link."""

    @abc.abstractmethod
    def get(self, remote: str, local: str) -> None:
        """Copy the regular file ``remote`` to ``local`` atomically, verified by size,
        keeping its mode (masked by the umask); UnsafeRemoteFile for a link or a non-file."""

    def put_many(self, pairs: Sequence[tuple[str, str]]) -> None:
        """``put`` for many (local, remote) pairs, creating missing remote directories.

        Every file that arrives is complete and in place; ManyTransferError names
        those that did not (the others are in place all the same). A plain
        TransportError means the HPC side could not be reached at all.
        """
        def one(local: str, remote: str) -> None:
            self.makedirs(os.path.dirname(remote))
            self.put(local, remote)

        self._each("upload", [(remote, (local, remote)) for local, remote in pairs], one)

    def get_many(self, pairs: Sequence[tuple[str, str]]) -> None:
        """``get`` for many (remote, local) pairs; errors as in :meth:`put_many`
        (``failed`` is keyed by the remote path)."""
        self._each("download", [(remote, (remote, local)) for remote, local in pairs], self.get)

    def _each(self, what: str, calls: Sequence[tuple[str, tuple[str, str]]],
              op: Callable[[str, str], None]) -> None:
        """``op(*args)`` for each (remote, args); failures collected by remote path, unless
        the HPC side itself became unreachable (then the TransportError is raised)."""
        failed: dict[str, str] = {}
        for remote, args in calls:
            try:
                op(*args)
            except RemoteFileMissing as exc:
                failed[remote] = str(exc)
            except TransportError as exc:
                if not self._reachable():
                    raise
                failed[remote] = str(exc)
        if failed:
            raise ManyTransferError(what, failed)

    def _reachable(self) -> bool:
        return True

    @abc.abstractmethod
    def write_text(self, remote: str, text: str) -> None:
        """Atomically replace ``remote`` with ``text``."""

    @abc.abstractmethod
    def read_bytes(self, remote: str, limit: int | None = None,
                   max_bytes: int = READ_CAP) -> bytes:
        """The content of the regular file ``remote`` (never through a link).

        With ``limit``, only its last ``limit`` bytes. Without, a file over
        ``max_bytes`` is refused (UnsafeRemoteFile naming its size): nothing
        the job can grow is ever read whole.
        """

    @abc.abstractmethod
    def rename(self, src: str, dst: str) -> bool:
        """Atomic rename; False when ``src`` no longer exists."""

    @abc.abstractmethod
    def remove(self, path: str) -> None:
        """Remove a file or a whole tree (never following a link); no error when gone."""

    @abc.abstractmethod
    def run(self, argv: list[str], timeout: float = 60.0, check: bool = True,
            stdin: str | None = None, idempotent: bool = False) -> Completed:
        """Run a command where the scheduler's client tools are.

        Only an ``idempotent`` command (a query) is run again after a dropped
        connection; any other raises CommandOutcomeUnknown when the connection
        failed after the command was sent.
        """

    @abc.abstractmethod
    def link(self, src: str, dst: str) -> None:
        """Hard-link ``src`` to ``dst`` on the HPC side (shared inputs)."""

    @abc.abstractmethod
    def create_exclusive(self, remote: str, text: str) -> bool:
        """Create ``remote`` holding ``text`` only if nothing is there; False if taken.

        The one primitive the HPC-side locks are built on. The file appears with
        its whole content (written to a unique temp name, then hard-linked), and
        a create retried after a dropped connection that finds its own file
        reports True, not "taken".
        """

    def read_text(self, remote: str, limit: int | None = None,
                  max_bytes: int = READ_CAP) -> str:
        return self.read_bytes(remote, limit, max_bytes).decode("utf-8", "replace")

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op for most transports
        """Drop connections; the next call reopens them."""


def _tail(fd: int, limit: int | None, max_bytes: int, path: str) -> bytes:
    size = os.fstat(fd).st_size
    if limit is None and size > max_bytes:
        raise UnsafeRemoteFile("refusing to read %s: %d bytes, over the %d-byte cap" % (
            path, size, max_bytes))
    want = size if limit is None else min(size, max(0, limit))
    os.lseek(fd, size - want, os.SEEK_SET)
    chunks, left = [], want
    while left > 0:
        block = os.read(fd, min(left, 1 << 20))
        if not block:
            break
        chunks.append(block)
        left -= len(block)
    return b"".join(chunks)


def _ignore_missing(func: Callable[[str], object], path: str,
                    exc_info: tuple[type, BaseException, object]) -> None:
    """rmtree's error hook: a file already gone is no error."""
    if not isinstance(exc_info[1], FileNotFoundError):
        raise exc_info[1]


def _open_up(top: str) -> None:
    """Make every directory of a tree writable by its owner (a job may have locked one),
    never following a link."""
    with contextlib.suppress(OSError):
        os.chmod(top, 0o700)  # the caller made sure it is a directory, not a link
    for root, dirs, _ in os.walk(top):  # top-down: a child is opened up before it is listed
        for name in dirs:
            child = os.path.join(root, name)
            if not os.path.islink(child):
                with contextlib.suppress(OSError):
                    os.chmod(child, 0o700)


class LocalTransport(Transport):
    """The HPC workspace is a local or shared file system path."""

    def listdir(self, path: str) -> list[str]:
        return p.listdir(path)

    def exists(self, path: str) -> bool:
        return os.path.lexists(path)

    def makedirs(self, path: str) -> None:
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            raise TransportError("cannot make directory %s: %s" % (path, exc.strerror)) from exc

    def put(self, local: str, remote: str) -> None:
        self._copy(local, remote, "upload", TransportError)

    def get(self, remote: str, local: str) -> None:
        self._copy(remote, local, "download")

    def write_text(self, remote: str, text: str) -> None:
        try:
            p.atomic_write(remote, text)
        except OSError as exc:
            raise TransportError("cannot write %s: %s" % (remote, exc.strerror)) from exc

    def read_bytes(self, remote: str, limit: int | None = None,
                   max_bytes: int = READ_CAP) -> bytes:
        fd = open_regular(remote)
        try:
            return _tail(fd, limit, max_bytes, remote)
        except OSError as exc:
            raise TransportError("cannot read %s: %s" % (remote, exc.strerror)) from exc
        finally:
            os.close(fd)

    def rename(self, src: str, dst: str) -> bool:
        try:
            return p.try_rename(src, dst)
        except OSError as exc:
            raise TransportError("cannot rename %s to %s: %s" % (src, dst, exc.strerror)
                                 ) from exc

    def create_exclusive(self, remote: str, text: str) -> bool:
        tmp = tmp_name(remote)
        try:
            p.atomic_write(tmp, text, mode=0o600)
            os.link(tmp, remote)  # link(2) never replaces: EEXIST when taken
        except FileExistsError:
            return False
        except OSError as exc:
            raise TransportError("cannot create %s: %s" % (remote, exc.strerror)) from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return True

    def remove(self, path: str) -> None:
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                try:
                    shutil.rmtree(path, onerror=_ignore_missing)
                except PermissionError:
                    _open_up(path)
                    shutil.rmtree(path, onerror=_ignore_missing)
            else:
                os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise TransportError("cannot remove %s: %s" % (path, exc.strerror)) from exc

    def link(self, src: str, dst: str) -> None:
        try:
            if os.path.lexists(dst):
                os.unlink(dst)
            os.link(src, dst)
        except OSError:  # another file system: a copy does as well
            self._copy(src, dst, "link")

    def run(self, argv: list[str], timeout: float = 60.0, check: bool = True,
            stdin: str | None = None, idempotent: bool = False) -> Completed:
        return run_command(argv, timeout=timeout, check=check, stdin=stdin)

    @staticmethod
    def _copy(src: str, dst: str, what: str,
              missing: type[TransportError] = RemoteFileMissing) -> None:
        """Copy from a no-follow descriptor of ``src`` to a temp file beside ``dst``."""
        fd = open_regular(src, what, missing)
        tmp = tmp_name(dst)
        try:
            with os.fdopen(fd, "rb") as source, \
                    open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                                 0o600), "wb") as target:
                shutil.copyfileobj(source, target, 1 << 20)
                target.flush()
                want, got = os.fstat(source.fileno()).st_size, os.fstat(target.fileno()).st_size
                if want != got:
                    raise TransportError("%s of %s: %d bytes arrived, expected %d" % (
                        what, src, got, want))
                os.fchmod(target.fileno(), masked_mode(os.fstat(source.fileno()).st_mode))
            os.replace(tmp, dst)
        except OSError as exc:
            raise TransportError("cannot %s %s to %s: %s" % (what, src, dst, exc.strerror or exc)
                                 ) from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
