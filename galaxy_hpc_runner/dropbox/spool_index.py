"""What a submitter pass keeps in memory of the spool: a compact entry per active job.

A pass needs of a waiting or running job only its state, its pilot, whether it is being
withdrawn and when it was received; everything else (the description, the validated
paths, the script) is read from its record on disk when the pass acts on the job. So
memory follows the number of jobs with a few hundred bytes each, not their records.

The index also keeps, updated on every change rather than counted over every entry,
the names in each state, the count per state and the oldest waiting job: what the
pass and ``metrics.prom`` ask of a quiet spool costs nothing per job.
"""

from __future__ import annotations

import datetime
import os
import time
from typing import NamedTuple

from hpc_worker.states import JobState

StatKey = tuple[int, int, int, int]  # inode, size, mtime ns, ctime ns
WAITING = (JobState.RECEIVED, JobState.STAGED)


class Entry(NamedTuple):
    """One active job as a pass sees it (``Spool.get`` reads the whole record)."""

    state: JobState
    pilot: str
    withdrawn: str
    received: float  # Unix time the job was received (0.0: unknown)


def stat_key(info: os.stat_result) -> StatKey:
    return (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def epoch(iso: str | None) -> float:
    """Unix time of an ISO 8601 time as the spool writes it; 0.0 when there is none."""
    if not iso:
        return 0.0
    try:
        return datetime.datetime.fromisoformat(iso).timestamp()
    except (TypeError, ValueError):
        return 0.0


class JobIndex:
    """Entries by name with the stat key of the file each was read from (or written to).

    ``sure`` is False for an entry whose file changed within the timestamp tick of the
    look: it is read again next time (a rewrite in the same tick would not show)."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[StatKey, bool, Entry]] = {}
        self.by_state: dict[JobState, set[str]] = {s: set() for s in JobState}
        self._oldest: float | None = 0.0  # received time of the oldest waiting job; None: unknown

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, name: str) -> Entry | None:
        found = self.entries.get(name)
        return found[2] if found is not None else None

    def known(self, name: str, key: StatKey) -> bool:
        """The entry of ``name`` was taken from a file with this key, surely."""
        found = self.entries.get(name)
        return found is not None and found[1] and found[0] == key

    def put(self, name: str, key: StatKey, sure: bool, entry: Entry) -> None:
        self.drop(name)
        self.entries[name] = (key, sure, entry)
        self.by_state[entry.state].add(name)
        if entry.state in WAITING and self._oldest is not None and entry.received:
            self._oldest = entry.received if not self._oldest else min(self._oldest,
                                                                         entry.received)

    def drop(self, name: str) -> None:
        found = self.entries.pop(name, None)
        if found is None:
            return
        entry = found[2]
        self.by_state[entry.state].discard(name)
        if entry.state in WAITING and entry.received and entry.received == self._oldest:
            self._oldest = None  # counted again when asked

    def names(self, *states: JobState) -> set[str]:
        """A copy of the names in ``states``."""
        out: set[str] = set()
        for state in states:
            out |= self.by_state[state]
        return out

    def count(self, state: JobState) -> int:
        return len(self.by_state[state])

    def oldest_waiting(self) -> float:
        """Received time of the oldest job not yet running (0.0: none waits)."""
        if self._oldest is None:
            self._oldest = min((self.entries[n][2].received for s in WAITING
                                for n in self.by_state[s] if self.entries[n][2].received),
                               default=0.0)
        return self._oldest


class DirView:
    """Whether a directory is as this process last knew it (its inode and time).

    A look is trusted for at most ``rescan_every`` seconds. Outside the pass lock a look
    at a directory changed within ``fresh`` seconds is not trusted (another change in
    the same timestamp tick would not move its time). Under the lock only this process
    writes, so its own changes keep what it knows (:meth:`own_change`)."""

    def __init__(self, path: str, fresh: float, rescan_every: float) -> None:
        self.path = path
        self.fresh, self.rescan_every = fresh, rescan_every
        self._key: tuple[int, int] | None = None
        self._since = 0.0
        self._own = False  # the lock holder changed it since the last look

    def key(self) -> tuple[int, int]:
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            return (0, 0)
        return (info.st_ino, info.st_mtime_ns)

    def current(self, key: tuple[int, int], locked: bool = False) -> bool:
        if key != self._key and self._own and locked and self._key is not None:
            self._key = key  # the lock holder's own changes moved it: still known
        self._own = False
        return key == self._key and time.monotonic() - self._since < self.rescan_every

    def looked(self, key: tuple[int, int], locked: bool) -> None:
        """A full look was taken at ``key``."""
        recent = time.time() - key[1] / 1e9 < self.fresh
        self._key = None if recent and not locked else key
        self._since = time.monotonic()
        self._own = False

    def own_change(self, locked: bool) -> None:
        """This process changed the directory: still known if it was known, under the lock
        (no ``stat`` now: the next look takes the new time as this process's)."""
        if not locked:
            self._key = None
        elif self._key is not None:
            self._own = True

    def forget(self) -> None:
        self._key = None
