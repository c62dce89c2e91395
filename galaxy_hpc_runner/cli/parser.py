"""The ``hpc-batch`` command line: every command with its options and examples."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from galaxy_hpc_runner.cli import commands as m
from galaxy_hpc_runner.cli.exitcodes import table
from hpc_worker.states import JobState

Command = Callable[[argparse.Namespace], int]
Adder = Callable[..., argparse.ArgumentParser]

TOP_EPILOG = """\
examples:
  hpc-batch --config /etc/hpc-batch.ini check
  export HPC_BATCH_CONFIG=/etc/hpc-batch.ini   # then --config may be left out
  hpc-batch --quiet submitter --once           # one pass (cron, every minute)
  hpc-batch status
  hpc-batch jobs --state claimed,staged
  hpc-batch show 4711                          # by name, Galaxy job id or name prefix
  hpc-batch demo --dir /tmp/demo               # a whole site on this machine

"""

EXAMPLES = {
    "check": ["hpc-batch -c site.ini check", "hpc-batch -c site.ini check --remote"],
    "render": ["hpc-batch render whisper-1.job"],
    "submitter": ["* * * * * hpc-batch -q -c /etc/hpc-batch.ini submitter --once   (crontab)",
                  "hpc-batch submitter   (a loop; see examples/ops/ for a systemd unit)"],
    "status": ["hpc-batch status", "hpc-batch status --json | jq .last_pass"],
    "jobs": ["hpc-batch jobs", "hpc-batch jobs --state finished --since 2h",
             "hpc-batch jobs --since 2026-11-27 --json"],
    "show": ["hpc-batch show whisper-20261127T0815-1a2b3c4d", "hpc-batch show 4711",
             "hpc-batch show whisper-2026 --json"],
    "logs": ["hpc-batch logs 4711"],
    "cancel": ["hpc-batch cancel 4711"],
    "pause": ["hpc-batch pause --reason 'GPU nodes down for maintenance'"],
    "drain": ["hpc-batch drain --reason 'scheduler upgrade at 18:00'"],
    "resume": ["hpc-batch resume"],
    "pilot": ["hpc-batch pilot --dry-run", "hpc-batch pilot"],
    "report": ["hpc-batch report --html /var/www/hpc/today.html",
               "hpc-batch report --html week.html --since 7d"],
    "submit": ["hpc-batch submit job.yml", "hpc-batch submit job.yml --wait --timeout 3600",
               "hpc-batch submit job.yml --wait --drive   (no cron: run passes while waiting)"],
    "demo": ["hpc-batch demo", "hpc-batch demo --dir /tmp/demo --jobs 50"],
}


def _states(text: str) -> str:
    """--state S[,S]: every name a job state (a typo would silently list nothing)."""
    known = {s.value for s in JobState}
    wrong = [s.strip() for s in text.split(",") if s.strip() not in known]
    if wrong:
        raise argparse.ArgumentTypeError("%s: not a job state (choose from %s)" % (
            ", ".join(map(repr, wrong)), ", ".join(sorted(known))))
    return text


def _when(text: str) -> str:
    """--since/--until: checked here, so a typo is a usage error (exit 2)."""
    import time

    from galaxy_hpc_runner.cli.jobs import since_cutoff
    from galaxy_hpc_runner.errors import HpcBatchError

    try:
        since_cutoff(text, time.time())
    except HpcBatchError as exc:
        raise argparse.ArgumentTypeError(str(exc).partition(": ")[2] or str(exc)) from None
    return text


def _epilog(name: str) -> str:
    return "examples:\n" + "\n".join("  " + line for line in EXAMPLES.get(name, []))


def _config_arg(ap: argparse.ArgumentParser, top: bool = False) -> None:
    """--config before or after the subcommand: ``hpc-batch --config F status``."""
    ap.add_argument("--config", "-c", metavar="FILE",
                    help="the INI configuration file (default: $%s)" % m.CONFIG_ENV,
                    default=None if top else argparse.SUPPRESS)


def _admin_commands(add: Adder) -> None:
    add("check", m.cmd_check, "validate a config file and say exactly what is wrong").add_argument(
        "--remote", action="store_true",
        help="also reach the HPC side: workspace, pilot command, scheduler")
    add("render", m.cmd_render, "print the script a description would run").add_argument("job")
    add("submitter", m.cmd_submitter, "run submitter passes (cron: --once)").add_argument(
        "--once", action="store_true", help="one pass, then exit (6 when the pass failed)")
    add("status", m.cmd_status, "counts, pilots, heartbeats, the last pass").add_argument(
        "--json", action="store_true")
    sp = add("jobs", m.cmd_jobs, "a table of jobs (like squeue): active, and finished ones")
    sp.add_argument("--state", metavar="S[,S]", type=_states,
                    help="only these states (%s)" % ", ".join(s.value for s in JobState))
    sp.add_argument("--since", metavar="T", type=_when,
                    help="only jobs received since T: a duration back (2h, 1d) or a date")
    sp.add_argument("--server", metavar="S", help="only jobs of submitting server S")
    sp.add_argument("--json", action="store_true")
    sp = add("show", m.cmd_show, "one job: description, history, pilot, host, rc")
    sp.add_argument("name", help="the job's name, its Galaxy job id, or a unique name prefix")
    sp.add_argument("--json", action="store_true")
    add("logs", m.cmd_logs, "a job's stdout/stderr, its runs, its pilots' log files"
        ).add_argument("name", help="name, Galaxy job id or unique name prefix")
    add("cancel", m.cmd_cancel, "withdraw a waiting job or kill a running one").add_argument(
        "name", help="name, Galaxy job id or unique name prefix")
    for name, helptext in (
            ("pause", "stop staging and pilot submission; running work finishes"),
            ("drain", "pause, and let queued pilots go (no warm pilot kept)")):
        add(name, m.cmd_mode, helptext).add_argument("--reason", default="",
                                                     help="shown by status")
    add("resume", m.cmd_mode, "undo pause or drain")
    sp = add("report", m.cmd_report, "a self-contained HTML page of where the time went")
    sp.add_argument("--html", required=True, metavar="FILE", help="the page to write")
    sp.add_argument("--since", metavar="T", default="1d", type=_when,
                    help="window start: a duration back (12h, 7d) or a date (default 1d)")
    sp.add_argument("--until", metavar="T", default=None, type=_when,
                    help="window end (default: now)")
    add("pilot", m.cmd_pilot, "submit a pilot now, or show what would be submitted"
        ).add_argument("--dry-run", action="store_true")


def _user_commands(add: Adder, sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    sp = add("submit", m.cmd_submit, "drop a description into the dropbox under a unique name")
    sp.add_argument("job")
    sp.add_argument("--wait", action="store_true",
                    help="block until the result: exit 0 ok, 1 error (rc printed), 4 cancelled")
    sp.add_argument("--timeout", type=float, default=None,
                    help="with --wait: give up after S seconds (exit 5; the job goes on)")
    sp.add_argument("--drive", action="store_true",
                    help="run submitter passes while waiting (when no cron does)")
    sp.add_argument("--json", action="store_true", help="with --wait: print the result")
    sp = add("demo", m.cmd_demo, "run a burst of jobs on the local backend", config=False)
    sp.add_argument("--dir", default="demo-run", help="where the demo's files go")
    sp.add_argument("--jobs", type=int, default=20)
    helptext = "simulate queue waits and pilot policies at site scale"
    # Everything after "simulate" goes, untouched, to its own parser (--help included):
    # no option prefix here, or argparse would take "--days" for an unknown option.
    sp = sub.add_parser("simulate", help=helptext, description=helptext, add_help=False,
                        prefix_chars="\0")
    sp.set_defaults(func=m.cmd_simulate, needs_config=False)
    sp.add_argument("rest", nargs=argparse.REMAINDER, help="see hpc-batch simulate --help")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="hpc-batch", description="The admin and cron command of galaxy-hpc-batch.",
        epilog=TOP_EPILOG + table(), formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", action="version", version=m.version_text())
    ap.add_argument("--verbose", "-v", action="store_true", help="log debug messages")
    ap.add_argument("--quiet", "-q", action="store_true",
                    help="log warnings and errors only (cron: mail only when something is wrong)")
    _config_arg(ap, top=True)
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Command, helptext: str,
            config: bool = True) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=helptext, description=helptext, epilog=_epilog(name),
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        if config:
            _config_arg(sp)
        sp.set_defaults(func=func, needs_config=config)
        return sp

    _admin_commands(add)
    _user_commands(add, sub)
    return ap
