"""``hpc-batch``: the admin and cron command of the submitting side.

The configuration is named by ``--config FILE`` (before or after the command) or by the
environment variable HPC_BATCH_CONFIG. The commands are in :mod:`.commands`, the parser
in :mod:`.parser`, the exit codes in :mod:`.exitcodes`.
"""

from __future__ import annotations

import logging
import os
import sys

from galaxy_hpc_runner.cli.commands import CONFIG_ENV
from galaxy_hpc_runner.cli.exitcodes import Exit
from galaxy_hpc_runner.errors import (
    ConfigError,
    HpcBatchError,
    JobError,
    SchedulerError,
    TransportError,
)


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # Ctrl-C anywhere, even while importing or parsing
        print("hpc-batch: interrupted", file=sys.stderr)
        return Exit.INTERRUPTED
    except BrokenPipeError:  # `hpc-batch jobs | head`: the reader left, nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return Exit.OK


def _main(argv: list[str] | None) -> int:
    from galaxy_hpc_runner.cli.parser import build_parser

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.needs_config and not args.config:
        args.config = os.environ.get(CONFIG_ENV) or None
        if not args.config:
            parser.error("%s needs --config FILE (or %s in the environment)" % (
                args.command, CONFIG_ENV))
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except HpcBatchError as exc:
        print("hpc-batch: %s" % exc, file=sys.stderr)
        return _exit_for(exc)
    except BrokenPipeError:
        raise
    except OSError as exc:  # "nofile.yml: No such file or directory", not "[Errno 2] ..."
        where = "%s: %s" % (exc.filename, exc.strerror) if exc.filename and exc.strerror else exc
        print("hpc-batch: %s" % where, file=sys.stderr)
        return Exit.FAILED


def _exit_for(exc: HpcBatchError) -> int:
    from galaxy_hpc_runner.cli.jobs import NoSuchJob

    for kind, code in ((NoSuchJob, Exit.NO_SUCH_JOB), (ConfigError, Exit.INVALID),
                       (JobError, Exit.INVALID), (TransportError, Exit.UNREACHABLE),
                       (SchedulerError, Exit.UNREACHABLE)):
        if isinstance(exc, kind):
            return code
    return Exit.FAILED


if __name__ == "__main__":
    sys.exit(main())
