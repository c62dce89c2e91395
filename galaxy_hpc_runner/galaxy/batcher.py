"""Pools of pilots and the batcher thread that drives their submitter passes inside Galaxy.

A destination that names ``pool: NAME`` gets its own spool, dropbox and workspace
below the default ones, with its own pilot and scheduler settings; each pool has
one :class:`Batcher`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from galaxy_hpc_runner.config import Config, parse_duration
from galaxy_hpc_runner.dropbox.submitter import Submitter
from galaxy_hpc_runner.errors import ConfigError
from galaxy_hpc_runner.galaxy.descriptions import CANCEL_SUFFIX, consume
from hpc_worker import protocol as p

log = logging.getLogger(__name__)

# Destination params that make a pool of its own (own workspace, spool and pilots).
POOL_PILOT_KEYS = {"slots": "slots", "pilot_walltime": "walltime", "idle_timeout": "idle_timeout"}
POOL_SCHEDULER_KEYS = {"partition", "gres", "mem", "cpus", "account", "qos", "time",
                       "extra_args", "native_spec", "max_pilots"}
DEFAULT_POOL = "default"


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
                stager = self.submitter.stager
                if stager.t.exists(stager.job_path(name)):  # staged by a pass killed before
                    return  # its first record: the next pass receives it, then this cancel
                consume(self.cfg, name)
                log.info("(%s) cancelled before the submitter read it", name)
                return
        answer = self.submitter.cancel(name)
        if answer != "cancel requested":  # withdrawn, or it ended: nothing more will come
            consume(self.cfg, name)
        log.info("(%s) cancel: %s", name, answer)
