"""The Galaxy job runner: every run of a mapped tool becomes a job description in our spool.

Load it from ``job_conf.yml`` (see job_conf.example.yml and docs/galaxy.md)::

    runners:
      hpc:
        load: galaxy_hpc_runner.galaxy.runner:HpcBatchJobRunner
        config_file: /srv/hpc-batch/hpc-batch.ini

A batcher thread started with the runner runs the submitter passes the cron
dropbox mode runs (stage, follow, collect, keep one pilot queued), and the
monitor thread maps each job's spool state to Galaxy's. No thread ever waits
on a job. This is the only module of the package that imports ``galaxy``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from pathlib import Path
from typing import Any, ClassVar

from galaxy import model
from galaxy.jobs.runners import AsynchronousJobRunner, AsynchronousJobState
from galaxy.util import asbool

from galaxy_hpc_runner.config import Config, load_config
from galaxy_hpc_runner.dropbox import description as d
from galaxy_hpc_runner.dropbox.submitter import Submitter
from galaxy_hpc_runner.errors import ConfigError, HpcBatchError
from galaxy_hpc_runner.galaxy import tool_runs as gj

log = logging.getLogger(__name__)

__all__ = ("HpcBatchJobRunner",)

RUNNER_PARAM_SPECS: dict[str, dict[str, Any]] = {
    "config_file": {"map": str, "default": ""},
    "spool": {"map": str, "default": ""},  # overrides [spool] path
    "dropbox": {"map": str, "default": ""},  # overrides [dropbox] path
    "interval": {"map": float, "valid": lambda x: float(x) > 0, "default": 0.0},
    "batcher": {"map": asbool, "default": True},
    "job_prefix": {"map": str, "valid": lambda x: bool(x) and "@" not in x,
                   "default": "galaxy"},
    "allow_galaxy_paths": {"map": asbool, "default": True},
}
GONE_STATES = (model.Job.states.DELETED, model.Job.states.DELETING, model.Job.states.STOPPED)


class HpcJobState(AsynchronousJobState):  # type: ignore[misc]
    """A watched job: its spool name (the external id), its pool and its last outcome."""

    def __init__(self, *, pool: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pool = pool
        self.outcome: gj.Outcome | None = None


class HpcBatchJobRunner(AsynchronousJobRunner):  # type: ignore[misc]
    runner_name = "HpcBatchRunner"
    start_methods: ClassVar[list[str]] = [
        "_init_batchers", "_init_monitor_thread", "_init_worker_threads"]

    def __init__(self, app: Any, nworkers: int, **kwargs: Any) -> None:
        super().__init__(app, nworkers, runner_param_specs=RUNNER_PARAM_SPECS, **kwargs)
        self._base = self._load_config()
        self._batchers: dict[str, gj.Batcher] = {}
        self._lock = threading.Lock()
        self._stopped: set[str] = set()

    # -- configuration and batchers --------------------------------------------------
    def _load_config(self) -> Config:
        params = self.runner_params
        if not params["config_file"]:
            raise ConfigError("runner %s: the runner param config_file is required"
                              % self.runner_name)
        cfg = load_config(params["config_file"])
        if params["spool"]:  # the runner's params win over the INI file
            cfg = dataclasses.replace(cfg, spool=Path(os.path.realpath(params["spool"])))
        if params["dropbox"]:
            cfg = dataclasses.replace(cfg, dropbox=Path(os.path.realpath(params["dropbox"])))
        if params["allow_galaxy_paths"]:
            conf = self.app.config
            cfg = gj.with_galaxy_roots(cfg, [str(conf.file_path), str(conf.new_file_path),
                                             str(conf.job_working_directory)])
        return cfg

    def _init_batchers(self) -> None:
        self._batcher(gj.DEFAULT_POOL, {})

    def _batcher(self, pool: str, overrides: dict[str, str]) -> gj.Batcher:
        with self._lock:
            batcher = self._batchers.get(pool)
            if batcher is None:
                cfg = gj.pool_config(self._base, pool, overrides)
                interval = self.runner_params["interval"] or cfg.interval
                batcher = gj.Batcher(Submitter(cfg), interval, pool)
                if self.runner_params["batcher"]:
                    batcher.start()
                self._batchers[pool] = batcher
            return batcher

    def _pool_for(self, params: dict[str, Any]) -> gj.Batcher:
        return self._batcher(*gj.pool_settings(params))

    def shutdown(self) -> None:
        for batcher in list(self._batchers.values()):
            batcher.stop()
        super().shutdown()

    # -- submitting ------------------------------------------------------------------
    def queue_job(self, job_wrapper: Any) -> None:
        if not self.prepare_job(job_wrapper, include_metadata=False):
            return
        tag = job_wrapper.get_id_tag()
        destination = job_wrapper.job_destination
        name = gj.new_job_name(self.runner_params["job_prefix"], tag)
        try:
            batcher = self._pool_for(destination.params)
            doc = self._description(job_wrapper)
            d.validate(name, doc, batcher.cfg)  # a bad run fails now, not after a pass
        except HpcBatchError as exc:
            log.info("(%s) cannot be run on HPC: %s", tag, exc)
            job_wrapper.fail(str(exc))
            return
        if job_wrapper.get_state() in GONE_STATES:
            log.debug("(%s) deleted before it reached the spool", tag)
            return
        # The external id is in the database before the description exists, so a
        # restart at any instant either recovers this job or queues it afresh.
        job_wrapper.set_external_id(name)
        try:
            gj.write_description(batcher.cfg, name, doc)
        except OSError as exc:
            log.error("(%s/%s) cannot write the description: %s", tag, name, exc)
            job_wrapper.fail("Cannot queue the HPC job: %s" % exc)
            return
        batcher.wake()
        log.info("(%s/%s) queued in %s", tag, name, batcher.cfg.dropbox)
        self.monitor_queue.put(self._job_state(job_wrapper, name, batcher.name))

    def _job_state(self, job_wrapper: Any, name: str, pool: str) -> HpcJobState:
        ajs = HpcJobState(pool=pool, job_wrapper=job_wrapper,
                          job_destination=job_wrapper.job_destination,
                          files_dir=job_wrapper.working_directory, job_id=name)
        ajs.old_state = model.Job.states.QUEUED
        return ajs

    def _description(self, job_wrapper: Any) -> dict[str, Any]:
        """Tool run -> description, by the convention of docs/galaxy.md."""
        job = job_wrapper.get_job()
        tool = job_wrapper.tool
        params = dict(job_wrapper.job_destination.params)
        inputs = {assoc.name: assoc.dataset.get_file_name() for assoc in job.input_datasets
                  if assoc.dataset is not None}
        paths = {dp.dataset_id: dp.false_path or dp.real_path
                 for dp in job_wrapper.job_io.get_output_fnames()}
        outputs = {assoc.name: paths[assoc.dataset.dataset.id] for assoc in job.output_datasets}
        return gj.build_description(
            gj.template_for(tool.id, params), job_wrapper.get_param_dict(job), inputs, outputs,
            walltime=gj.check_walltime(params.get("walltime")),
            meta={"galaxy_job": job.id, "tool_id": tool.id, "tool_version": tool.version})

    # -- watching --------------------------------------------------------------------
    def check_watched_item(self, job_state: HpcJobState) -> HpcJobState | None:
        name = job_state.job_id
        if name in self._stopped:  # deleted in Galaxy: stop_job asked for the cancel
            self._stopped.discard(name)
            return None
        cfg = self._batchers[job_state.pool].cfg
        outcome = gj.job_outcome(cfg, self._batchers[job_state.pool].submitter.spool, name)
        if outcome.state == "queued":
            return job_state
        if outcome.state == "running":
            if not job_state.running:
                job_state.running = True
                job_state.job_wrapper.change_state(model.Job.states.RUNNING)
                log.debug("(%s/%s) running", job_state.job_wrapper.job_id, name)
            return job_state
        job_state.outcome = outcome
        job_state.stop_job = False  # it has ended: nothing to cancel
        if outcome.state == "finished":
            self.mark_as_finished(job_state)
        else:
            job_state.fail_message = outcome.message
            job_state.runner_state = outcome.runner_state
            self.mark_as_failed(job_state)
        return None

    def finish_job(self, job_state: HpcJobState) -> None:
        """Hand the tool's stdout, stderr and exit code to Galaxy's own checks."""
        outcome = job_state.outcome
        assert outcome is not None and outcome.rc is not None  # never a default exit 0
        self._write_streams(job_state, outcome)
        try:
            super().finish_job(job_state)
        finally:
            self._consume(job_state)

    def fail_job(self, job_state: Any, exception: bool = False, message: str = "Job failed",
                 full_status: dict[str, Any] | None = None) -> None:
        outcome = getattr(job_state, "outcome", None)
        if outcome is not None and full_status is None:
            full_status = {"stdout": outcome.stdout, "stderr": outcome.stderr}
        try:
            super().fail_job(job_state, exception=exception, message=message,
                             full_status=full_status)
        finally:
            if isinstance(job_state, HpcJobState) and outcome is not None:
                self._consume(job_state)

    def _write_streams(self, job_state: HpcJobState, outcome: gj.Outcome) -> None:
        work = job_state.job_wrapper.working_directory
        outputs = os.path.join(work, "outputs")
        streams = outputs if os.path.isdir(outputs) else work
        node = outcome.node
        files = {
            os.path.join(streams, "tool_stdout"): outcome.stdout,
            os.path.join(streams, "tool_stderr"): outcome.stderr,
            job_state.output_file: "hpc-batch job %s: %s (pilot %s on %s)\n" % (
                job_state.job_id, node.get("message"), node.get("pilot"), node.get("host")),
            job_state.error_file: "",
            job_state.exit_code_file: "%s\n" % outcome.rc,
        }
        for path, text in files.items():
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(text)

    def _consume(self, job_state: HpcJobState) -> None:
        batcher = self._batchers.get(job_state.pool)
        if batcher is not None:
            gj.consume(batcher.cfg, job_state.job_id)

    # -- stop and recover ------------------------------------------------------------
    def stop_job(self, job_wrapper: Any) -> None:
        """Withdraw a waiting job or kill a running one; the batcher does it, we never wait."""
        job = job_wrapper.get_job()
        name = job.get_job_runner_external_id()
        if not name:
            return
        try:
            batcher = self._pool_for(job_wrapper.job_destination.params)
        except HpcBatchError as exc:
            log.error("(%s/%s) cannot cancel: %s", job.id, name, exc)
            return
        self._stopped.add(name)
        batcher.request_cancel(name)
        log.info("(%s/%s) cancel requested", job.id, name)

    def recover(self, job: Any, job_wrapper: Any) -> None:
        """Watch a job again after a restart, whatever state the spool has it in."""
        name = job.get_job_runner_external_id()
        if not name:
            self.put(job_wrapper)
            return
        try:
            batcher = self._pool_for(job_wrapper.job_destination.params)
        except HpcBatchError as exc:
            job_wrapper.fail("Cannot recover HPC job %s: %s" % (name, exc))
            return
        ajs = self._job_state(job_wrapper, name, batcher.name)
        if job.state in (model.Job.states.RUNNING, model.Job.states.STOPPED):
            ajs.old_state = model.Job.states.RUNNING
            ajs.running = True
        self._resubmit_if_untraced(job_wrapper, name, batcher)
        log.info("(%s/%s) recovered in state %s", job.id, name, job.state)
        self.monitor_queue.put(ajs)

    def _resubmit_if_untraced(self, job_wrapper: Any, name: str, batcher: gj.Batcher) -> None:
        """Galaxy stopped between recording the id and writing the description: write it."""
        if not gj.untraced(batcher.cfg, batcher.submitter.spool, name):
            return
        try:
            gj.write_description(batcher.cfg, name, self._description(job_wrapper))
        except Exception:  # the monitor then reports the job lost, never ok
            log.exception("(%s/%s) cannot write its description again", job_wrapper.job_id, name)
            return
        log.warning("(%s/%s) had no description after a restart: written again",
                    job_wrapper.job_id, name)
        batcher.wake()
