"""The Galaxy runner's Galaxy-free half: descriptions from tool runs, outcomes from results.

``runner.py`` turns Galaxy objects into plain values and calls these helpers, so
everything here can be tested and reused without importing ``galaxy``.

The convention (docs/galaxy.md): a tool runs the template named by the
destination param ``template``, or else by the tool's short id; its non-data
parameters become ``args`` (nested conditionals and sections by leaf name), its
data inputs ``input_map`` and its outputs ``output_map``, both by name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from galaxy_hpc_runner.config import Config, parse_duration
from galaxy_hpc_runner.dropbox import description as d
from galaxy_hpc_runner.dropbox.spool import CLAIMED, FINISHED, Spool
from galaxy_hpc_runner.dropbox.submitter import Submitter
from galaxy_hpc_runner.errors import ConfigError, JobError
from hpc_worker import protocol as p
from hpc_worker.states import Reason, ResultStatus

log = logging.getLogger(__name__)

CANCEL_SUFFIX = ".cancel"
SKIPPED_PARAMS = {"chromInfo", "dbkey", "userId", "userEmail"}
WALLTIME_REACHED = "walltime_reached"  # Galaxy's runner_states values
MEMORY_LIMIT_REACHED = "memory_limit_reached"
MEMORY_PATTERNS = re.compile(
    r"out of memory|MemoryError|std::bad_alloc|oom-kill|Cannot allocate memory", re.IGNORECASE)
# Destination params that make a pool of its own (own workspace, spool and pilots).
POOL_PILOT_KEYS = {"slots": "slots", "pilot_walltime": "walltime", "idle_timeout": "idle_timeout"}
POOL_SCHEDULER_KEYS = {"partition", "gres", "mem", "cpus", "account", "qos", "time",
                       "extra_args", "native_spec", "max_pilots"}
DEFAULT_POOL = "default"

Scalar = str | int | float | bool | None


# -- names ----------------------------------------------------------------------------
def new_job_name(prefix: str, galaxy_job_id: object) -> str:
    """A fresh spool name for one attempt of a Galaxy job: PREFIX-ID-RANDOM."""
    return "%s-%s-%s" % (prefix, galaxy_job_id, secrets.token_hex(3))


def template_for(tool_id: str, params: Mapping[str, Any]) -> str:
    """The destination's ``template`` or the tool's short id, as a template name."""
    name = str(params.get("template") or tool_id.rstrip("/").split("/")[-1] or tool_id)
    if "/repos/" in tool_id and not params.get("template"):  # tool shed guid: .../TOOL/VERSION
        name = tool_id.rstrip("/").split("/")[-2]
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def leaf(name: str) -> str:
    """``cond|sect|input`` -> ``input``: nested names by their last part."""
    return name.rsplit("|", 1)[-1]


# -- descriptions ---------------------------------------------------------------------
def flatten_params(values: Mapping[str, Any], out: dict[str, Scalar] | None = None
                   ) -> dict[str, Scalar]:
    """Non-data tool parameters by leaf name; datasets and Galaxy internals are left out."""
    out = {} if out is None else out
    for key, value in values.items():
        if key.startswith("__") or key in SKIPPED_PARAMS:
            continue
        if isinstance(value, Mapping):
            flatten_params(value, out)
        elif value is None or isinstance(value, (str, int, float, bool)):
            out[leaf(key)] = value
        elif isinstance(value, (list, tuple)) and all(
                isinstance(v, (str, int, float)) for v in value):
            out[leaf(key)] = ",".join(str(v) for v in value)  # multiple select
    return out


def build_description(template: str, params: Mapping[str, Any], inputs: Mapping[str, str],
                      outputs: Mapping[str, str], walltime: object = None,
                      meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``NAME.job`` document for one tool run (validated later, by the submitter)."""
    input_map = {leaf(k): v for k, v in inputs.items()}
    output_map = {leaf(k): v for k, v in outputs.items()}
    args = {k: v for k, v in flatten_params(params).items()
            if k not in input_map and k not in output_map and d.IDENT.match(k)}
    doc: dict[str, Any] = {"script": template, "args": args, "input_map": input_map,
                           "output_map": output_map}
    if walltime not in (None, ""):
        doc["walltime"] = walltime
    if meta:
        doc["meta"] = dict(meta)
    return doc


