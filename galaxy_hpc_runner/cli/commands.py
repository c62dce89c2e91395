"""The ``hpc-batch`` commands: each takes the parsed arguments and returns an exit code."""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from galaxy_hpc_runner import __version__, config_checks
from galaxy_hpc_runner.cli.exitcodes import Exit
from galaxy_hpc_runner.config import Config, load_config, read_config
from galaxy_hpc_runner.dropbox.boundary import dropbox_warnings
from galaxy_hpc_runner.dropbox.metrics import LAST_PASS
from galaxy_hpc_runner.dropbox.templates import check_templates
from galaxy_hpc_runner.errors import HpcBatchError

if TYPE_CHECKING:
    from galaxy_hpc_runner.dropbox.submitter import Submitter

log = logging.getLogger(__name__)
CONFIG_ENV = "HPC_BATCH_CONFIG"
STUCK_PASS = 600.0  # seconds without an ended pass before a held lock is reported


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


def _submitter(cfg: Config) -> Submitter:
    from galaxy_hpc_runner.dropbox.submitter import Submitter

    return Submitter(cfg)


def _transport(cfg: Config) -> Any:
    from galaxy_hpc_runner.dropbox.submitter import make_transport

    return make_transport(cfg)


# -- admin commands ---------------------------------------------------------------------
def cmd_check(args: argparse.Namespace) -> int:
    cfg, errors = read_config(args.config)
    if cfg.templates.is_dir():  # every template must pass the placeholder check (docs/security.md)
        errors += check_templates(cfg.templates)
    for warning in dropbox_warnings(cfg) + config_checks.warnings(cfg):
        print("warning: %s" % warning)
    if errors:
        print("%s: %d problem(s):" % (cfg.path, len(errors)))
        for error in errors:
            print("  - " + error)
        return Exit.INVALID
    print("%s: OK (dropbox %s, workspace %s, backend %s, transport %s)" % (
        cfg.path, cfg.dropbox, cfg.workspace, cfg.backend, cfg.transport_type))
    return _check_hpc_side(cfg) if args.remote else Exit.OK


def _check_hpc_side(cfg: Config) -> int:
    """Reach the HPC side as a pass would: workspace, pilot command, scheduler."""
    submitter = _submitter(cfg)
    steps: list[tuple[str, str, Callable[[], object]]] = [
        ("workspace %s is writable" % cfg.workspace,
         "[hpc_env] workspace" + (", [transport] host, port, user, key_file, known_hosts"
                                  if cfg.transport_type == "ssh" else ""),
         submitter.stager.ensure_layout),
        ("the pilot program deploys and runs", "[pilot] python, [hpc_env] workspace",
         submitter.pilots.preflight),
        ("the %s scheduler answers" % cfg.backend, "[scheduler] backend, partition, "
         "command_timeout", submitter.backend.ping)]
    for what, settings, step in steps:
        try:
            step()
        except HpcBatchError as exc:
            print("  FAILED: %s: %s\n    (the settings involved: %s)" % (what, exc, settings))
            return Exit.UNREACHABLE
        print("  ok: %s" % what)
    others = _other_servers(submitter)
    if others is not None:
        print("  other submitting servers sharing this workspace: %s" % (
            ", ".join(others) or "none"))
    return Exit.OK


def _other_servers(submitter: Submitter) -> list[str] | None:
    seen = getattr(submitter.pilots, "servers_seen", None)
    if seen is None:
        return None
    try:
        return list(seen())
    except HpcBatchError:
        return None


def cmd_render(args: argparse.Namespace) -> int:
    from galaxy_hpc_runner.dropbox import description as d

    cfg = load_config(args.config)
    path = Path(args.job)
    name = path.name[: -len(d.SUFFIX)] if path.name.endswith(d.SUFFIX) else path.stem
    job = d.validate(name, d.parse(path.read_text(encoding="utf-8")), cfg)
    sys.stdout.write(job.rendered)
    return Exit.OK


