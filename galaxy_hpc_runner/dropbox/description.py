"""Job descriptions (``NAME.job``): parse, validate, render, and write results.

Every check that can fail is done here, on the submitting side, before the
job is staged, so a bad description costs no queue wait.
"""

from __future__ import annotations

import enum
import math
import os
import posixpath
import re
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from galaxy_hpc_runner.config import RESERVED_VARS, Config, parse_duration
from galaxy_hpc_runner.dropbox import plainyaml, safefs, yamlout
from galaxy_hpc_runner.dropbox.templates import SUFFIX as SCRIPT_SUFFIX
from galaxy_hpc_runner.dropbox.templates import load_template, render, template_path
from galaxy_hpc_runner.errors import JobError
from hpc_worker import protocol as p
from hpc_worker.states import ResultStatus

try:  # the C loader is ten times faster; fall back where libyaml is missing
    from yaml import CSafeDumper as _Dumper
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover
    from yaml import SafeDumper as _Dumper  # type: ignore[assignment]
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]

SUFFIX = ".job"
FINISHED_SUFFIX = ".job.finished"
IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
TOP_KEYS = {"script", "args", "input_map", "output_map", "walltime", "meta"}  # meta: free-form
MAX_PATH = 4096  # bytes of one input or output path
MAX_BASENAME = 200  # bytes of a file name in the job directory (temp names add to it)


@dataclass
class Job:
    """A valid description, ready to stage."""

    name: str
    doc: dict[str, Any]
    script: str
    args: dict[str, Any]
    inputs: dict[str, str]
    outputs: dict[str, str]
    rendered: str
    walltime: float | None = None
    basenames: dict[str, str] = field(default_factory=dict)
    key: str = ""  # the workspace key: SERVER=NAME (protocol.hpc_key)
    workspace: str = ""  # W/jobs/KEY, what <<workspace>> names

    def meta(self) -> dict[str, Any]:
        """What the pilot needs to know (W/jobs/KEY/job.json, records.JobSpec)."""
        return {"key": self.key, "script": self.script, "walltime": self.walltime,
                "inputs": sorted(os.path.basename(v) for v in self.inputs.values()),
                "outputs": sorted(os.path.basename(v) for v in self.outputs.values()),
                "workspace": self.workspace, "server": p.server_of(self.key)}


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


class _ResultDumper(_Dumper):  # type: ignore[misc, valid-type]
    """Multi-line strings (stdout, stderr) as readable literal blocks."""


def _str_representer(dumper: Any, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    node: yaml.Node = dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)
    return node


_ResultDumper.add_representer(str, _str_representer)


def dump_yaml(doc: Any) -> str:
    """Block YAML, keys in their order, multi-line strings as literal blocks: written by
    :mod:`yamlout` where the document is plain, by PyYAML otherwise (the same text)."""
    if isinstance(doc, dict):
        return yamlout.emit(doc, _pyyaml)
    return _pyyaml(doc)


def _pyyaml(doc: Any) -> str:
    return yaml.dump(doc, Dumper=_ResultDumper, sort_keys=False, default_flow_style=False,
                     allow_unicode=True, width=1 << 16)


def parse(text: str) -> dict[str, Any]:
    """The description as a mapping of plain values; JobError when it is anything else.

    Untrusted text: only plain types, a bounded number of nodes with aliases
    expanded (see :mod:`plainyaml`).
    """
    doc = plainyaml.load(text)
    if not isinstance(doc, dict):
        raise JobError("description must be a YAML mapping, not %s" % type(doc).__name__)
    return doc


def _mapping(doc: dict[str, Any], key: str) -> dict[str, Any]:
    value = doc.get(key) or {}
    if not isinstance(value, dict):
        raise JobError("%s must be a mapping of name: value" % key)
    for name in value:
        if not isinstance(name, str) or not IDENT.match(name):
            raise JobError("%s key %r is not a valid name (letters, digits, '_')" % (key, name))
    return value