def write_description(cfg: Config, name: str, doc: Mapping[str, Any]) -> Path:
    """Atomically drop the description: the submitter sees all of it or nothing."""
    path = cfg.dropbox / (name + d.SUFFIX)
    p.atomic_write(str(path), d.dump_yaml(dict(doc)))
    return path


def consume(cfg: Config, name: str) -> None:
    """Remove a job's dropbox files once Galaxy has its outcome (description first)."""
    for suffix in (d.SUFFIX, d.FINISHED_SUFFIX, CANCEL_SUFFIX):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(cfg.dropbox / (name + suffix))


# -- outcomes -------------------------------------------------------------------------
@dataclass
class Outcome:
    """What Galaxy should do about a job now.

    ``state``: queued, running, finished (hand stdout/stderr/rc to Galaxy's own
    checks) or failed (fail with ``message``; ``runner_state`` for resubmission).
    """

    state: str
    message: str = ""
    stdout: str = ""
    stderr: str = ""
    rc: int | None = None
    reason: str = ""
    runner_state: str | None = None
    node: dict[str, Any] = dataclasses.field(default_factory=dict)


def outcome_from_node(node: Mapping[str, Any]) -> Outcome:
    """Map a result's ``job`` node; only ``status: ok`` or a real exit code finishes."""
    rc, reason = node.get("rc"), str(node.get("reason") or "")
    out = Outcome("failed", message=str(node.get("message") or "HPC job failed"),
                  stdout=str(node.get("stdout") or ""), stderr=str(node.get("stderr") or ""),
                  rc=rc if isinstance(rc, int) else None, reason=reason, node=dict(node))
    if node.get("status") == ResultStatus.OK and out.rc == 0:
        out.state = "finished"
    elif reason == Reason.WALLTIME:
        out.runner_state = WALLTIME_REACHED
    elif reason == Reason.FAILED and out.rc is not None:
        if memory_exhausted(out.rc, out.stderr):
            out.runner_state = MEMORY_LIMIT_REACHED
        else:
            out.state = "finished"  # the tool's exit code and stdio rules decide
    return out


def memory_exhausted(rc: int, stderr: str) -> bool:
    """Killed by the OOM killer, or a tool that says it ran out of (GPU) memory."""
    tail = stderr[-4000:]
    return bool(MEMORY_PATTERNS.search(tail)) or (rc in (137, -9) and "Killed" in tail)


