"""The spool's event log: one JSON line per transition, behind ``status``, ``show`` and ``logs``.

``SPOOL/events.jsonl`` and one older generation, ``events.jsonl.1`` (:meth:`EventLog.rotate`).
While the pass lock is held only its holder appends, through a descriptor kept open for the
pass (one ``open`` a pass, not one a line); outside the lock each line opens the file anew.
A line is one ``write`` of the whole line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hpc_worker import protocol as p

OLDER = ".1"  # the suffix of the older generation


class EventLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None  # open while the pass lock is held

    def append(self, entry: dict[str, Any], locked: bool) -> None:
        if not locked:
            p.append_jsonl(str(self.path), entry)
            return
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                               0o644)
        os.write(self._fd, p.jsonl_line(entry))

    def close(self) -> None:
        """At the end of a pass (the lock is given up)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def entries(self) -> list[dict[str, Any]]:
        """Every line of both generations, oldest first."""
        return p.read_jsonl(str(self.path) + OLDER) + p.read_jsonl(str(self.path))

    def rotate(self, max_bytes: int) -> None:
        """Past ``max_bytes`` the log becomes the older generation (the previous one goes).
        Under the pass lock, so nobody appends meanwhile."""
        if self.path.exists() and self.path.stat().st_size > max_bytes:
            self.close()
            os.replace(self.path, str(self.path) + OLDER)
