"""File operations on untrusted paths: open once, never follow a link, act on the descriptor.

A path that a description names, or that a job wrote, is checked and used
through one descriptor. Directories are walked from a trusted root one
component at a time with ``O_NOFOLLOW`` (``openat``-style, ``dir_fd=``), so the
object opened is the object checked: a symbolic link swapped in at any
instant makes the open fail instead of reaching elsewhere.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

from galaxy_hpc_runner.errors import JobError, TransportError
from hpc_worker import protocol as p

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _NOFOLLOW | _CLOEXEC
FILE_FLAGS = os.O_RDONLY | _NOFOLLOW | _NONBLOCK | _CLOEXEC
CHUNK = 1 << 20
_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symbolic link"),
          (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


class UnsafeFile(JobError):
    """A path that is a link, not a regular file, too large, or outside its root."""


def kind(mode: int) -> str:
    """``a FIFO``, ``a directory``, ... for an ``st_mode``."""
    for test, name in _KINDS:
        if test(mode):
            return name
    return "a regular file" if stat.S_ISREG(mode) else "a special file"


def _unsafe(path: str, exc: OSError) -> Exception:
    """The error to raise for a failed open: FileNotFoundError stays what it is."""
    if isinstance(exc, FileNotFoundError):
        return exc
    if exc.errno in (getattr(os, "ELOOP", 40), getattr(os, "ENOTDIR", 20),
                     getattr(os, "EMLINK", 31)):
        return UnsafeFile("%s is reached through a symbolic link or a non-directory; "
                          "links are not followed" % path)
    return UnsafeFile("%s cannot be opened: %s" % (path, exc.strerror))


def open_file_at(dir_fd: int | None, name: str, shown: str) -> int:
    """A regular file opened without following a link or blocking on a FIFO.

    FileNotFoundError when nothing is there; UnsafeFile for anything else wrong.
    """
    try:
        fd = os.open(name, FILE_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        raise _unsafe(shown, exc) from exc
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise UnsafeFile("%s is %s, not a regular file" % (shown, kind(mode)))
    return fd


def read_at(dir_fd: int | None, name: str, limit: int, shown: str = "",
            tail: bool = False) -> bytes:
    """A regular file's bytes, at most ``limit`` (``tail``: its last ``limit`` bytes)."""
    fd = open_file_at(dir_fd, name, shown or name)
    with os.fdopen(fd, "rb") as handle:
        size = os.fstat(fd).st_size
        if size > limit and not tail:
            raise UnsafeFile("%s is %d bytes, more than the %d allowed" % (
                shown or name, size, limit))
        if tail and size > limit:
            handle.seek(size - limit)
        data = handle.read(limit + 1)
    if len(data) > limit:
        if not tail:
            raise UnsafeFile("%s grew past the %d bytes allowed" % (shown or name, limit))
        data = data[-limit:]
    return data


def _root_of(path: str, roots: Sequence[Path]) -> tuple[Path, list[str]]:
    """The deepest root holding ``path``, and the components below it."""
    if not os.path.isabs(path):
        raise UnsafeFile("%s is not an absolute path" % path)
    parts = Path(path).parts
    if ".." in parts or "." in parts:
        raise UnsafeFile("%s contains '.' or '..'" % path)
    for root in sorted(roots, key=lambda r: len(r.parts), reverse=True):
        if Path(path) == root or Path(path).is_relative_to(root):
            return root, list(parts[len(root.parts):])
    raise UnsafeFile("%s is outside the allowed roots (%s)" % (
        path, " ".join(map(str, roots))))


def open_root(path: os.PathLike[str] | str) -> int:
    """A directory the site configured (trusted: it may be reached through links)."""
    try:
        return os.open(str(path), DIR_FLAGS & ~_NOFOLLOW)
    except OSError as exc:
        raise _unsafe(str(path), exc) from exc