def read_result(cfg: Config, name: str) -> Outcome | None:
    """The outcome in ``NAME.job.finished``; None while there is none."""
    path = cfg.dropbox / (name + d.FINISHED_SUFFIX)
    try:
        doc = d.load_yaml(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    node = doc.get("job") if isinstance(doc, dict) else None
    if not isinstance(node, dict):
        return Outcome("failed", message="Unreadable result file %s" % path,
                       reason=Reason.INVALID)
    return outcome_from_node(node)


def job_outcome(cfg: Config, spool: Spool, name: str) -> Outcome:
    """Queued, running or done; a job with no trace at all is lost, never ok."""
    result = read_result(cfg, name)
    if result is not None:
        return result
    rec = spool.get(name)
    if rec is not None and rec.state != FINISHED:
        return Outcome("running" if rec.state == CLAIMED else "queued")
    if rec is None and (cfg.dropbox / (name + d.SUFFIX)).exists():
        return Outcome("queued")
    if read_result(cfg, name) is not None:  # finished between our looks
        return job_outcome(cfg, spool, name)
    return Outcome("failed", reason=Reason.LOST, message=(
        "HPC job %s: %s in %s" % (name, "its result file is gone" if rec else
                                  "no description, spool record or result", cfg.dropbox)))


def untraced(cfg: Config, spool: Spool, name: str) -> bool:
    """No description, no spool record, no result: the job never reached the spool."""
    return not any((cfg.dropbox / (name + suffix)).exists()
                   for suffix in (d.SUFFIX, d.FINISHED_SUFFIX)) and spool.get(name) is None


# -- configuration --------------------------------------------------------------------
def with_galaxy_roots(cfg: Config, roots: list[str]) -> Config:
    """Allow Galaxy's own data directories as input and output roots."""
    extra = [Path(os.path.realpath(r)) for r in roots if r]
    return dataclasses.replace(
        cfg, allowed_input_roots=_merge(cfg.allowed_input_roots, extra),
        allowed_output_roots=_merge(cfg.allowed_output_roots, extra))


def _merge(old: list[Path], extra: list[Path]) -> list[Path]:
    return old + [path for path in extra if path not in old]


def pool_settings(params: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
    """The pool a destination uses and the pilot/scheduler settings it overrides."""
    overrides = {k: str(v) for k, v in params.items()
                 if k in POOL_PILOT_KEYS or k in POOL_SCHEDULER_KEYS}
    pool = str(params.get("pool") or "")
    if overrides and not pool:
        raise ConfigError("destination params %s need a 'pool' name: jobs of one pool share "
                          "its pilots" % ", ".join(sorted(overrides)))
    if pool and not re.match(r"^[A-Za-z0-9_.-]+$", pool):
        raise ConfigError("pool %r: use letters, digits, '.', '_', '-'" % pool)
    return pool or DEFAULT_POOL, overrides


def pool_config(base: Config, pool: str, overrides: Mapping[str, str]) -> Config:
    """A pool's config: the base one with its own spool, dropbox and workspace below it."""
    if pool == DEFAULT_POOL:
        return base
    try:
        changes: dict[str, Any] = {
            POOL_PILOT_KEYS[k]: int(v) if k == "slots" else parse_duration(v)
            for k, v in overrides.items() if k in POOL_PILOT_KEYS}
        pilot = dataclasses.replace(base.pilot, **changes)
    except ValueError as exc:
        raise ConfigError("pool %s: %s" % (pool, exc)) from exc
    scheduler = dict(base.scheduler)
    scheduler.update({k: v for k, v in overrides.items() if k in POOL_SCHEDULER_KEYS})
    dropbox = base.dropbox / "pools" / pool
    dropbox.mkdir(parents=True, exist_ok=True)
    hpc_env = dict(base.hpc_env, workspace=os.path.join(base.workspace, "pools", pool))
    return dataclasses.replace(
        base, dropbox=dropbox, spool=base.spool / "pools" / pool, hpc_env=hpc_env, pilot=pilot,
        scheduler=scheduler, max_pilots=int(scheduler.get("max_pilots", base.max_pilots)))


def check_walltime(value: object) -> object:
    """A destination's ``walltime`` as the description takes it; JobError if unreadable."""
    if value in (None, ""):
        return None
    try:
        parse_duration(value)
    except ValueError as exc:
        raise JobError("destination walltime: %s" % exc) from exc
    return value


# -- the batcher ----------------------------------------------------------------------
class Batcher:
    """Submitter passes in a thread of the Galaxy process, plus the cancels Galaxy asked for.

    Passes are the very ones the cron dropbox mode runs (``Submitter.run_pass``);
    a cancel is a ``NAME.cancel`` file in the dropbox, so one asked for just
    before a restart is still carried out after it.
    """

    def __init__(self, submitter: Submitter, interval: float, name: str = DEFAULT_POOL) -> None:
        self.submitter = submitter
        self.cfg = submitter.cfg
        self.interval = interval
        self.name = name
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="hpc-batcher-%s" % self.name,
                                        daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def request_cancel(self, name: str) -> None:
        p.atomic_write(str(self.cfg.dropbox / (name + CANCEL_SUFFIX)), "")
        self.wake()

    def _run(self) -> None:
        log.info("batcher %s started: spool %s, every %ss", self.name, self.cfg.spool,
                 self.interval)
        self.submitter.loop(self._stop, self.interval, wake=self._wake,
                            before_pass=self._cancels)
        log.info("batcher %s stopped", self.name)

    def _cancels(self) -> None:
        for fname in p.listdir(str(self.cfg.dropbox)):
            if fname.endswith(CANCEL_SUFFIX):
                self._cancel(fname[: -len(CANCEL_SUFFIX)])

    def _cancel(self, name: str) -> None:
        spool = self.submitter.spool
        with spool.lock(self.cfg.lock_timeout):
            if spool.get(name) is None:  # not received yet: it never will be
                consume(self.cfg, name)
                log.info("(%s) cancelled before the submitter read it", name)
                return
        answer = self.submitter.cancel(name)
        if answer != "cancel requested":  # withdrawn, or it ended: nothing more will come
            consume(self.cfg, name)
        log.info("(%s) cancel: %s", name, answer)
