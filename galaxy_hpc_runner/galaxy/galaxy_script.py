"""Galaxy-script mode: the pilot runs the very job script Galaxy's batch runners submit.

The runner prepares the job as Galaxy's DRMAA runner does (``prepare_job``, then
``get_job_file``: metrics, ``GALAXY_SLOTS``, dependency or container wrapping,
metadata) and writes the script into the job's working directory. The job
description names the site template ``galaxy_job`` (``galaxy_job.sh``, package data
of this package, put into the site's templates directory when missing) with two
arguments, the script and the working directory; nothing is copied (shared file
system placement: the working directory and the datasets are visible on the node).
The staged placement (``galaxy_job_staged.sh``) is in :mod:`.staged`.

The template leaves ``hpc_batch_slot.txt`` in the working directory (slot,
device, host as the job saw them) for the job metrics Galaxy records.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from galaxy_hpc_runner.config import Config
from galaxy_hpc_runner.dropbox.templates import SUFFIX as TEMPLATE_SUFFIX
from galaxy_hpc_runner.errors import ConfigError, JobError
from hpc_worker import protocol as p
from hpc_worker.records import ProtocolError, read_bounded

log = logging.getLogger(__name__)

TEMPLATE = "galaxy_job"
SLOT_FILE = "hpc_batch_slot.txt"
STAGED_TEMPLATE = "galaxy_job_staged"


def _packaged(template: str) -> str:
    """A template shipped in this package (``galaxy_hpc_runner/galaxy/NAME.sh``)."""
    return resources.files(__package__).joinpath(template + TEMPLATE_SUFFIX).read_text(
        encoding="utf-8")


TEMPLATE_TEXT = _packaged(TEMPLATE)
STAGED_TEMPLATE_TEXT = _packaged(STAGED_TEMPLATE)

# Galaxy's cluster statement finds the CPUs of the whole allocation (the pilot's);
# a pilot runs SLOTS jobs at once, so each job gets its share.
SLOTS_SHARE = """
# hpc-batch: this pilot runs {slots} job(s) at once; each gets its share of the CPUs
if [ -n "$GALAXY_SLOTS_CONFIGURED" ] && [ "$GALAXY_SLOTS" -ge {slots} ] 2>/dev/null; then
    GALAXY_SLOTS=$((GALAXY_SLOTS / {slots}))
fi
export GALAXY_SLOTS
"""
SLOTS_FIXED = """export GALAXY_SLOTS_CONFIGURED="1"
GALAXY_SLOTS={slots}
export GALAXY_SLOTS
"""


def install_template(cfg: Config) -> Path:
    """Make sure the site's templates directory has ``galaxy_job.sh`` and
    ``galaxy_job_staged.sh`` (this package's); ConfigError if it cannot.

    A site's own version (e.g. with a ``module load``) is kept as it is.
    """
    _install(cfg, STAGED_TEMPLATE, STAGED_TEMPLATE_TEXT)
    return _install(cfg, TEMPLATE, TEMPLATE_TEXT)


def _install(cfg: Config, name: str, shipped: str) -> Path:
    path = cfg.templates / (name + TEMPLATE_SUFFIX)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = None
    except OSError as exc:
        raise ConfigError("cannot read the Galaxy-script template %s: %s" % (path, exc)) from exc
    if text is None:
        try:
            p.atomic_write(str(path), shipped)
        except OSError as exc:
            raise ConfigError(
                "Galaxy-script mode needs the template %s and cannot write it (%s): copy "
                "galaxy_hpc_runner/galaxy/%s%s there, or make [templates] path writable"
                % (path, exc, name, TEMPLATE_SUFFIX)) from exc
        log.info("installed the Galaxy-script template %s", path)
    elif text != shipped:
        log.info("using the site's own Galaxy-script template %s", path)
    return path


def slots_statement(cluster_default: str, pilot_slots: int, fixed: object = None) -> str:
    """The ``GALAXY_SLOTS`` part of the job script (destination param ``galaxy_slots`` wins)."""
    if fixed not in (None, ""):
        try:
            value = int(str(fixed))
        except ValueError:
            value = 0
        if value < 1:
            raise JobError("destination param galaxy_slots=%r: give a whole number >= 1" % (fixed,))
        return SLOTS_FIXED.format(slots=value)
    if pilot_slots <= 1:
        return cluster_default
    return cluster_default.rstrip("\n") + "\n" + SLOTS_SHARE.format(slots=int(pilot_slots))


def gpu_requested(requirements: Any, resources: Any = ()) -> bool:
    """``<requirement type="compute">gpu</requirement>`` or a CUDA device count resource."""
    for req in requirements or ():
        if getattr(req, "type", "") == "compute" and getattr(req, "name", "") == "gpu":
            return True
    for res in resources or ():
        if getattr(res, "resource_type", "") == "cuda_device_count_min":
            try:
                return float(res.value_or_expression) > 0
            except (TypeError, ValueError):
                return True
    return False


def gpu_statements(gpu: bool) -> list[str]:
    """Galaxy's ``GALAXY_GPU_ENABLED``: true where the tool asked for a GPU (the slot's)."""
    if gpu:
        return ['GALAXY_GPU_ENABLED="true"; export GALAXY_GPU_ENABLED']
    return ['GALAXY_GPU_ENABLED="false"; export GALAXY_GPU_ENABLED']


def description(job_script: str, workdir: str, walltime: object = None,
                meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``NAME.job`` document: the template, Galaxy's script and its directory."""
    doc: dict[str, Any] = {"script": TEMPLATE, "args": {
        "job_script": os.path.abspath(job_script), "workdir": os.path.abspath(workdir)}}
    if walltime not in (None, ""):
        doc["walltime"] = walltime
    if meta:
        doc["meta"] = dict(meta)
    return doc


def tool_ran(workdir: str) -> bool:
    """Galaxy's script got as far as the tool: its stdout file is there."""
    return any(os.path.exists(os.path.join(workdir, sub, "tool_stdout"))
               for sub in ("outputs", ""))


def not_run_message(rc: int | None, stderr: str) -> str:
    tail = stderr.strip()[-2000:] or "(no stderr)"
    return "Galaxy's job script ended with exit code %s before the tool ran: %s" % (rc, tail)


def slot_info(workdir: str) -> dict[str, str]:
    """What the template recorded about the slot (empty if it never ran or looks wrong)."""
    try:
        text = read_bounded(os.path.join(workdir, SLOT_FILE), 4096).decode("utf-8", "replace")
    except (OSError, ProtocolError):
        return {}
    info = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key in ("slot", "gpu", "host"):
            info[key] = value.strip()
    return info
