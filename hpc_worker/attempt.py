"""One attempt of a job: its own directory, script, environment and published files.

A job description comes from the submitting side and is read as untrusted:
``job.json`` through :class:`records.JobSpec` (types and bounds), every input and
output a plain file name (``protocol.valid_file_name``), environment names plain
identifiers. The pilot only ever creates, links and removes files inside the job's
own directory ``W/jobs/KEY`` and the attempt directory it made there.

Standard library only, Python 3.8.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import stat
from typing import Dict, Iterable, List, Mapping, Optional, Pattern, Sequence, Tuple

from . import journal
from . import protocol as p
from .records import (
    MAX_RECORD_BYTES,
    JobSpec,
    ProtocolError,
    read_bounded,
)
from .states import Reason

ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
ENV_KEEP = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR",
            "TMP", "TEMP", "HOSTNAME", "MODULEPATH", "MODULESHOME")
ENV_KEEP_PREFIXES = ("LC_", "SLURM_", "PBS_", "APPTAINER_", "SINGULARITY_")
PILOT_VARIABLES = ("CUDA_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL")  # the slot's, never the job's
PILOT_PREFIX = "HPC_BATCH_"
KEY_CHARS = "A-Za-z0-9_.+=@-"
MAX_SCRIPT_BYTES = MAX_RECORD_BYTES
MAX_ATTEMPTS_DIRS = 100000
# The start gate. The pilot starts ``bash attempt-N.sh`` with this variable set to 1 and
# stdin a pipe only the pilot can write to; the script's first command reads one line of
# it. The pilot writes that line once its guard knows the job's process group: a pilot
# killed before that closes the pipe, ``read`` sees end-of-file and the script exits
# before any of the job's own commands ran. Without the variable (the script run by hand)
# there is no gate. The gate goes at the start of the first line that is not a ``#!``
# line, on that line: every line keeps its number.
GATE_VARIABLE = "HPC_BATCH_GATE"
GATE = ('if [ "${%s-}" = 1 ]; then read -r %s || exit 1; exec </dev/null; fi; unset %s; '
        % ((GATE_VARIABLE,) * 3)).encode()


class JobInvalid(Exception):
    """The job cannot be run as it was staged; the message says why, ``reason`` is the
    result's reason (INVALID: its description; TRANSFER: a staged file is missing)."""

    def __init__(self, message: str, reason: Reason = Reason.INVALID) -> None:
        super().__init__(message)
        self.reason = reason


def load_job(root: str, key: str) -> journal.Job:
    """The job's spec and run lines (``journal.read_job``), the spec checked beyond its
    types; JobInvalid on any problem."""
    path = os.path.join(p.job_dir(root, key), p.META)
    try:
        job = journal.read_job(path)
    except FileNotFoundError:
        raise JobInvalid("%s is missing: the job was not staged completely" % path,
                         Reason.TRANSFER) from None
    except (ProtocolError, OSError) as exc:
        raise JobInvalid(str(exc)) from None
    problems = spec_problems(job.spec)
    if problems:
        raise JobInvalid("%s: %s" % (path, "; ".join(problems)))
    return job


def spec_problems(spec: JobSpec) -> List[str]:
    out = ["%s %r is not a plain file name the job may use" % (kind, name)
           for kind, names in (("input", spec.inputs), ("output", spec.outputs))
           for name in names if not p.valid_file_name(name)]
    if spec.walltime is not None and spec.walltime <= 0:
        out.append("walltime %r is not a positive number of seconds" % spec.walltime)
    for name, value in spec.env.items():
        if not ENV_NAME_RE.match(name) or "\x00" in value:
            out.append("env %r is not a variable name with a plain value" % name)
    return out


def job_env(pilot_env: Mapping[str, str], spec_env: Mapping[str, str],
            slot_env: Mapping[str, str], keep: Sequence[str] = ()) -> Dict[str, str]:
    """The allowlisted part of the pilot's environment, then the description's variables,
    then the slot's own (devices, HPC_BATCH_*), which the description cannot change."""
    env = kept_env(pilot_env, keep)
    env.update((k, v) for k, v in spec_env.items()
               if k not in PILOT_VARIABLES and not k.startswith(PILOT_PREFIX))
    env.update(slot_env)
    return env


def kept_env(pilot_env: Mapping[str, str], keep: Sequence[str] = ()) -> Dict[str, str]:
    """The allowlisted part of the pilot's environment (filtering it again is a no-op, so
    the pilot filters once and passes the result as ``pilot_env``)."""
    return {name: value for name, value in pilot_env.items() if _kept(name, keep)}


def _kept(name: str, keep: Sequence[str]) -> bool:
    if name in ENV_KEEP or name.startswith(ENV_KEEP_PREFIXES):
        return True
    return any(name == k or (k.endswith("*") and name.startswith(k[:-1])) for k in keep)


