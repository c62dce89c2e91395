"""Galaxy-script mode, staged placement: Galaxy is not on the HPC file system.

Galaxy's job script (``get_job_file``, as on a shared file system) goes through
Pulsar's own client staging, ``pulsar.client.staging.up.FileStager`` (shipped with
Galaxy as ``pulsar-galaxy-lib``): it finds the inputs, the configfiles, the tool's
files the command refers to and the working directory's files, and rewrites their
paths in the script and the configfiles for a Pulsar-style job directory
(``pulsar.client.job_directory.RemoteJobDirectory``: ``working/``, ``outputs/``,
``configs/``, ``tool_files/``). :class:`BundleClient` stands in for the Pulsar client:
instead of sending each file to a Pulsar server it records it, and the runner hands
the job to our spool as

- ``input_map``: each input dataset (staged beside the job by the submitter through
  the site's transport, a file shared by jobs uploaded once) and ``gx_bundle``, one
  tar of everything else (the rewritten script, configfiles, tool files, working
  directory);
- ``output_map``: ``gx_return``, one tar of the job directory as the job left it;
- ``script: galaxy_job_staged`` (``galaxy_job_staged.sh``, package data), which
  unpacks the bundle into ``W/jobs/KEY/galaxy``, runs Galaxy's script there and packs
  what comes back.

Galaxy's job directory ``J`` becomes ``W/jobs/KEY/galaxy`` in every remaining path.
After the job :func:`collect` unpacks the returned tar (regular files and
directories only, no names outside it), moves each output to the path Galaxy
expects and the rest into ``J``; then Galaxy's normal ``finish_job`` runs, metadata
being set on the Galaxy host (as Pulsar does without remote metadata).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import posixpath
import re
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from galaxy_hpc_runner.config import Config
from galaxy_hpc_runner.errors import ConfigError, JobError
from galaxy_hpc_runner.galaxy.galaxy_script import STAGED_TEMPLATE, tool_ran
from hpc_worker import protocol as p

SHARED, SEPARATE = "shared", "separate"  # destination param placement
BUNDLE = "hpc_batch_stage.tar"  # in Galaxy's job directory: what the job needs
RETURN = "hpc_batch_return.tar"  # in Galaxy's job directory: what the job wrote
PLAN = "hpc_batch_stage.json"  # how to write the description again and collect
REMOTE_SUB = "galaxy"  # W/jobs/KEY/galaxy: Galaxy's job directory on the HPC side
# Names in W/jobs/KEY an input may not take (the protocol's, the template's own).
TAKEN = frozenset(p.RESERVED_NAMES) | {REMOTE_SUB, BUNDLE, RETURN, ".hpc-batch-return.part"}


def placement(params: Mapping[str, Any]) -> str:
    """The destination param ``placement``: ``shared`` (the default: Galaxy's directories
    are on the nodes) or ``separate`` (they are not: the job is staged)."""
    value = str(params.get("placement") or SHARED).strip().lower()
    if value not in (SHARED, SEPARATE):
        raise ConfigError("destination param placement=%r: use %s (Galaxy's directories "
                          "visible on the nodes) or %s (staged through the site's "
                          "transport)" % (value, SHARED, SEPARATE))
    return value


@dataclass
class GalaxyJob:
    """What Galaxy prepared: the job script and the files it refers to (local paths)."""

    job_id: str
    script: str  # Galaxy's job script, local paths
    script_name: str  # galaxy_ID.sh
    workdir: str  # Galaxy's job directory J
    tool_workdir: str  # J/working
    tool: Any  # Galaxy's tool (id, version, tool_dir, required_files) or None
    config_files: list[str] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    jobdir_files: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, job_wrapper: Any, script_path: str, script: str) -> GalaxyJob:
        """From Galaxy's prepared job wrapper, as Galaxy's Pulsar runner gathers it."""
        workdir = job_wrapper.working_directory
        tool = job_wrapper.tool
        tool_script = os.path.join(workdir, "tool_script.sh")
        extra = [tool_script] if os.path.exists(tool_script) else []
        return cls(
            job_id=str(job_wrapper.job_id), script=script,
            script_name=os.path.basename(script_path), workdir=workdir,
            tool_workdir=job_wrapper.tool_working_directory,
            tool=tool if tool is not None and tool.tool_dir else None,
            config_files=list(job_wrapper.extra_filenames) + extra,
            inputs=[str(i) for i in job_wrapper.job_io.get_input_paths(None)],
            outputs=[dp.false_path or dp.real_path
                     for dp in job_wrapper.job_io.get_output_fnames()],
            jobdir_files=extra)


@dataclass
class Plan:
    """The staged job: inputs for ``input_map``, outputs to put back, the script's name."""

    job_script: str
    inputs: dict[str, str] = field(default_factory=dict)  # gx_inN -> local path
    outputs: dict[str, str] = field(default_factory=dict)  # member -> local path
    sent: list[str] = field(default_factory=list)  # top-level names Galaxy keeps its own of

    def save(self, workdir: str) -> None:
        p.atomic_write(os.path.join(workdir, PLAN), json.dumps(self.__dict__, sort_keys=True))

    @classmethod
    def load(cls, workdir: str) -> Plan:
        path = os.path.join(workdir, PLAN)
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError) as exc:
            raise JobError("cannot read the staging plan %s: %s" % (path, exc)) from exc
        return cls(**data)


