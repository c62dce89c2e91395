"""What Galaxy should do about a job now, read from the spool and the job's result file.

Galaxy-free, so it is tested without a server. The runner maps an
:class:`Outcome` onto Galaxy calls: wait, mark running, finish (Galaxy's own
checks of stdout, stderr and exit code decide) or fail (with a runner state
Galaxy's resubmission rules understand).
"""

from __future__ import annotations

import dataclasses
import enum
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from galaxy_hpc_runner.config import Config
from galaxy_hpc_runner.dropbox import description as d
from galaxy_hpc_runner.dropbox.spool import CLAIMED, FINISHED, Spool
from hpc_worker.states import Reason, ResultStatus

WALLTIME_REACHED = "walltime_reached"  # Galaxy's runner_states values
MEMORY_LIMIT_REACHED = "memory_limit_reached"
MEMORY_PATTERNS = re.compile(
    r"out of memory|MemoryError|std::bad_alloc|oom-kill|Cannot allocate memory", re.IGNORECASE)


class Action(str, enum.Enum):
    """What the runner does with a watched job."""

    WAIT = "wait"  # still queued: nothing to tell Galaxy
    RUN = "run"  # a pilot runs it: Galaxy shows running
    FINISH = "finish"  # hand stdout, stderr and exit code to Galaxy's checks
    FAIL = "fail"  # fail with ``message`` (``runner_state`` for resubmission)

    def __str__(self) -> str:
        return self.value


@dataclass
class Outcome:
    """One look at a job: the action, and what its result file said."""

    action: Action
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
    out = Outcome(Action.FAIL, message=str(node.get("message") or "HPC job failed"),
                  stdout=str(node.get("stdout") or ""), stderr=str(node.get("stderr") or ""),
                  rc=rc if isinstance(rc, int) and not isinstance(rc, bool) else None,
                  reason=reason, node=dict(node))
    if node.get("status") == ResultStatus.OK and out.rc == 0:
        out.action = Action.FINISH
    elif reason == Reason.WALLTIME:
        out.runner_state = WALLTIME_REACHED
    elif reason == Reason.FAILED and out.rc is not None:
        if memory_exhausted(out.rc, out.stderr):
            out.runner_state = MEMORY_LIMIT_REACHED
        else:
            out.action = Action.FINISH  # the tool's exit code and stdio rules decide
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
        return Outcome(Action.FAIL, message="Unreadable result file %s" % path,
                       reason=Reason.INVALID)
    return outcome_from_node(node)


def job_outcome(cfg: Config, spool: Spool, name: str) -> Outcome:
    """Queued, running or done; a job with no trace at all is lost, never ok."""
    result = read_result(cfg, name)
    if result is not None:
        return result
    rec = spool.get(name)
    if rec is not None and rec.state != FINISHED:
        return Outcome(Action.RUN if rec.state == CLAIMED else Action.WAIT)
    if rec is None and (cfg.dropbox / (name + d.SUFFIX)).exists():
        return Outcome(Action.WAIT)
    if read_result(cfg, name) is not None:  # finished between our looks
        return job_outcome(cfg, spool, name)
    return Outcome(Action.FAIL, reason=Reason.LOST, message=(
        "HPC job %s: %s in %s" % (name, "its result file is gone" if rec else
                                  "no description, spool record or result", cfg.dropbox)))


def untraced(cfg: Config, spool: Spool, name: str) -> bool:
    """No description, no spool record, no result: the job never reached the spool."""
    return not any((cfg.dropbox / (name + suffix)).exists()
                   for suffix in (d.SUFFIX, d.FINISHED_SUFFIX)) and spool.get(name) is None


def metrics(node: Mapping[str, Any]) -> dict[str, str | int | float]:
    """The job metrics Galaxy records for a run on a pilot (plugin ``hpc_batch``)."""
    out: dict[str, str | int | float] = {}
    for key in ("pilot", "host", "start", "end", "attempts", "slot", "gpu"):
        value = node.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = value
        elif value not in (None, ""):
            out[key] = str(value)
    return out


# -- the files Galaxy's finish_job reads ------------------------------------------------
def job_script_streams(job_state: Any, outcome: Outcome) -> dict[str, str]:
    """Galaxy-script mode: the script's own streams; its exit code file only if the
    script never wrote it (it writes the tool's ``outputs/tool_stdout`` itself)."""
    files = {job_state.output_file: outcome.stdout, job_state.error_file: outcome.stderr}
    if not os.path.exists(job_state.exit_code_file):
        files[job_state.exit_code_file] = "%s\n" % outcome.rc
    return files


def template_streams(job_state: Any, outcome: Outcome) -> dict[str, str]:
    """Template mode: the template's streams are the tool's; the exit code from ``rc``."""
    work = job_state.job_wrapper.working_directory
    outputs = os.path.join(work, "outputs")
    streams = outputs if os.path.isdir(outputs) else work
    node = outcome.node
    return {
        os.path.join(streams, "tool_stdout"): outcome.stdout,
        os.path.join(streams, "tool_stderr"): outcome.stderr,
        job_state.output_file: "hpc-batch job %s: %s (pilot %s on %s)\n" % (
            job_state.job_id, node.get("message"), node.get("pilot"), node.get("host")),
        job_state.error_file: "",
        job_state.exit_code_file: "%s\n" % outcome.rc,
    }


def write_all(files: Mapping[str, str]) -> None:
    for path, text in files.items():
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