def _under(path: Path, roots: list[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def _plain_path(kind: str, key: str, value: Any) -> str:
    if not isinstance(value, str) or not os.path.isabs(value) or "\0" in value \
            or len(value.encode("utf-8", "surrogateescape")) > MAX_PATH:
        raise JobError("%s %s: %r is not an absolute path (at most %d bytes)"
                       % (kind, key, value, MAX_PATH))
    return value


def _check_input(key: str, value: Any, cfg: Config) -> str:
    """The real path of an input, opened once without following links to check it."""
    real = Path(os.path.realpath(_plain_path("input", key, value)))
    if not _under(real, cfg.allowed_input_roots):
        raise JobError("input %s: %s is outside the allowed input roots (%s)" % (
            key, value, " ".join(map(str, cfg.allowed_input_roots))))
    safefs.utf8_path(str(real), "input %s" % key)
    try:
        os.close(safefs.open_under(str(real), cfg.allowed_input_roots))
    except (safefs.UnsafeFile, OSError) as exc:
        raise JobError("input %s: %s does not exist or is not a regular file (%s)"
                       % (key, value, exc)) from None
    return str(real)


def _check_output(key: str, value: Any, cfg: Config) -> str:
    """The real path of an output: its directory under an output root, no link at the target."""
    if _plain_path("output", key, value).endswith("/"):
        raise JobError("output %s: %r is not an absolute file path" % (key, value))
    parent = Path(os.path.realpath(os.path.dirname(value)))
    target = parent / os.path.basename(value)
    if not _under(target, cfg.allowed_output_roots) or target in cfg.allowed_output_roots:
        raise JobError("output %s: %s is outside the allowed output roots (%s)" % (
            key, value, " ".join(map(str, cfg.allowed_output_roots))))
    safefs.utf8_path(str(target), "output %s" % key)
    if parent == Path(os.path.realpath(cfg.dropbox)) and target.name.endswith(
            (SUFFIX, FINISHED_SUFFIX)):
        raise JobError("output %s: %s would be a job description or result in the dropbox"
                       % (key, target))
    try:
        with safefs.opened(safefs.open_dir_under(str(parent), cfg.allowed_output_roots)) as fd:
            there = safefs.lstat_at(fd, target.name)
    except (safefs.UnsafeFile, OSError) as exc:
        raise JobError("output %s: directory %s cannot be used (%s)" % (key, parent, exc)) \
            from None
    if not os.access(parent, os.W_OK):
        raise JobError("output %s: directory %s is not writable" % (key, parent))
    if there is not None and not stat.S_ISREG(there.st_mode):
        raise JobError("output %s: %s exists and is %s; only a regular file is replaced"
                       % (key, target, safefs.kind(there.st_mode)))
    return str(target)


def _reserved(base: str) -> bool:
    """A name the protocol uses in a job directory (files, attempt directories and scripts)."""
    names = getattr(p, "RESERVED_NAMES", (p.SCRIPT, p.META, p.RUNS, p.RESULT, p.STDOUT,
                                          p.STDERR))
    is_attempt = getattr(p, "valid_attempt", lambda name: False)
    suffix = getattr(p, "ATTEMPT_SCRIPT_SUFFIX", SCRIPT_SUFFIX)
    stem = base[: -len(suffix)] if base.endswith(suffix) else base
    return base in names or base[0] == "." or bool(is_attempt(stem))


def _basenames(inputs: dict[str, str], outputs: dict[str, str]) -> dict[str, str]:
    """file key -> basename; two files with one basename would overwrite each other."""
    seen: dict[str, str] = {}
    result = {}
    for key, path in list(inputs.items()) + list(outputs.items()):
        base = os.path.basename(path)
        if base in seen:
            raise JobError("files %s and %s share the basename %r" % (seen[base], key, base))
        if _reserved(base) or len(base.encode("utf-8")) > MAX_BASENAME:
            raise JobError("file %s: basename %r is reserved or longer than %d bytes"
                           % (key, base, MAX_BASENAME))
        seen[base] = key
        result[key] = base
    return result


def _check_names(args: dict[str, Any], inputs: dict[str, Any], outputs: dict[str, Any],
                 cfg: Config) -> None:
    reserved = set(RESERVED_VARS) | set(cfg.hpc_env)
    for name in args:
        if name in reserved:
            raise JobError("arg %r would override the reserved variable <<%s>>" % (name, name))
    for name in inputs:
        if name in outputs:
            raise JobError("file key %r is both an input and an output" % name)
    for name in list(inputs) + list(outputs):
        if name in reserved or name in args:
            raise JobError("file key %r clashes with an arg or a reserved variable" % name)


def _walltime(doc: dict[str, Any], cfg: Config) -> float | None:
    if doc.get("walltime") is None:
        return None
    try:
        seconds = parse_duration(doc["walltime"])
    except (ValueError, OverflowError) as exc:
        raise JobError("walltime: %s" % exc) from exc
    if not math.isfinite(seconds) or seconds <= 0:
        raise JobError("walltime %r: must be a finite, positive duration" % (doc["walltime"],))
    if seconds > cfg.pilot.walltime:
        raise JobError("walltime %ss exceeds the pilot walltime of %ss: no pilot could run it"
                       % (seconds, cfg.pilot.walltime))
    return seconds


def validate(name: str, doc: dict[str, Any], cfg: Config) -> Job:
    """Every check before staging; raises JobError with a message for the result file."""
    if not p.valid_name(name):
        raise JobError("job name %r: use letters, digits, '.', '_', '-', '+' (up to 200), "
                       "starting with a letter or digit" % name)
    if "job" in doc:
        raise JobError("the top-level key 'job' is reserved for the result")
    unknown = sorted(set(map(str, doc)) - TOP_KEYS)
    if unknown:
        raise JobError("unknown top-level key(s): %s" % ", ".join(unknown))
    path = template_path(cfg.templates, doc.get("script"))
    args = _mapping(doc, "args")
    raw_in, raw_out = _mapping(doc, "input_map"), _mapping(doc, "output_map")
    _check_names(args, raw_in, raw_out, cfg)
    inputs = {k: _check_input(k, v, cfg) for k, v in raw_in.items()}
    outputs = {k: _check_output(k, v, cfg) for k, v in raw_out.items()}
    job = Job(name=name, doc=doc, script=doc["script"], args=args, inputs=inputs,
              outputs=outputs, rendered="", walltime=_walltime(doc, cfg),
              basenames=_basenames(inputs, outputs))
    job.key = p.hpc_key(cfg.server_tag, name)
    job.workspace = posixpath.join(cfg.workspace, p.JOBS, job.key)
    job.rendered = render(_template(path), template_values(job, cfg, job.workspace),
                          str(path))
    return job


_TEMPLATES: dict[str, tuple[tuple[int, int, int, int], str]] = {}  # path -> (key, text)


def _template(path: Path) -> str:
    """A template's checked text, read again only when its file changed (a file changed in
    the last second is read every time: a change in the same timestamp tick would not show)."""
    info = os.stat(path)
    key = (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
    cached = _TEMPLATES.get(str(path))
    if cached is not None and cached[0] == key:
        return cached[1]
    text = load_template(path)
    if time.time() - info.st_mtime > 1.0 and len(_TEMPLATES) < 1024:
        _TEMPLATES[str(path)] = (key, text)
    return text


def template_values(job: Job, cfg: Config, job_workspace: str) -> dict[str, object]:
    values: dict[str, object] = dict(cfg.hpc_env)
    values.update(job.args)
    values.update({k: "./" + v if v.startswith("-") else v for k, v in job.basenames.items()})
    values["workspace"] = job_workspace
    return values


def result_document(doc: dict[str, Any] | None, job_node: dict[str, Any]) -> str:
    """``NAME.job.finished``: the description plus the ``job`` node (alone if unparseable)."""
    out = dict(doc) if doc else {}
    out["job"] = job_node
    return dump_yaml(out)


def job_node(status: ResultStatus | str, message: str, stdout: str = "", stderr: str = "",
             rc: int | None = None, **extra: Any) -> dict[str, Any]:
    """The seed's ``job`` keys first, then ours (start, end, attempts, pilot, host).

    Enum members become their plain values, so the node dumps as plain YAML.
    """
    node: dict[str, Any] = {"status": str(ResultStatus(status)), "message": message,
                            "stderr": stderr, "stdout": stdout, "rc": rc}
    node.update({k: (str(v) if isinstance(v, enum.Enum) else v)
                 for k, v in extra.items() if v is not None})
    return node
