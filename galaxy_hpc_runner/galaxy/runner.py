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
from galaxy.job_execution.output_collect import default_exit_code_file
from galaxy.jobs.runners import AsynchronousJobRunner, AsynchronousJobState
from galaxy.jobs.runners.util.job_script import SLOTS_STATEMENT_CLUSTER_DEFAULT
from galaxy.util import asbool

from galaxy_hpc_runner.config import Config, load_config
from galaxy_hpc_runner.dropbox import description as d
from galaxy_hpc_runner.dropbox.submitter import Submitter
from galaxy_hpc_runner.errors import ConfigError, HpcBatchError
from galaxy_hpc_runner.galaxy import batcher as gb
from galaxy_hpc_runner.galaxy import descriptions as gd
from galaxy_hpc_runner.galaxy import galaxy_script as gs
from galaxy_hpc_runner.galaxy import outcomes as go
from galaxy_hpc_runner.galaxy import staged
from galaxy_hpc_runner.galaxy.batcher import Batcher

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
    """A watched job: its spool name (the external id), pool, mode and last outcome."""

    def __init__(self, *, pool: str, mode: gd.Mode, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pool = pool
        self.mode = mode
        self.outcome: go.Outcome | None = None


class HpcBatchJobRunner(AsynchronousJobRunner):  # type: ignore[misc]
    runner_name = "HpcBatchRunner"
    start_methods: ClassVar[list[str]] = [
        "_init_batchers", "_init_monitor_thread", "_init_worker_threads"]

    def __init__(self, app: Any, nworkers: int, **kwargs: Any) -> None:
        super().__init__(app, nworkers, runner_param_specs=RUNNER_PARAM_SPECS, **kwargs)
        self._base = self._load_config()
        self._batchers: dict[str, Batcher] = {}
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
            cfg = gb.with_galaxy_roots(cfg, [str(conf.file_path), str(conf.new_file_path),
                                             str(conf.job_working_directory)])
        return cfg

    def _init_batchers(self) -> None:
        self._batcher(gb.DEFAULT_POOL, {})

    def _batcher(self, pool: str, overrides: dict[str, str]) -> Batcher:
        with self._lock:
            batcher = self._batchers.get(pool)
            if batcher is None:
                cfg = gb.pool_config(self._base, pool, overrides)
                interval = self.runner_params["interval"] or cfg.interval
                gs.install_template(cfg)  # before the first pass may read a description
                batcher = Batcher(Submitter(cfg), interval, pool)
                if self.runner_params["batcher"]:
                    batcher.start()
                self._batchers[pool] = batcher
            return batcher

    def _pool_for(self, params: dict[str, Any]) -> Batcher:
        return self._batcher(*gb.pool_settings(params))

    def shutdown(self) -> None:
        for batcher in list(self._batchers.values()):
            batcher.stop()
        super().shutdown()

    # -- submitting ------------------------------------------------------------------
    def queue_job(self, job_wrapper: Any) -> None:
        tag = job_wrapper.get_id_tag()
        params = job_wrapper.job_destination.params
        try:
            mode = gd.run_mode(params)
            staged.placement(params)  # a bad value fails now
            if mode == gd.Mode.TEMPLATE:  # refuse what it cannot carry, before anything runs
                gd.check_template_mode(job_wrapper.tool)
        except HpcBatchError as exc:
            log.info("(%s) cannot be run on HPC: %s", tag, exc)
            job_wrapper.fail(str(exc), job_stderr=str(exc))  # shown with the job
            return
        embedded = _embedded(mode, params, self._strategy(job_wrapper))
        if not self.prepare_job(job_wrapper, include_metadata=embedded):
            return
        name = gd.new_job_name(self.runner_params["job_prefix"], tag)
        try:
            batcher = self._pool_for(params)
            doc = self._description(job_wrapper, mode, batcher.cfg, name, write_script=True)
            checked = d.validate(name, doc, batcher.cfg)  # a bad run fails now, not later
        except HpcBatchError as exc:
            log.info("(%s) cannot be run on HPC: %s", tag, exc)
            job_wrapper.fail(str(exc), job_stderr=str(exc))  # shown with the job
            return
        except OSError as exc:
            log.exception("(%s) cannot write the job script", tag)
            job_wrapper.fail("Cannot prepare the HPC job script: %s" % exc)
            return
        shown = checked.rendered if mode == gd.Mode.TEMPLATE else None
        self._enqueue(job_wrapper, name, doc, batcher, mode, shown)

    def _enqueue(self, job_wrapper: Any, name: str, doc: dict[str, Any], batcher: Batcher,
                 mode: gd.Mode, command_line: str | None) -> None:
        tag = job_wrapper.get_id_tag()
        if job_wrapper.get_state() in GONE_STATES:
            log.debug("(%s) deleted before it reached the spool", tag)
            return
        if command_line is not None:  # template mode: show what runs, not the tool's <command>
            job_wrapper.command_line = command_line
            job_wrapper.get_job().command_line = command_line  # committed with the external id
        # The external id is in the database before the description exists, so a
        # restart at any instant either recovers this job or queues it afresh.
        job_wrapper.set_external_id(name)
        try:
            gd.write_description(batcher.cfg, name, doc)
        except OSError as exc:
            log.error("(%s/%s) cannot write the description: %s", tag, name, exc)
            job_wrapper.fail("Cannot queue the HPC job: %s" % exc)
            return
        batcher.wake()
        log.info("(%s/%s) queued in %s (%s mode)", tag, name, batcher.cfg.dropbox, mode)
        self.monitor_queue.put(self._job_state(job_wrapper, name, batcher.name, mode))

    def _job_state(self, job_wrapper: Any, name: str, pool: str, mode: gd.Mode) -> HpcJobState:
        ajs = HpcJobState(pool=pool, mode=mode, job_wrapper=job_wrapper,
                          job_destination=job_wrapper.job_destination,
                          files_dir=job_wrapper.working_directory, job_id=name)
        ajs.old_state = model.Job.states.QUEUED
        return ajs

    def _description(self, job_wrapper: Any, mode: gd.Mode, cfg: Config, name: str,
                     write_script: bool) -> dict[str, Any]:
        job = job_wrapper.get_job()
        tool = job_wrapper.tool
        params = dict(job_wrapper.job_destination.params)
        walltime = gd.check_walltime(params.get("walltime"))
        meta = {gd.META_GALAXY_JOB_ID: job.id, "tool_id": tool.id,
                "tool_version": tool.version, "mode": str(mode)}
        if mode == gd.Mode.GALAXY:
            script = HpcJobState.default_job_file(job_wrapper.working_directory,
                                                  job_wrapper.get_id_tag())
            if staged.placement(params) == staged.SEPARATE:
                if write_script:  # Galaxy's venv is not on the node: None, as Pulsar's
                    text = self._job_script(job_wrapper, cfg, galaxy_virtual_env=None)
                    staged.prepare(staged.GalaxyJob.of(job_wrapper, script, text), cfg, name)
                return staged.description(job_wrapper.working_directory, walltime, meta)
            if write_script:
                self.write_executable_script(script, self._job_script(job_wrapper, cfg),
                                             job_io=job_wrapper.job_io)
            return gs.description(script, job_wrapper.working_directory, walltime, meta)
        inputs = {assoc.name: assoc.dataset.get_file_name() for assoc in job.input_datasets
                  if assoc.dataset is not None}
        paths = {dp.dataset_id: dp.false_path or dp.real_path
                 for dp in job_wrapper.job_io.get_output_fnames()}
        outputs = {assoc.name: paths[assoc.dataset.dataset.id] for assoc in job.output_datasets}
        return gd.build_description(
            gd.template_for(tool.id, params), job_wrapper.get_param_dict(job), inputs, outputs,
            walltime=walltime, meta=meta)

    def _job_script(self, job_wrapper: Any, cfg: Config, **extra: Any) -> str:
        """Galaxy's own job script, as its DRMAA runner writes it, for this pilot's slots."""
        params = job_wrapper.job_destination.params
        tool = job_wrapper.tool
        gpu = gs.gpu_requested(getattr(tool, "requirements", ()),
                               getattr(tool, "resource_requirements", ()))
        script = self.get_job_file(
            job_wrapper, exit_code_path=default_exit_code_file(
                job_wrapper.working_directory, job_wrapper.get_id_tag()),
            shell=job_wrapper.shell, env_setup_commands=gs.gpu_statements(gpu),
            slots_statement=gs.slots_statement(SLOTS_STATEMENT_CLUSTER_DEFAULT, cfg.pilot.slots,
                                               params.get("galaxy_slots")), **extra)
        return str(script)

    # -- watching --------------------------------------------------------------------
    def check_watched_item(self, job_state: HpcJobState) -> HpcJobState | None:
        name = job_state.job_id
        if name in self._stopped:  # deleted in Galaxy: stop_job asked for the cancel
            self._stopped.discard(name)
            return None
        batcher = self._batchers[job_state.pool]
        outcome = go.job_outcome(batcher.cfg, batcher.submitter.spool, name)
        if outcome.action == go.Action.WAIT:
            return job_state
        if outcome.action == go.Action.RUN:
            if not job_state.running:
                job_state.running = True
                job_state.job_wrapper.change_state(model.Job.states.RUNNING)
                log.debug("(%s/%s) running", job_state.job_wrapper.job_id, name)
            return job_state
        job_state.outcome = outcome
        job_state.stop_job = False  # it has ended: nothing to cancel
        if outcome.action == go.Action.FINISH:
            self.mark_as_finished(job_state)
        else:
            job_state.fail_message = outcome.message
            job_state.runner_state = outcome.runner_state
            self.mark_as_failed(job_state)
        return None

    def finish_job(self, job_state: HpcJobState) -> None:
        """Hand the run to Galaxy's own checks: streams, exit code, outputs, metrics."""
        outcome = job_state.outcome
        assert outcome is not None and outcome.rc is not None  # never a default exit 0
        workdir = job_state.job_wrapper.working_directory
        if job_state.mode == gd.Mode.GALAXY and not self._collected(job_state):
            return
        if job_state.mode == gd.Mode.GALAXY and not gs.tool_ran(workdir):
            self.fail_job(job_state, message=gs.not_run_message(outcome.rc, outcome.stderr))
            return
        try:
            if job_state.mode == gd.Mode.GALAXY:  # Galaxy's script wrote the tool's files
                go.write_all(go.job_script_streams(job_state, outcome))
            else:
                go.write_all(go.template_streams(job_state, outcome))
            wrapper = job_state.job_wrapper
            if not _embedded(job_state.mode, wrapper.job_destination.params,
                             self._strategy(wrapper)) and self._metadata_on_host(wrapper):
                self._set_metadata(job_state)
            self._record_metrics(job_state, outcome)  # after metadata: it reloads the job
            super().finish_job(job_state)
        finally:
            self._consume(job_state)

    def _collected(self, job_state: HpcJobState) -> bool:
        """Staged placement: what the job wrote, back in Galaxy's job directory (else the
        job is failed, naming why)."""
        wrapper = job_state.job_wrapper
        if staged.placement(wrapper.job_destination.params) != staged.SEPARATE:
            return True
        try:
            staged.collect(wrapper.working_directory, job_state.exit_code_file)
        except HpcBatchError as exc:
            log.error("(%s/%s) %s", wrapper.job_id, job_state.job_id, exc)
            self.fail_job(job_state, message="Collecting the staged job failed: %s" % exc)
            return False
        return True

    def fail_job(self, job_state: Any, exception: bool = False, message: str = "Job failed",
                 full_status: dict[str, Any] | None = None) -> None:
        outcome = getattr(job_state, "outcome", None)
        if outcome is not None and full_status is None:
            full_status = {"stdout": outcome.stdout, "stderr": outcome.stderr}
        try:
            if isinstance(job_state, HpcJobState) and outcome is not None:
                self._record_metrics(job_state, outcome)
            super().fail_job(job_state, exception=exception, message=message,
                             full_status=full_status)
        finally:
            if isinstance(job_state, HpcJobState) and outcome is not None:
                self._consume(job_state)

    def _strategy(self, job_wrapper: Any) -> str:
        """``metadata_strategy``: the destination's, else Galaxy's."""
        return str(job_wrapper.metadata_strategy or self.app.config.metadata_strategy)

    def _metadata_on_host(self, job_wrapper: Any) -> bool:
        """Metadata not set in the job: unless Galaxy may set it in-process (directory
        strategy, ``retry_metadata_internally``: per destination, else global), set it here
        (celery strategies: Galaxy's metadata task, as its local runner does)."""
        strategy = self._strategy(job_wrapper)
        retry = asbool(job_wrapper.get_destination_configuration(
            "retry_metadata_internally", True))
        return "extended" in strategy or "celery" in strategy or not retry

    def _set_metadata(self, job_state: HpcJobState) -> None:
        """Template mode: set metadata on the Galaxy host, as Galaxy's Pulsar runner does."""
        try:
            self._handle_metadata_externally(job_state.job_wrapper, resolve_requirements=True)
        except Exception:  # Galaxy's finish then reports the metadata failure itself
            log.exception("(%s/%s) setting metadata failed", job_state.job_wrapper.job_id,
                          job_state.job_id)

    def _record_metrics(self, job_state: HpcJobState, outcome: go.Outcome) -> None:
        """Pilot, host, slot and device as job metrics (plugin ``hpc_batch``)."""
        values: dict[str, Any] = {"job": job_state.job_id, "mode": str(job_state.mode)}
        values.update(go.metrics(outcome.node))
        values.update(gs.slot_info(job_state.job_wrapper.working_directory))
        try:
            job = job_state.job_wrapper.get_job()
            for key, value in values.items():
                job.add_metric("hpc_batch", key, value)
        except Exception:  # metrics are a courtesy: never lose the outcome for them
            log.exception("(%s) cannot record job metrics", job_state.job_id)

    def _consume(self, job_state: HpcJobState) -> None:
        batcher = self._batchers.get(job_state.pool)
        if batcher is not None:
            gd.consume(batcher.cfg, job_state.job_id)

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
            params = job_wrapper.job_destination.params
            mode = gd.run_mode(params)
            batcher = self._pool_for(params)
        except HpcBatchError as exc:
            job_wrapper.fail("Cannot recover HPC job %s: %s" % (name, exc))
            return
        ajs = self._job_state(job_wrapper, name, batcher.name, mode)
        if job.state in (model.Job.states.RUNNING, model.Job.states.STOPPED):
            ajs.old_state = model.Job.states.RUNNING
            ajs.running = True
        self._resubmit_if_untraced(job_wrapper, name, batcher, mode)
        log.info("(%s/%s) recovered in state %s", job.id, name, job.state)
        self.monitor_queue.put(ajs)

    def _resubmit_if_untraced(self, job_wrapper: Any, name: str, batcher: Batcher,
                              mode: gd.Mode) -> None:
        """Galaxy stopped between recording the id and writing the description: write it."""
        if not go.untraced(batcher.cfg, batcher.submitter.spool, name):
            return
        try:  # the job script was written before the id was recorded
            doc = self._description(job_wrapper, mode, batcher.cfg, name, write_script=False)
            gd.write_description(batcher.cfg, name, doc)
        except Exception:  # the monitor then reports the job lost, never ok
            log.exception("(%s/%s) cannot write its description again", job_wrapper.job_id, name)
            return
        log.warning("(%s/%s) had no description after a restart: written again",
                    job_wrapper.job_id, name)
        batcher.wake()


def _embedded(mode: gd.Mode, params: Any, strategy: str) -> bool:
    """Metadata is set inside the job script: Galaxy-script mode on a shared file system,
    unless turned off or a celery strategy (Galaxy's local runner's rule)."""
    return mode == gd.Mode.GALAXY and "celery" not in strategy and \
        staged.placement(params) == staged.SHARED and bool(
        asbool(params.get("embed_metadata_in_job", True)))
