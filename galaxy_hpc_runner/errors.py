"""The one exception hierarchy of the submitting side."""

from __future__ import annotations


class HpcBatchError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(HpcBatchError):
    """The INI configuration is missing something or holds a bad value."""


class JobError(HpcBatchError):
    """A job description cannot be run; becomes the job's error result."""


class TransportError(HpcBatchError):
    """The HPC side could not be reached or a file could not be moved there or back."""


class RemoteFileMissing(TransportError):
    """A file that should be on the HPC side is not (the side itself was reachable)."""


class SchedulerError(HpcBatchError):
    """The scheduler did not accept or answer a request."""


class CommandError(SchedulerError):
    """A command exited non-zero."""

    def __init__(self, argv: list[str], rc: int, stdout: str, stderr: str) -> None:
        self.argv, self.rc, self.stdout, self.stderr = argv, rc, stdout, stderr
        detail = (stderr or stdout).strip().splitlines()
        super().__init__("%s exited %d%s" % (argv[0], rc, ": " + detail[-1] if detail else ""))


class CommandTimeout(SchedulerError):
    """A command did not finish within its timeout."""
