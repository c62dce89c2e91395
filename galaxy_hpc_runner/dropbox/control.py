"""Maintenance switches an admin sets with ``hpc-batch pause|drain|resume``.

One flag file, ``SPOOL/control.json``, written atomically; no file means running.

- ``paused``: the submitter stages nothing new and submits no pilot; jobs already on the
  HPC side run on, their results are collected, dropped descriptions are received
  (and wait as ``received``).
- ``draining``: paused, and pilots that hold no work are let go: queued (pending) pilots
  are cancelled and ``min_pilots`` keeps none warm, so the site empties for maintenance.

The submitter reads :func:`current` once per pass; ``Control.stage_allowed``,
``submit_allowed`` and ``cancel_idle_pilots`` say what the pass may do.
"""

from __future__ import annotations

import contextlib
import enum
import getpass
import os
from dataclasses import dataclass
from pathlib import Path

from hpc_worker import protocol as p
from hpc_worker.states import HeartbeatState

CONTROL_FILE = "control.json"


class Mode(str, enum.Enum):
    RUNNING = HeartbeatState.RUNNING.value  # the same words as a pilot's own states
    PAUSED = "paused"
    DRAINING = HeartbeatState.DRAINING.value

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Control:
    mode: Mode = Mode.RUNNING
    since: str = ""
    by: str = ""
    reason: str = ""

    @property
    def stage_allowed(self) -> bool:
        return self.mode is Mode.RUNNING

    @property
    def submit_allowed(self) -> bool:
        return self.mode is Mode.RUNNING

    @property
    def cancel_idle_pilots(self) -> bool:
        return self.mode is Mode.DRAINING

    def describe(self) -> str:
        if self.mode is Mode.RUNNING:
            return str(self.mode)
        return "%s since %s by %s%s" % (self.mode, self.since, self.by or "?",
                                        ": " + self.reason if self.reason else "")


def current(spool: Path) -> Control:
    """The mode in force; an unreadable flag file counts as paused (fail safe), loudly."""
    path = Path(spool) / CONTROL_FILE
    try:
        data = p.read_json(str(path))
    except FileNotFoundError:
        return Control()
    except (OSError, ValueError) as exc:
        return Control(Mode.PAUSED, reason="unreadable %s (%s): fix or remove it" % (path, exc))
    try:
        return Control(Mode(data.get("mode")), str(data.get("since", "")),
                       str(data.get("by", "")), str(data.get("reason", "")))
    except (ValueError, AttributeError):
        return Control(Mode.PAUSED, reason="%s names no known mode: fix or remove it" % path)


def set_mode(spool: Path, mode: Mode, reason: str = "") -> Control:
    """Switch to ``mode`` (one atomic write; resume removes the file)."""
    path = Path(spool) / CONTROL_FILE
    if mode is Mode.RUNNING:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return Control()
    control = Control(mode, p.now_iso(), _who(), reason)
    Path(spool).mkdir(parents=True, exist_ok=True)
    p.write_json(str(path), {"mode": control.mode.value, "since": control.since,
                             "by": control.by, "reason": control.reason})
    return control


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "uid %d" % os.getuid()