def cmd_submitter(args: argparse.Namespace) -> int:
    import signal
    import threading

    from galaxy_hpc_runner.dropbox.passlock import LockTimeout

    cfg = load_config(args.config)
    submitter = _submitter(cfg)
    if args.once:
        try:
            report = submitter.run_pass()
        except LockTimeout as exc:  # a long pass still runs: not this pass's failure
            return _pass_still_running(cfg, exc)
        # quiet when idle: cron mails whatever is printed, so only a pass that did or
        # met something says so at INFO (its errors were logged as ERROR already)
        summary = _pass_summary(vars(report))
        log.log(logging.INFO if summary else logging.DEBUG, "pass: %s", summary or "idle")
        return Exit.OK if report.ok else Exit.UNREACHABLE
    stop = threading.Event()  # SIGTERM (systemctl stop): finish the pass, then leave
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    submitter.loop(stop)
    return Exit.OK


def _pass_summary(counts: dict[str, object]) -> str:
    """``received 2, staged 2, 1 error(s)``: what a pass did, empty when it did nothing."""
    parts = ["%s %d" % (key.replace("_", " "), value) for key, value in counts.items()
             if isinstance(value, int) and not isinstance(value, bool) and value]
    errors = counts.get("errors")
    if isinstance(errors, list) and errors:
        parts.append("%d error(s)" % len(errors))
    if counts.get("more") is True:
        parts.append("more descriptions wait for the next pass")
    return ", ".join(parts)


def _pass_still_running(cfg: Config, exc: Exception) -> int:
    """Cron started a pass while the previous one runs on: quiet, unless it looks stuck."""
    import time

    from galaxy_hpc_runner.cli import admin

    last = admin.view(admin.LastPass, admin.read_json_quietly(cfg.spool / LAST_PASS))
    age = admin.age_of(last.time if last else None, time.time())
    if age is not None and age < max(STUCK_PASS, 3 * cfg.interval):
        log.info("%s: the previous pass is still running; this one is skipped", exc)
        return Exit.OK
    log.warning("%s, and no pass ended for %s: is a pass stuck? (hpc-batch status)",
                exc, "ever" if age is None else "%.0fs" % age)
    return Exit.UNREACHABLE


def cmd_status(args: argparse.Namespace) -> int:
    from galaxy_hpc_runner.cli import admin

    cfg = load_config(args.config)
    data = admin.status_data(cfg, _transport(cfg))
    _print_json(data) if args.json else print(admin.format_status(data))
    return Exit.UNREACHABLE if admin.last_pass_failed(data) else Exit.OK


def cmd_jobs(args: argparse.Namespace) -> int:
    import time

    from galaxy_hpc_runner.cli import jobs
    from galaxy_hpc_runner.dropbox.spool import Spool

    cfg = load_config(args.config)
    now = time.time()
    states = {s.strip() for s in args.state.split(",")} if args.state else None
    since = jobs.since_cutoff(args.since, now)
    problems: list[str] = []
    rows = jobs.table(Spool(cfg.spool), states, since, args.server, problems, cfg.dropbox)
    if args.json:
        _print_json([dict(vars(r), seconds=r.seconds(now)) for r in rows])
    else:
        print(jobs.format_table(rows, now))
    for problem in problems:
        print("PROBLEM: " + problem, file=sys.stderr)
    return Exit.OK


def cmd_show(args: argparse.Namespace) -> int:
    from galaxy_hpc_runner.cli import admin

    data = admin.show_data(load_config(args.config), args.name)
    _print_json(data) if args.json else print(admin.format_show(data))
    return Exit.OK


def cmd_logs(args: argparse.Namespace) -> int:
    from galaxy_hpc_runner.cli import admin

    cfg = load_config(args.config)
    print(admin.logs_text(cfg, _transport(cfg), args.name))
    return Exit.OK


def cmd_cancel(args: argparse.Namespace) -> int:
    from galaxy_hpc_runner.cli import jobs
    from galaxy_hpc_runner.dropbox.spool import Spool

    cfg = load_config(args.config)
    name = jobs.find(Spool(cfg.spool), args.name, cfg.dropbox)
    outcome = _submitter(cfg).cancel(name)
    print("%s: %s" % (name, outcome))
    return Exit.FAILED if outcome == "not active" else Exit.OK