class BundleClient:
    """The part of a Pulsar client that ``FileStager`` uses, recording instead of sending.

    Every file goes into the bundle at its place in the Pulsar job directory, except
    input datasets, which the submitter stages beside the job (``input_map``)."""

    prefer_local_staging = True
    action_config_path = None
    files_endpoint = None
    token_endpoint = None
    job_directory = None

    def __init__(self, job_id: str, remote: str, beside: str) -> None:
        from pulsar.client.job_directory import RemoteJobDirectory  # type: ignore

        self.job_id = job_id
        self.remote = RemoteJobDirectory(remote, None, "/")
        self.beside = beside  # W/jobs/KEY, where input_map files land
        self.members: dict[str, tuple[str | None, str | None]] = {}  # member -> (path, text)
        self.inputs: dict[str, str] = {}
        self.prefixes: list[tuple[str, str]] = []  # more rewrites after Pulsar's
        self._names = set(TAKEN)

    @property
    def default_file_action(self) -> str:
        """Pulsar's "transfer" action: every file through :meth:`put_file`."""
        from pulsar.client.action_mapper import TransferAction  # type: ignore

        return str(TransferAction.action_type)

    def setup(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        r = self.remote
        return {"working_directory": r.working_directory(),
                "outputs_directory": r.outputs_directory(),
                "tools_directory": r.tool_files_directory(),
                "configs_directory": r.configs_directory(),
                "metadata_directory": r.metadata_directory(),
                "job_directory": r.path, "system_properties": {"separator": "/"}}

    def assign_job_id(self, job_id: str) -> None:
        self.job_id = job_id

    def put_file(self, path: str, input_type: str, name: str | None = None,
                 contents: str | None = None, action_type: str = "") -> dict[str, str]:
        base = os.path.basename(path)
        if input_type == "input" and contents is None and name is None \
                and base not in self._names and os.path.isfile(path):
            self._names.add(base)
            self.inputs["gx_in%d" % len(self.inputs)] = path
            return {"path": posixpath.join(self.beside, base)}
        remote = self.remote.calculate_path(name or base, input_type)
        self.add(posixpath.relpath(remote, self.remote.path), path, contents)
        return {"path": remote}

    def add(self, member: str, path: str | None, text: str | None = None) -> None:
        """A file from ``path``, or with ``text``, or (neither) a directory."""
        self.members[member] = (path, text)

    def finish(self, text: str) -> str:
        return rewrite_prefixes(text, self.prefixes)


def rewrite_prefixes(text: str, prefixes: list[tuple[str, str]]) -> str:
    """The rewrites after Pulsar's, each of a whole path or path prefix (``/jobs/7`` is not
    ``/jobs/70``), longest first."""
    for local, remote in sorted(prefixes, key=lambda pair: -len(pair[0])):
        text = re.sub(re.escape(local) + r"(?![\w.-])", remote.replace("\\", "\\\\"), text)
    return text


def prepare(job: GalaxyJob, cfg: Config, name: str) -> Plan:
    """Rewrite the script for the HPC side, write the bundle and the plan into ``J``."""
    beside = posixpath.join(cfg.workspace, p.JOBS, p.hpc_key(cfg.server_tag, name))
    remote = posixpath.join(beside, REMOTE_SUB)
    roots = (os.path.realpath(job.workdir) + os.sep, job.workdir.rstrip("/") + "/")
    if any((remote + "/").startswith(root) for root in roots):
        raise JobError("placement: staged needs the HPC workspace %s outside Galaxy's job "
                       "directory %s" % (cfg.workspace, job.workdir))
    client = BundleClient(job.job_id, remote, beside)
    client.prefixes.append((job.workdir.rstrip("/"), remote))
    if job.tool is not None and getattr(job.tool, "tool_dir", None):
        client.prefixes.append((str(job.tool.tool_dir).rstrip("/"),
                                client.remote.tool_files_directory()))
    plan = Plan(job_script=job.script_name, sent=[job.script_name])
    _extra_files(job, client, plan)
    try:
        script = client.finish(_pulsar_rewrite(job, client))
    except Exception as exc:  # Pulsar raises plain Exceptions: name the job and the cause
        raise JobError("staging job %s with Pulsar's FileStager failed: %s" % (
            job.job_id, exc)) from exc
    client.add(job.script_name, None, script)
    plan.inputs = dict(client.inputs)
    for output in job.outputs:
        member = "outputs/" + os.path.basename(output)
        plan.outputs[member] = output
        if os.path.isfile(output):  # Galaxy's from_work_dir copy needs it there (Pulsar
            client.add(member, None, "")  # touches outputs likewise)
    plan.sent += [m for m in client.members if "/" not in m]
    write_bundle(client, os.path.join(job.workdir, BUNDLE))
    plan.save(job.workdir)
    return plan


def _pulsar_rewrite(job: GalaxyJob, client: BundleClient) -> str:
    """Pulsar's FileStager over Galaxy's script: what to send, and every path rewritten."""
    from pulsar.client.staging import ClientJobDescription, ClientOutputs  # type: ignore
    from pulsar.client.staging.up import FileStager  # type: ignore

    desc = ClientJobDescription(
        command_line=job.script, tool=job.tool, config_files=job.config_files,
        input_files=job.inputs,
        client_outputs=ClientOutputs(working_directory=job.tool_workdir,
                                     output_files=job.outputs),
        working_directory=job.tool_workdir, metadata_directory=None,
        job_directory_files=job.jobdir_files, rewrite_paths=True,
        tool_directory_required_files=getattr(job.tool, "required_files", None))
    stager = FileStager(client, desc, client.setup())
    return str(stager.get_command_line())


def _extra_files(job: GalaxyJob, client: BundleClient, plan: Plan) -> None:
    """Composite datasets: an input's ``dataset_N_files`` goes in the bundle, an output's
    comes back (Galaxy's layout: the directory beside the ``.dat`` file)."""
    for kind, paths in (("inputs", job.inputs), ("outputs", job.outputs)):
        for path in paths:
            extra = _files_dir(path)
            if extra is None:
                continue
            member = "%s/%s" % (kind, os.path.basename(extra))
            client.prefixes.append((extra, posixpath.join(client.remote.path, member)))
            if kind == "outputs":
                plan.outputs[member] = extra
                if os.path.isdir(extra):  # precreated for a from_work_dir directory
                    client.add(member, None, None)
            elif os.path.isdir(extra):
                for rel in _tree(extra):
                    client.add(posixpath.join(member, rel), os.path.join(extra, rel))


def _files_dir(path: str) -> str | None:
    root, ext = os.path.splitext(path)
    return root + "_files" if ext == ".dat" else None


def _tree(top: str) -> list[str]:
    out = []
    for here, _dirs, files in os.walk(top):
        out += [os.path.relpath(os.path.join(here, f), top) for f in files]
    return sorted(out)


def write_bundle(client: BundleClient, path: str) -> None:
    """One tar of the recorded files, each opened once without following links."""
    tmp = path + ".part"
    with tarfile.open(tmp, "w") as tar:
        for member, (local, text) in sorted(client.members.items()):
            if text is not None:
                data = client.finish(text).encode("utf-8")
                info = tarfile.TarInfo(member)
                info.size, info.mode = len(data), 0o755 if member.endswith(".sh") else 0o644
                tar.addfile(info, io.BytesIO(data))
            elif local is not None:
                _add_file(tar, local, member)
            else:
                info = tarfile.TarInfo(member)
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
    os.replace(tmp, path)


def _add_file(tar: tarfile.TarFile, local: str, member: str) -> None:
    try:
        fd = os.open(local, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise JobError("cannot stage %s: %s" % (local, exc.strerror)) from exc
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise JobError("cannot stage %s: not a regular file" % local)
        info = tarfile.TarInfo(member)
        info.size, info.mode, info.mtime = st.st_size, st.st_mode & 0o755, int(st.st_mtime)
        tar.addfile(info, fh)


def description(workdir: str, walltime: object = None,
                meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``NAME.job`` document of a prepared job (again after a restart: from the plan)."""
    plan = Plan.load(workdir)
    doc: dict[str, Any] = {
        "script": STAGED_TEMPLATE, "args": {"job_script": plan.job_script},
        "input_map": {"gx_bundle": os.path.join(workdir, BUNDLE), **plan.inputs},
        "output_map": {"gx_return": os.path.join(workdir, RETURN)}}
    if walltime not in (None, ""):
        doc["walltime"] = walltime
    if meta:
        doc["meta"] = dict(meta)
    return doc


def collect(workdir: str, exit_code_file: str) -> None:
    """Put what the job wrote where Galaxy looks: outputs to their paths, the rest into
    ``J``. JobError (naming the file) if the archive is missing or not trustworthy, or
    the tool ran and its exit code did not come back (never a default 0)."""
    plan = Plan.load(workdir)
    archive = os.path.join(workdir, RETURN)
    tmp = tempfile.mkdtemp(prefix=".hpc-batch-return-", dir=workdir)
    try:
        extract(archive, tmp)
        for member, target in plan.outputs.items():
            _move(os.path.join(tmp, member), target)
        _merge(tmp, workdir, set(plan.sent))
    except OSError as exc:
        raise JobError("cannot put what the job wrote in place: %s" % exc) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(archive)
    if not os.path.exists(exit_code_file) and tool_ran(workdir):
        raise JobError("the tool ran but its exit code file %s did not come back"
                       % os.path.basename(exit_code_file))


def extract(archive: str, into: str) -> None:
    """Regular files and directories only, every name inside ``into`` (a fresh directory)."""
    try:
        with tarfile.open(archive) as tar:
            for member in tar:
                rel = _safe_name(archive, member)
                if rel is None:
                    continue
                dest = os.path.join(into, rel)
                if member.isdir():
                    os.makedirs(dest, exist_ok=True)
                    continue
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                src = tar.extractfile(member)
                assert src is not None  # a regular file
                fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                             0o755 if member.mode & 0o100 else 0o644)
                with os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
    except (OSError, tarfile.TarError) as exc:
        raise JobError("cannot unpack what the job wrote (%s): %s" % (archive, exc)) from exc


def _safe_name(archive: str, member: tarfile.TarInfo) -> str | None:
    name = posixpath.normpath(member.name)
    if name == ".":
        return None
    if name.startswith(("/", "../")) or name == ".." or "\x00" in name:
        raise JobError("%s holds %r, a name outside the job directory" % (archive, member.name))
    if not (member.isreg() or member.isdir()):
        raise JobError("%s holds %r, neither a file nor a directory" % (archive, member.name))
    return name


def _move(src: str, target: str) -> None:
    if os.path.isdir(src):
        shutil.copytree(src, target, dirs_exist_ok=True)
        shutil.rmtree(src)
    elif os.path.exists(src):
        shutil.move(src, target)


def _merge(tmp: str, workdir: str, keep: set[str]) -> None:
    """Everything else into Galaxy's job directory (Galaxy's own copies of what it sent
    at the top level, e.g. its job script, are kept)."""
    for here, _dirs, files in os.walk(tmp):
        rel_dir = os.path.relpath(here, tmp)
        for name in files:
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if rel in keep:
                continue
            dest = os.path.join(workdir, rel)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            os.replace(os.path.join(here, name), dest)
