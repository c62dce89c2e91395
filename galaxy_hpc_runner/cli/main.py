"""``hpc-batch``: the admin and cron command of the submitting side."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from galaxy_hpc_runner.cli import admin
from galaxy_hpc_runner.config import Config, load_config, read_config
from galaxy_hpc_runner.dropbox import description as d
from galaxy_hpc_runner.dropbox.submitter import Submitter, make_transport
from galaxy_hpc_runner.errors import HpcBatchError
from hpc_worker.states import ResultStatus

log = logging.getLogger(__name__)


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


def cmd_check(args: argparse.Namespace) -> int:
    cfg, errors = read_config(args.config)
    if errors:
        print("%s: %d problem(s):" % (cfg.path, len(errors)))
        for error in errors:
            print("  - " + error)
        return 1
    print("%s: OK (dropbox %s, workspace %s, backend %s, transport %s)" % (
        cfg.path, cfg.dropbox, cfg.workspace, cfg.backend, cfg.transport_type))
    return _check_hpc_side(cfg) if args.remote else 0


def _check_hpc_side(cfg: Config) -> int:
    """Reach the HPC side as a pass would: workspace, pilot command, scheduler."""
    submitter = Submitter(cfg)
    steps: list[tuple[str, Callable[[], object]]] = [
        ("workspace %s is writable" % cfg.workspace, submitter.stager.ensure_layout),
        ("the pilot's Python imports hpc_worker", submitter.pilots.preflight),
        ("the %s scheduler answers" % cfg.backend, submitter.backend.ping)]
    for what, step in steps:
        try:
            step()
        except HpcBatchError as exc:
            print("  FAILED: %s: %s" % (what, exc))
            return 1
        print("  ok: %s" % what)
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    path = Path(args.job)
    name = path.name[: -len(d.SUFFIX)] if path.name.endswith(d.SUFFIX) else path.stem
    job = d.validate(name, d.parse(path.read_text(encoding="utf-8")), cfg)
    sys.stdout.write(job.rendered)
    return 0


def cmd_submitter(args: argparse.Namespace) -> int:
    submitter = Submitter(load_config(args.config))
    if args.once:
        report = submitter.run_pass()
        log.info("pass: %s", report)
        return 1 if report.errors else 0
    submitter.loop(threading.Event())
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    data = admin.status_data(cfg, make_transport(cfg))
    _print_json(data) if args.json else print(admin.format_status(data))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    data = admin.show_data(load_config(args.config), args.name)
    _print_json(data) if args.json else print(admin.format_show(data))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    print(admin.logs_text(cfg, make_transport(cfg), args.name))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    print("%s: %s" % (args.name, Submitter(load_config(args.config)).cancel(args.name)))
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    name = admin.drop(cfg, Path(args.job))
    print(name)
    if not args.wait:
        return 0
    tick: Callable[[], object] | None = Submitter(cfg).run_pass if args.drive else None
    node = admin.wait_for(cfg, name, args.timeout, lambda s: print("%s: %s" % (name, s)),
                          tick=tick)
    if node is None:
        print("%s: no result within %ss" % (name, args.timeout), file=sys.stderr)
        return 124
    print("%s: %s: %s" % (name, node.get("status"), node.get("message")))
    rc = node.get("rc")
    return rc if isinstance(rc, int) and node.get("status") == ResultStatus.OK else (rc or 1)


def cmd_pilot(args: argparse.Namespace) -> int:
    from galaxy_hpc_runner.backends import pilot_spec

    cfg = load_config(args.config)
    submitter = Submitter(cfg)
    spec = pilot_spec(cfg, "pilot-DRYRUN")
    if args.dry_run:
        print(submitter.backend.dry_run(spec))
        return 0
    rec = submitter.pilots.submit()
    print("%s %s" % (rec.pilot_id, rec.scheduler_id))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from galaxy_hpc_runner.cli.demo import run_demo

    return run_demo(Path(args.dir), args.jobs)


def cmd_simulate(args: argparse.Namespace) -> int:
    from galaxy_hpc_runner.simulate.cli import main as simulate_main

    return simulate_main(args.rest)


def _config_arg(ap: argparse.ArgumentParser, top: bool = False) -> None:
    """--config before or after the subcommand: ``hpc-batch --config F status``."""
    ap.add_argument("--config", "-c", help="the INI configuration file",
                    default=None if top else argparse.SUPPRESS)


Adder = Callable[..., argparse.ArgumentParser]


def _admin_commands(add: Adder) -> None:
    add("check", cmd_check, "validate a config file and say exactly what is wrong").add_argument(
        "--remote", action="store_true",
        help="also reach the HPC side: workspace, pilot command, scheduler")
    add("render", cmd_render, "print the script a description would run").add_argument("job")
    add("submitter", cmd_submitter, "run submitter passes (cron: --once)").add_argument(
        "--once", action="store_true", help="one pass, then exit")
    add("status", cmd_status, "counts, pilots, oldest waiting job").add_argument(
        "--json", action="store_true")
    sp = add("show", cmd_show, "one job: description, history, pilot")
    sp.add_argument("name")
    sp.add_argument("--json", action="store_true")
    add("logs", cmd_logs, "a job's stdout/stderr and its pilot log lines").add_argument("name")
    add("cancel", cmd_cancel, "withdraw a waiting job or kill a running one").add_argument("name")
    add("pilot", cmd_pilot, "submit a pilot now, or show what would be submitted").add_argument(
        "--dry-run", action="store_true")


def _user_commands(add: Adder, sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    sp = add("submit", cmd_submit, "drop a description into the dropbox under a unique name")
    sp.add_argument("job")
    sp.add_argument("--wait", action="store_true", help="block until the result; exit with rc")
    sp.add_argument("--timeout", type=float, default=None, help="give up after S seconds")
    sp.add_argument("--drive", action="store_true",
                    help="run submitter passes while waiting (when no cron does)")
    sp = add("demo", cmd_demo, "run a burst of jobs on the local backend", config=False)
    sp.add_argument("--dir", default="demo-run", help="where the demo's files go")
    sp.add_argument("--jobs", type=int, default=20)
    helptext = "simulate queue waits and pilot policies at site scale"
    # Everything after "simulate" goes, untouched, to its own parser (--help included):
    # no option prefix here, or argparse would take "--days" for an unknown option.
    sp = sub.add_parser("simulate", help=helptext, description=helptext, add_help=False,
                        prefix_chars="\0")
    sp.set_defaults(func=cmd_simulate, needs_config=False)
    sp.add_argument("rest", nargs=argparse.REMAINDER, help="see hpc-batch simulate --help")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="hpc-batch", description=__doc__)
    ap.add_argument("--verbose", "-v", action="store_true", help="log debug messages")
    _config_arg(ap, top=True)
    sub = ap.add_subparsers(dest="command", required=True)

    def add(name: str, func: Callable[[argparse.Namespace], int], helptext: str,
            config: bool = True) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=helptext, description=helptext)
        if config:
            _config_arg(sp)
        sp.set_defaults(func=func, needs_config=config)
        return sp

    _admin_commands(add)
    _user_commands(add, sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.needs_config and not args.config:
        parser.error("%s needs --config FILE" % args.command)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except HpcBatchError as exc:
        print("hpc-batch: %s" % exc, file=sys.stderr)
        return 1
    except OSError as exc:
        print("hpc-batch: %s" % exc, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

