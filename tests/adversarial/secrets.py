"""A private file the attacks try to leak, and the check that nothing leaked."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from tests.sitekit import Site

SECRET = "TOP-SECRET-CONTENT"


def make_secret(site: Site) -> Path:
    path = site.root / "private.txt"
    path.write_text(SECRET)
    path.chmod(0o600)
    return path


def nothing_leaked(site: Site) -> None:
    for path in site.root.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.name != "private.txt":
            assert SECRET not in path.read_text(errors="replace"), path


@contextlib.contextmanager
def flipping(paths: list[Path], secret: Path) -> Iterator[None]:
    """While the block runs, a thread flips every path between a plain file and a link to
    ``secret`` (each flip a rename, so a reader sees one or the other)."""
    stop = threading.Event()

    def flip() -> None:
        n = 0
        while not stop.is_set():
            for path in paths:
                tmp = path.with_name(".flip-%s" % path.name)
                if n % 2:
                    tmp.write_text("plain\n")
                else:
                    tmp.symlink_to(secret)
                os.replace(tmp, path)
            n += 1
            time.sleep(0.001)

    thread = threading.Thread(target=flip, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
