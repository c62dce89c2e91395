"""The pilot's one way to wait: until a timeout, a child's exit or a signal.

Standard library only, Python 3.8.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
from typing import Any, Callable, Dict

Handler = Callable[[int, Any], None]


class Waker:
    def __init__(self) -> None:
        self._r, self._w = os.pipe()

    def install(self, handlers: Dict[int, Handler]) -> None:
        """Route every signal (SIGCHLD too) through the wake-up pipe; ``handlers`` run as
        Python signal handlers."""
        os.set_blocking(self._w, False)
        os.set_blocking(self._r, False)
        signal.set_wakeup_fd(self._w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)

    def sleep(self, seconds: float) -> None:
        try:
            ready, _, _ = select.select([self._r], [], [], max(0.0, seconds))
        except InterruptedError:
            return
        if ready:
            with contextlib.suppress(BlockingIOError):
                os.read(self._r, 4096)