class Attempt:
    """A fresh ``W/jobs/KEY/attempt-N`` made for one start of the job."""

    def __init__(self, root: str, key: str, name: str) -> None:
        self.root = root
        self.key = key
        self.name = name
        self.job_dir = p.job_dir(root, key)
        self.dir = p.attempt_dir(root, key, name)
        self.script = p.attempt_script(root, key, name)

    @classmethod
    def create(cls, root: str, key: str, starts: int) -> "Attempt":
        """mkdir the next free attempt-N (N after the starts already recorded)."""
        job_dir = p.job_dir(root, key)
        try:
            mode = os.lstat(job_dir).st_mode
        except FileNotFoundError:
            raise JobInvalid("%s is missing" % job_dir, Reason.TRANSFER) from None
        if not stat.S_ISDIR(mode):
            raise JobInvalid("%s is not a directory" % job_dir)
        for number in range(starts + 1, starts + 1 + MAX_ATTEMPTS_DIRS):
            name = p.attempt_name(number)
            try:
                os.mkdir(os.path.join(job_dir, name), 0o755)
            except FileExistsError:
                continue
            return cls(root, key, name)
        raise JobInvalid("%s holds too many attempt directories" % job_dir)

    def link_inputs(self, names: Iterable[str]) -> None:
        """Hard-link each staged input in (a symbolic link where hard links fail)."""
        for name in names:
            src = os.path.join(self.job_dir, name)
            try:
                info = os.lstat(src)
            except FileNotFoundError:
                raise JobInvalid("input %r is not in %s" % (name, self.job_dir),
                                 Reason.TRANSFER) from None
            if not stat.S_ISREG(info.st_mode):
                raise JobInvalid("input %r in %s is not a regular file" % (name, self.job_dir))
            dst = os.path.join(self.dir, name)
            try:
                os.link(src, dst, follow_symlinks=False)
            except OSError as exc:
                if exc.errno not in p.NO_LINKS:
                    raise
                os.symlink(src, dst)

    def write_script(self, workspace: str, root_as_given: str, inline: str = "") -> None:
        """The job's script (``inline``: the spec's ``script_text``; else job.sh) with every
        spelling of W/jobs/KEY (<<workspace>>) pointed at this attempt, and the start gate
        (GATE)."""
        text = inline.encode("utf-8") if inline else self._staged_script()
        prefixes = _job_dir_prefixes(root_as_given, self.root)
        key, new = self.key.encode("utf-8"), self.dir.encode("utf-8")
        if workspace and workspace.encode("utf-8") not in {x + key for x in prefixes}:
            body = _spelling_pattern(frozenset(x + key for x in prefixes) | {
                workspace.encode("utf-8")}).sub(lambda _m: new, text)
        else:  # the usual case: one pattern per pilot, the key compared per match
            body = _prefix_pattern(prefixes).sub(
                lambda m: new if m.group(1) == key else m.group(0), text)
        p.replace_file(self.script, _gated(body))

    def _staged_script(self) -> bytes:
        path = os.path.join(self.job_dir, p.SCRIPT)
        try:
            return read_bounded(path, MAX_SCRIPT_BYTES)
        except FileNotFoundError:
            raise JobInvalid("%s is missing" % path, Reason.TRANSFER) from None
        except ProtocolError as exc:
            raise JobInvalid(str(exc)) from None

    def open_logs(self) -> "tuple[int, int]":
        """Create the attempt's stdout/stderr (the job's start publishes them at once, so
        logs show the live run: ``JobRun.start``)."""
        fds = []
        for name in (p.STDOUT, p.STDERR):
            path = os.path.join(self.dir, name)
            fds.append(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        return fds[0], fds[1]

    def publish(self, names: Iterable[str]) -> None:
        """Hard-link the attempt's regular files ``names`` into W/jobs/KEY, replacing what
        is there (a link or directory the job made is never published)."""
        for name in names:
            src = os.path.join(self.dir, name)
            dst = os.path.join(self.job_dir, name)
            try:
                info = os.lstat(src)
            except FileNotFoundError:
                info = None
            if info is None or not stat.S_ISREG(info.st_mode):
                _remove(dst)  # absent or not a plain file: no older copy may stand in
                continue
            if _same_file(info, dst):
                continue  # rename() onto a link of the same file would do nothing
            tmp = os.path.join(self.job_dir, ".tmp-publish-%s-%s" % (self.name, name))
            try:
                os.link(src, tmp, follow_symlinks=False)
            except FileExistsError:  # left by a pilot killed here
                _remove(tmp)
                os.link(src, tmp, follow_symlinks=False)
            os.replace(tmp, dst)

    def regular_file(self, name: str) -> Optional[bool]:
        """True: a regular file; False: something else (a link, a directory); None: absent."""
        try:
            return stat.S_ISREG(os.lstat(os.path.join(self.dir, name)).st_mode)
        except FileNotFoundError:
            return None


def _gated(body: bytes) -> bytes:
    """``body`` with GATE at the start of its first line that is not a ``#!`` line."""
    if not body.startswith(b"#!"):
        return GATE + body
    end = body.find(b"\n")
    if end < 0:
        return body + b"\n" + GATE + b"\n"
    return body[:end + 1] + GATE + body[end + 1:]


@functools.lru_cache(maxsize=16)
def _job_dir_prefixes(root_as_given: str, root: str) -> Tuple[bytes, ...]:
    """Every spelling of W/jobs/ this pilot knows, longest first."""
    roots = {root_as_given, root, os.path.realpath(root)} - {""}
    return tuple(sorted({p.job_dir(r, "").encode("utf-8") for r in roots},
                        key=len, reverse=True))


@functools.lru_cache(maxsize=16)
def _prefix_pattern(prefixes: Tuple[bytes, ...]) -> "Pattern[bytes]":
    """W/jobs/ in any spelling and the whole key after it (every key character)."""
    return re.compile(b"(?:%s)([%s]+)" % (b"|".join(re.escape(x) for x in prefixes),
                                           KEY_CHARS.encode()))


def _spelling_pattern(spellings: "frozenset[bytes]") -> "Pattern[bytes]":
    """Any of ``spellings`` not followed by a key character."""
    return re.compile(b"(?:%s)(?![%s])" % (b"|".join(
        re.escape(s) for s in sorted(spellings, key=len, reverse=True)), KEY_CHARS.encode()))


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _same_file(info: os.stat_result, path: str) -> bool:
    try:
        other = os.lstat(path)
    except FileNotFoundError:
        return False
    return (other.st_dev, other.st_ino) == (info.st_dev, info.st_ino)
