"""The pilot's ordered view of ``W/queue/ready``.

The directory is listed again only when its modification time changed (a cheap
``stat`` per loop; a full listing at least every ``rescan_every`` seconds as the
safety net for file systems with coarse or cached times), and while the view still
holds work, at most every ``min_rescan`` seconds: a drain costs one ``stat`` and one
``rename`` per claim, not a listing. Keys are taken round-robin over submitting
servers (``protocol.server_of``), oldest marker first within a server, so one
server's burst never starves another server's single job. A key another pilot took
first is simply dropped when its rename fails.

Standard library only, Python 3.8.
"""

from __future__ import annotations

import collections
import os
from typing import Deque, Dict, List, Optional, Set, Tuple

from . import protocol as p

Entry = Tuple[int, str]  # (marker mtime in ns, key)
FRESH = 1.0  # seconds: a directory time this recent may hide a change made in the same tick


class ReadyQueue:
    def __init__(self, path: str, min_rescan: float = 0.5, rescan_every: float = 10.0) -> None:
        self.path = path
        self.min_rescan = min_rescan
        self.rescan_every = rescan_every
        self.queues: Dict[str, Deque[Entry]] = {}
        self.servers: Deque[str] = collections.deque()
        self.known: Set[str] = set()
        self.skip: Set[str] = set()  # keys this pilot will not take (they do not fit)
        self.dir_mtime = -1
        self.last_scan = float("-inf")
        self.scans = 0

    def __len__(self) -> int:
        return len(self.known)

    def refresh(self, now: float) -> bool:
        """List the directory again if it changed (see the module docstring)."""
        try:
            mtime = os.stat(self.path).st_mtime_ns
        except FileNotFoundError:
            return False
        since = now - self.last_scan
        changed = mtime != self.dir_mtime
        if not (changed and (not self.known or since >= self.min_rescan)) \
                and since < self.rescan_every:
            return False
        # a change within the file system's timestamp granularity of this listing would
        # leave the time as it is: while the time is that fresh, look again next time
        self.dir_mtime = -1 if now - mtime / 1e9 < FRESH else mtime
        self.last_scan = now
        self._scan()
        return True

    def _scan(self) -> None:
        self.scans += 1
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return
        present = set(names)
        self.skip &= present
        fresh: Dict[str, List[Entry]] = {}
        for name in names:
            if name in self.known or name in self.skip or not p.valid_key(name):
                continue
            try:
                mtime = os.stat(os.path.join(self.path, name)).st_mtime_ns
            except FileNotFoundError:
                continue
            fresh.setdefault(p.server_of(name), []).append((mtime, name))
            self.known.add(name)
        for server, entries in fresh.items():
            self._merge(server, sorted(entries))

    def _merge(self, server: str, entries: List[Entry]) -> None:
        queue = self.queues.get(server)
        if queue is None:
            self.queues[server] = collections.deque(entries)
            self.servers.append(server)
        elif not queue or queue[-1] <= entries[0]:
            queue.extend(entries)  # the usual case: newer than all we hold
        else:
            self.queues[server] = collections.deque(sorted(list(queue) + entries))

    def pop(self) -> Optional[str]:
        """The next key to try, round-robin over servers; None when the view is empty."""
        while self.servers:
            server = self.servers[0]
            queue = self.queues[server]
            if not queue:
                self.servers.popleft()
                del self.queues[server]
                continue
            _, key = queue.popleft()
            self.servers.rotate(-1)
            self.known.discard(key)
            return key
        return None

    def never(self, key: str) -> None:
        """This pilot will not take ``key`` (it does not fit): do not offer it again."""
        self.skip.add(key)
