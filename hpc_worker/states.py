"""The one vocabulary of states and reasons, shared by both sides and the simulator.

Every state a job or a pilot can be in, and every reason a result can give, is
a member of one of these enums. They are ``str`` enums, so a member is written
to JSON as its value and compares equal to it; nothing else in either package
spells these words out.

Standard library only, Python 3.8.
"""

from __future__ import annotations

import enum


class JobState(str, enum.Enum):
    """A job in the submitter's spool (the spool is the truth about jobs)."""

    RECEIVED = "received"  # its description was read and validated
    STAGED = "staged"  # its files and ready marker are on the HPC side
    CLAIMED = "claimed"  # a pilot runs it
    FINISHED = "finished"  # its result file exists

    def __str__(self) -> str:
        return self.value


class PilotState(str, enum.Enum):
    """A pilot as the scheduler sees it (the HPC side is the truth about pilots)."""

    SUBMITTING = "submitting"  # intent recorded; the scheduler may or may not have it yet
    PENDING = "pending"
    RUNNING = "running"
    GONE = "gone"  # ended, for whatever reason: never read as success
    UNKNOWN = "unknown"  # the scheduler could not be asked: never submit another on this

    @property
    def active(self) -> bool:
        return self is not PilotState.GONE

    def __str__(self) -> str:
        return self.value


class HeartbeatState(str, enum.Enum):
    """What a pilot says of itself in its heartbeat."""

    RUNNING = "running"  # taking jobs
    DRAINING = "draining"  # its end is near: no new jobs, running ones go on
    STOPPED = "stopped"  # left; every job it held was reported or released

    def __str__(self) -> str:
        return self.value


class ResultStatus(str, enum.Enum):
    """The ``status`` of a result: the seed's two words."""

    OK = "ok"
    ERROR = "error"

    def __str__(self) -> str:
        return self.value


class Reason(str, enum.Enum):
    """Why a job ended in error (or was released); Galaxy maps these to its runner states."""

    INVALID = "invalid"  # the description was refused before anything ran
    TRANSFER = "transfer"  # files could not be moved to or from the HPC side
    FAILED = "failed"  # the job exited non-zero
    KILLED = "killed"  # by a signal nobody in this system sent (OOM killer, admin)
    WALLTIME = "walltime"  # it ran past its declared walltime
    CANCELLED = "cancelled"
    MISSING_OUTPUT = "missing_output"  # exited 0 without writing a declared output
    LOST = "lost"  # its pilot died too often, or its result vanished
    RELEASED = "released"  # a stopping pilot gave it back; it ran too often that way
    UNSAFE = "unsafe"  # something the job wrote could not be trusted (a link, too big)

    def __str__(self) -> str:
        return self.value


class ReleaseReason(str, enum.Enum):
    """Why a pilot gave a claimed job back (``RunLine.reason`` of a release line)."""

    STOP = "stop"  # the pilot was told to stop (scancel, SIGTERM, SIGINT)
    PILOT_WALLTIME = "pilot_walltime"  # its pilot's time ran out before the job could finish
    START_FAILED = "start_failed"  # the pilot could not start it (its own trouble, not the job's)
    REPORT_FAILED = "report_failed"  # it ended but its result could not be written (disk full)

    def __str__(self) -> str:
        return self.value
