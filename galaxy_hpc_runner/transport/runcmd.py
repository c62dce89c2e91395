"""The one helper that runs external commands: argument lists, a timeout, typed errors."""

from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass

from galaxy_hpc_runner.errors import CommandError, CommandTimeout, SchedulerError

log = logging.getLogger(__name__)


@dataclass
class Completed:
    argv: list[str]
    rc: int
    stdout: str
    stderr: str


def run_command(argv: list[str], timeout: float = 60.0, check: bool = True,
                env: dict[str, str] | None = None, stdin: str | None = None) -> Completed:
    """Run ``argv`` (never through a shell); CommandError on non-zero exit when ``check``."""
    log.debug("running %s", argv)
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env,
                              input=stdin, check=False)
    except subprocess.TimeoutExpired as exc:
        raise CommandTimeout("%s did not finish within %ss" % (argv[0], timeout)) from exc
    except OSError as exc:
        raise SchedulerError("cannot run %s: %s" % (argv[0], exc.strerror)) from exc
    done = Completed(argv, proc.returncode, proc.stdout, proc.stderr)
    if check and proc.returncode != 0:
        raise CommandError(argv, proc.returncode, proc.stdout, proc.stderr)
    return done
