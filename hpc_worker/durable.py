"""Durability in batches: what was written without ``fsync`` made durable together.

Both sides write many small files and make them durable together instead of one
``fsync`` each: the submitter once per chunk (:func:`sync_paths`, one ``syncfs`` per
file system), the pilot once per group of jobs it reports (:func:`sync_files`).

Standard library only, Python 3.8.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Dict, List, Set


def sync_paths(paths: "List[str]") -> None:
    """Make every write so far on the file systems holding ``paths`` durable: one
    ``syncfs`` per file system (Linux; ``os.sync`` elsewhere), the batch form of the
    per-file ``fsync`` of ``protocol.atomic_write`` (file data and directory entries alike)."""
    seen: Set[int] = set()
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            dev = os.fstat(fd).st_dev
            if dev not in seen:
                seen.add(dev)
                if not _syncfs(fd):
                    os.sync()
                    return
        finally:
            os.close(fd)


def _syncfs(fd: int) -> bool:
    """syncfs(2) through the C library; False where there is none."""
    global _LIBC
    if _LIBC is None:
        try:
            import ctypes
            import ctypes.util

            lib = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
            _LIBC = lib if hasattr(lib, "syncfs") else False
        except (OSError, AttributeError, ImportError):
            _LIBC = False
    if _LIBC is False:
        return False
    return bool(_LIBC.syncfs(fd) == 0)


_LIBC: Any = None


def sync_files(paths: List[str],
               between: Callable[[], None] = lambda: None) -> Dict[str, OSError]:
    """Make the files at ``paths`` (just written by this process) durable, together: the
    write-back of all of them started first (``posix_fadvise(DONTNEED)`` starts it where
    there is one), then one ``fsync`` each. On a journalled file system the blocks of every
    file are then allocated in one transaction and the first ``fsync`` commits them all,
    where an ``fsync`` right after each write commits once per file. ``between`` is called
    after each ``fsync`` (the pilot starts a job whose slot freed meanwhile). Returns the
    errors, by path (opened without following links)."""
    errors: Dict[str, OSError] = {}
    fds: List["tuple[str, int]"] = []
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    start = getattr(os, "posix_fadvise", None)
    try:
        for path in paths:
            try:
                fds.append((path, os.open(path, flags)))
            except OSError as exc:
                errors[path] = exc
                continue
            if start is not None:
                with contextlib.suppress(OSError):  # a hint only: the fsync below decides
                    start(fds[-1][1], 0, 0, os.POSIX_FADV_DONTNEED)
        for path, fd in fds:
            try:
                os.fsync(fd)
            except OSError as exc:
                errors[path] = exc
            between()
    finally:
        for _, fd in fds:
            os.close(fd)
    return errors
