"""The exit codes of ``hpc-batch``: one meaning each, none shared with a job's own rc.

A job's return code is never passed through as the exit code (a job exiting 2 or 124
would read as a usage error or a timeout); ``submit --wait`` prints it and puts it in
``--json`` output instead.
"""

from __future__ import annotations

import enum


class Exit(enum.IntEnum):
    OK = 0  # done; for submit --wait: the job ended ok
    FAILED = 1  # the job ended in error (its rc is printed), or the command failed
    USAGE = 2  # wrong command line (argparse)
    INVALID = 3  # invalid configuration (check) or job description
    CANCELLED = 4  # the job was cancelled
    TIMEOUT = 5  # submit --wait --timeout ran out before a result
    UNREACHABLE = 6  # the HPC side (head node, scheduler) failed; or the last pass failed
    NO_SUCH_JOB = 7  # show/logs/cancel: no job, or more than one, matches the name
    INTERRUPTED = 130  # Ctrl-C (SIGINT)


MEANINGS = {
    Exit.OK: "success (submit --wait: the job ended ok)",
    Exit.FAILED: "the job ended in error (its rc is printed), or the command failed",
    Exit.USAGE: "usage error",
    Exit.INVALID: "invalid configuration or job description (see the messages)",
    Exit.CANCELLED: "the job was cancelled",
    Exit.TIMEOUT: "submit --wait --timeout: no result in time (the job goes on)",
    Exit.UNREACHABLE: "the HPC side failed (head node, scheduler, check --remote);\n"
                      "       status, submitter --once: the last pass FAILED",
    Exit.NO_SUCH_JOB: "no job (or more than one) matches the name given",
    Exit.INTERRUPTED: "interrupted (Ctrl-C)",
}


def table() -> str:
    """The table for ``--help`` and the README."""
    return "exit codes:\n" + "\n".join("  %3d  %s" % (int(code), text)
                                       for code, text in MEANINGS.items())