def open_dir_under(path: str, roots: Sequence[Path]) -> int:
    """A directory under one of ``roots``, walked from the root without following links."""
    root, rest = _root_of(path, roots)
    fd = open_root(root)
    for part in rest:
        try:
            nxt = os.open(part, DIR_FLAGS, dir_fd=fd)
        except OSError as exc:
            raise _unsafe(path, exc) from exc
        finally:
            os.close(fd)
        fd = nxt
    return fd


def open_under(path: str, roots: Sequence[Path]) -> int:
    """A regular file under one of ``roots``, reached without following any link."""
    parent = open_dir_under(os.path.dirname(path), roots)
    try:
        return open_file_at(parent, os.path.basename(path), path)
    finally:
        os.close(parent)


@contextlib.contextmanager
def opened(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        os.close(fd)


def fd_path(fd: int) -> str | None:
    """A path that names the open object itself (``/proc/self/fd/N``), where the OS has one.

    Opening it reaches the object behind the descriptor, not whatever a path
    names now; a directory's fd path followed by ``/name`` resolves in that directory.
    """
    path = "/proc/self/fd/%d" % fd
    return path if os.path.exists(path) else None


def copy_fd(src: int, dst: int) -> int:
    """Copy from one descriptor to another; the number of bytes copied."""
    total = 0
    os.lseek(src, 0, os.SEEK_SET)
    while True:
        chunk = os.read(src, CHUNK)
        if not chunk:
            return total
        view = memoryview(chunk)
        while view:
            written = os.write(dst, view)
            view = view[written:]
        total += len(chunk)


def create_at(dir_fd: int, name: str, mode: int) -> int:
    """A new file in the directory ``dir_fd``; never opens something already there."""
    return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC,
                   mode & 0o777, dir_fd=dir_fd)


def temp_name(base: str) -> str:
    """The one recognisable name of our temp files beside a target: ``.BASE.hpc-batch-tmp-*``."""
    return ".%s.hpc-batch-tmp-%d-%s" % (base, os.getpid(), secrets.token_hex(4))


def unlink_at(dir_fd: int, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dir_fd)


def lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def utf8_path(path: str, what: str) -> str:
    """``path`` unchanged when it is valid UTF-8 (a file name may hold any bytes)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise UnsafeFile("%s: the real path %r is not valid UTF-8; rename the file"
                         % (what, path)) from None
    return path


def snapshot(fd: int, directory: str) -> str:
    """A private file with the content of the open input: a hard link to the very inode
    (no copy) where the file system allows, else a copy through the descriptor."""
    dest = os.path.join(directory, secrets.token_hex(8))
    source = fd_path(fd)
    if source is not None:
        try:
            os.link(source, dest, follow_symlinks=True)
            if os.stat(dest).st_ino == os.fstat(fd).st_ino:
                return dest
            os.unlink(dest)
        except OSError:
            pass
    copy_to_path(fd, dest)
    return dest


def copy_to_path(fd: int, path: str) -> None:
    """Copy the open file to ``path`` (a temp in its directory, renamed): mode from the source."""
    parent, name = os.path.split(path)
    with opened(open_root(parent)) as dir_fd:
        tmp = temp_name(name)
        try:
            with opened(create_at(dir_fd, tmp, os.fstat(fd).st_mode)) as out:
                if copy_fd(fd, out) != os.fstat(fd).st_size:
                    raise TransportError("%s changed while it was copied" % path)
            os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except OSError as exc:
            raise TransportError("cannot copy an input to %s: %s" % (path, exc)) from exc
        finally:
            unlink_at(dir_fd, tmp)


def link_or_create(target: str, marker: str) -> None:
    """``marker`` as a hard link to ``target``, or an empty file where the file system
    has no hard links; one already there (published before a crash) is kept."""
    try:
        os.link(target, marker, follow_symlinks=False)
        return
    except FileExistsError:
        return
    except OSError as exc:
        if exc.errno not in p.NO_LINKS:
            raise
    os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644))
