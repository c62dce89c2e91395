"""The spool's pass lock: one submitter pass at a time per spool, private to its owner."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from galaxy_hpc_runner.errors import HpcBatchError


class LockTimeout(HpcBatchError):
    """Another submitter pass holds the spool lock."""


@contextlib.contextmanager
def pass_lock(path: Path, timeout: float) -> Iterator[None]:
    """Hold the spool lock; LockTimeout if another pass keeps it past ``timeout``.

    The lock file lives in the private spool directory, is opened without following
    links and is readable and writable by its owner only, so nobody else can take it.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockTimeout("another submitter pass holds %s" % (
                        path)) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)
