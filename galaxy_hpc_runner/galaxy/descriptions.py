"""Job descriptions from Galaxy tool runs, in either mode, and their dropbox files.

Galaxy-free: ``runner.py`` turns Galaxy objects into plain values (or hands over
the tool's parameter tree, read by attribute only) and calls these helpers.

Two modes (destination param ``mode``, docs/galaxy.md):

- ``galaxy`` (the default): Galaxy's own job script runs on the pilot
  (:mod:`galaxy_hpc_runner.galaxy.galaxy_script`).
- ``template``: the tool's parameters fill a site template (the AMP
  containers). Non-data parameters become ``args`` by their last name, data
  inputs ``input_map``, outputs ``output_map``. What that cannot carry
  faithfully (repeats, same-named parameters, several datasets per parameter,
  collections, discovered outputs) is refused before anything runs.
"""

from __future__ import annotations

import contextlib
import enum
import os
import re
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from galaxy_hpc_runner.config import Config, parse_duration
from galaxy_hpc_runner.dropbox import description as d
from galaxy_hpc_runner.errors import ConfigError, JobError
from hpc_worker import protocol as p

CANCEL_SUFFIX = ".cancel"
SKIPPED_PARAMS = {"chromInfo", "dbkey", "userId", "userEmail"}
META_GALAXY_JOB_ID = "galaxy_job_id"  # the description's meta key `hpc-batch show` finds jobs by

Scalar = str | int | float | bool | None


class Mode(str, enum.Enum):
    """How a tool run becomes a job (destination param ``mode``)."""

    GALAXY = "galaxy"  # Galaxy's own job script
    TEMPLATE = "template"  # a site template filled from the parameters

    def __str__(self) -> str:
        return self.value


def run_mode(params: Mapping[str, Any]) -> Mode:
    """The destination's ``mode``; a ``template`` param alone means template mode."""
    value = str(params.get("mode") or "").strip().lower()
    if not value:
        return Mode.TEMPLATE if params.get("template") else Mode.GALAXY
    try:
        return Mode(value)
    except ValueError:
        raise ConfigError("destination param mode=%r: use %s" % (
            value, " or ".join(m.value for m in Mode))) from None


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


def check_walltime(value: object) -> object:
    """A destination's ``walltime`` as the description takes it; JobError if unreadable."""
    if value in (None, ""):
        return None
    try:
        parse_duration(value)
    except ValueError as exc:
        raise JobError("destination walltime: %s" % exc) from exc
    return value


# -- what template mode can carry -----------------------------------------------------
@dataclass(frozen=True)
class ParamShape:
    """One parameter of a tool: its path (``sect|name``; ``#N`` marks conditional case N)."""

    path: tuple[str, ...]
    kind: str  # the Galaxy parameter type: data, data_collection, repeat, text, ...
    multiple: bool = False

    @property
    def name(self) -> str:
        return "|".join(part for part in self.path if not part.startswith("#"))


def tool_shape(inputs: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[ParamShape]:
    """Walk a Galaxy tool's ``inputs`` tree (read by attribute: type, inputs, cases)."""
    for name, param in inputs.items():
        kind = str(getattr(param, "type", "") or "")
        path = (*prefix, name)
        if kind == "section":
            yield from tool_shape(getattr(param, "inputs", {}) or {}, path)
        elif kind == "conditional":
            test = getattr(param, "test_param", None)
            if test is not None:
                yield ParamShape((*path, str(getattr(test, "name", ""))), "select")
            for index, case in enumerate(getattr(param, "cases", []) or []):
                yield from tool_shape(getattr(case, "inputs", {}) or {}, (*path, "#%d" % index))
        else:  # a repeat is not entered: template mode cannot carry one at all
            yield ParamShape(path, kind, kind == "data" and bool(getattr(param, "multiple", False)))


def _exclusive(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """True when the two paths lie in different cases of one conditional."""
    for x, y in zip(a, b, strict=False):
        if x != y:
            return x.startswith("#") and y.startswith("#")
    return False


def check_template_mode(tool: Any) -> None:
    """JobError naming every parameter or output of a Galaxy tool template mode cannot map."""
    outputs = {name: (bool(getattr(out, "collection", False)),
                      bool(not getattr(out, "collection", False)
                           and getattr(out, "dataset_collector_descriptions", None)))
               for name, out in tool.outputs.items()}
    problems = template_mode_problems(list(tool_shape(tool.inputs)), outputs)
    if problems:
        raise JobError("tool %s cannot run in template mode: %s" % (tool.id, " | ".join(problems)))


def template_mode_problems(shape: list[ParamShape],
                           outputs: Mapping[str, tuple[bool, bool]]) -> list[str]:
    """What template mode would silently get wrong.

    ``outputs``: output name -> (is a collection, discovers datasets).
    """
    hint = "; run this tool in Galaxy-script mode (destination param mode: galaxy)"
    problems = []
    for param in shape:
        if param.kind == "repeat":
            problems.append("repeat %r: a template takes one value per name" % param.name)
        elif param.kind == "data_collection":
            problems.append("collection input %r: collections are not mapped" % param.name)
        elif param.multiple:
            problems.append("data parameter %r takes several datasets (multiple=\"true\"): "
                            "a template takes one file per name" % param.name)
    seen: dict[str, ParamShape] = {}
    for param in shape:
        other = seen.setdefault(param.path[-1], param)
        if other is not param and not _exclusive(other.path, param.path):
            problems.append("parameters %r and %r share the name %r: a template sees only "
                            "one of them" % (other.name, param.name, param.path[-1]))
    for name, (collection, discovered) in outputs.items():
        if collection:
            problems.append("output collection %r: template mode maps single files" % name)
        elif discovered:
            problems.append("output %r discovers datasets: template mode maps single files" % name)
    return [problem + hint for problem in problems]


# -- template-mode descriptions -------------------------------------------------------
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


# -- dropbox files --------------------------------------------------------------------
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