def cmd_mode(args: argparse.Namespace) -> int:
    from galaxy_hpc_runner.dropbox import control

    cfg = load_config(args.config)
    mode = {"pause": control.Mode.PAUSED, "drain": control.Mode.DRAINING,
            "resume": control.Mode.RUNNING}[args.command]
    state = control.set_mode(cfg.spool, mode, getattr(args, "reason", "") or "")
    print("%s: %s" % (cfg.spool, state.describe()))
    return Exit.OK


def cmd_report(args: argparse.Namespace) -> int:
    import time

    from galaxy_hpc_runner.cli import jobs, report
    from galaxy_hpc_runner.dropbox.pilots import read_heartbeat
    from galaxy_hpc_runner.dropbox.spool import Spool
    from hpc_worker.states import PilotState

    cfg = load_config(args.config)
    now = time.time()
    since = jobs.since_cutoff(args.since, now) or now - 86400
    until = jobs.since_cutoff(args.until, now) or now
    spool = Spool(cfg.spool)
    transport = _transport(cfg)
    starts = {}  # pilots still known on the HPC side: their start from the heartbeat
    for pilot in spool.pilots():
        if pilot.state is not PilotState.GONE:
            beat = read_heartbeat(transport, cfg.workspace, pilot.pilot_id)
            if beat and beat.started > 0:
                starts[pilot.pilot_id] = beat.started
    built = report.build(spool, since, until, cfg.pilot.slots, starts)
    title = "hpc-batch: %s to %s" % (time.strftime("%Y-%m-%d %H:%M", time.localtime(since)),
                                     time.strftime("%Y-%m-%d %H:%M", time.localtime(until)))
    Path(args.html).write_text(report.render_html(built, title), encoding="utf-8")
    print("%s: %d pilot(s), %d job(s)" % (args.html, len(built.pilots), len(built.jobs)))
    return Exit.OK


def cmd_pilot(args: argparse.Namespace) -> int:
    from galaxy_hpc_runner.backends import pilot_spec

    cfg = load_config(args.config)
    submitter = _submitter(cfg)
    if args.dry_run:
        print(submitter.backend.dry_run(pilot_spec(cfg, "pilot-DRYRUN")))
        return Exit.OK
    rec = submitter.pilots.submit()
    print("%s %s" % (rec.pilot_id, rec.scheduler_id))
    return Exit.OK


# -- user commands ----------------------------------------------------------------------
def cmd_submit(args: argparse.Namespace) -> int:
    from galaxy_hpc_runner.cli import admin

    cfg = load_config(args.config)
    name = admin.drop(cfg, Path(args.job))
    print(name)
    if not args.wait:
        return Exit.OK
    tick: Callable[[], object] | None = _submitter(cfg).run_pass if args.drive else None
    node = admin.wait_for(cfg, name, args.timeout, lambda s: print("%s: %s" % (name, s),
                                                                   flush=True), tick=tick)
    if node is None:
        print("%s: no result within %ss (the job goes on; hpc-batch show %s)" % (
            name, args.timeout, name), file=sys.stderr)
        return Exit.TIMEOUT
    if args.json:
        _print_json(node)
    return _job_exit(name, node)


def _job_exit(name: str, node: dict[str, Any]) -> int:
    from hpc_worker.states import Reason, ResultStatus

    rc = node.get("rc")
    print("%s: %s: %s%s" % (name, node.get("status"), node.get("message"),
                            " (rc %s)" % rc if rc not in (None, 0) and
                            "return code %s" % rc not in str(node.get("message")) else ""))
    if node.get("status") == ResultStatus.OK:
        return Exit.OK
    reason = str(node.get("reason"))
    if reason == Reason.CANCELLED:
        return Exit.CANCELLED
    return Exit.INVALID if reason == Reason.INVALID else Exit.FAILED


def cmd_demo(args: argparse.Namespace) -> int:
    from galaxy_hpc_runner.cli.demo import run_demo

    return run_demo(Path(args.dir), args.jobs)


def cmd_simulate(args: argparse.Namespace) -> int:
    from galaxy_hpc_runner.simulate.cli import main as simulate_main

    return simulate_main(args.rest)


def version_text() -> str:
    from hpc_worker.records import PROTOCOL_VERSION

    return "hpc-batch %s (pilot protocol %d, Python %s)" % (
        __version__, PROTOCOL_VERSION, platform.python_version())
