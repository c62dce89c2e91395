"""What a job wrote on the HPC side, and its outputs put in place: bounded, never via a link.

:class:`JobFiles` reads a finished job's files in ``W/jobs/KEY`` (through one no-follow
descriptor of the job directory on a local workspace, through the transport's no-follow,
bounded reads otherwise), :func:`read_journal` its run lines and result; :func:`commit`
renames fetched outputs over their targets, all or none, inside descriptors of the
validated output directories.
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import stat
from collections.abc import Callable
from typing import Any

from galaxy_hpc_runner.config import Config
from galaxy_hpc_runner.dropbox import safefs
from galaxy_hpc_runner.dropbox.description import job_node
from galaxy_hpc_runner.errors import RemoteFileMissing, TransportError
from galaxy_hpc_runner.transport import base as transport_base
from galaxy_hpc_runner.transport.base import LocalTransport, Transport
from hpc_worker import journal
from hpc_worker import protocol as p
from hpc_worker.records import MAX_RECORD_BYTES, MAX_RUNS_BYTES, ProtocolError, Result, parse_runs
from hpc_worker.states import Reason, ResultStatus

log = logging.getLogger(__name__)

# what either side raises for a link or a non-file where a job's file should be
UNSAFE: tuple[type[Exception], ...] = (safefs.UnsafeFile, ProtocolError) + tuple(
    t for t in (getattr(transport_base, "UnsafeRemoteFile", None),) if t is not None)


class UnsafeOutput(TransportError):
    """An output (on either side) is a link, not a regular file, or outside its root."""


def unsafe_node(name: str, exc: Exception) -> dict[str, Any]:
    """The result of a job whose files on the HPC side cannot be trusted (``exc`` says why)."""
    log.error("(%s) refused what the job wrote: %s", name, exc)
    return job_node(ResultStatus.ERROR, "The job wrote something that cannot be trusted, so "
                    "nothing was collected: %s" % exc, reason=Reason.UNSAFE)


def open_output_dir(parent: str, cfg: Config) -> int:
    try:
        return safefs.open_dir_under(parent, cfg.allowed_output_roots)
    except safefs.UnsafeFile as exc:
        raise UnsafeOutput("output directory %s: %s" % (parent, exc)) from None


def commit(temps: list[tuple[int, str, str]]) -> None:
    """Rename every temp over its target; a failure puts back the targets already replaced."""
    done: list[tuple[int, str, str | None]] = []
    try:
        for dir_fd, tmp, name in temps:
            old = safefs.lstat_at(dir_fd, name)
            if old is not None and not (stat.S_ISREG(old.st_mode) or stat.S_ISLNK(old.st_mode)):
                raise UnsafeOutput("output %s is now %s; nothing was replaced"
                                   % (name, safefs.kind(old.st_mode)))
            backup = None
            if old is not None:
                backup = safefs.temp_name(name)
                os.link(name, backup, src_dir_fd=dir_fd, dst_dir_fd=dir_fd,
                        follow_symlinks=False)
            done.append((dir_fd, name, backup))
            os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        for dir_fd, name, backup in reversed(done):
            with contextlib.suppress(OSError):
                if backup is None:
                    safefs.unlink_at(dir_fd, name)
                else:
                    os.rename(backup, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        raise
    finally:
        for dir_fd, _name, backup in done:
            if backup is not None:
                safefs.unlink_at(dir_fd, backup)


class JobFiles:
    """What a job wrote in ``W/jobs/KEY``, read with bounds and never through a link.

    On a local workspace the job directory is opened once without following links
    and every file is read through that descriptor; over another transport the
    transport's no-follow, bounded reads are used.
    """

    def __init__(self, transport: Transport, root: str, key: str) -> None:
        self.t = transport
        self.directory = posixpath.join(root, p.JOBS, key)
        self.fd: int | None = None
        if isinstance(transport, LocalTransport):
            with safefs.opened(safefs.open_root(posixpath.join(root, p.JOBS))) as jobs:
                try:
                    self.fd = os.open(key, safefs.DIR_FLAGS, dir_fd=jobs)
                except FileNotFoundError:
                    raise RemoteFileMissing("%s does not exist" % self.directory) from None
                except OSError as exc:
                    raise safefs.UnsafeFile("%s: %s" % (self.directory, exc.strerror)) \
                        from None

    def __enter__(self) -> JobFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def shown(self, name: str) -> str:
        return posixpath.join(self.directory, name)

    def read(self, name: str, limit: int, tail: bool = False) -> bytes:
        """At most ``limit`` bytes (``tail``: the last ones; else a larger file is refused)."""
        if self.fd is None:
            data = self.t.read_bytes(self.shown(name), limit=limit + (0 if tail else 1))
            if len(data) > limit and not tail:
                raise safefs.UnsafeFile("%s is larger than the %d bytes allowed"
                                        % (self.shown(name), limit))
            return data
        try:
            return safefs.read_at(self.fd, name, limit, self.shown(name), tail)
        except FileNotFoundError:
            raise RemoteFileMissing("%s does not exist" % self.shown(name)) from None

    def check_outputs(self, names: list[str]) -> None:
        """Each declared output is a regular file here (a link is refused, not followed)."""
        for name in names:
            try:
                self.read(name, 0, tail=True)
            except RemoteFileMissing:
                continue  # the pilot reports a missing output itself
            except safefs.UnsafeFile as exc:
                raise safefs.UnsafeFile("output %s" % exc) from None

    def fetch(self, name: str, dir_fd: int, tmp: str) -> None:
        """Copy output ``name`` to ``tmp`` in the directory ``dir_fd``; mode from the source."""
        if self.fd is not None:
            try:
                src = safefs.open_file_at(self.fd, name, self.shown(name))
            except FileNotFoundError:
                raise RemoteFileMissing("%s does not exist" % self.shown(name)) from None
            except safefs.UnsafeFile as exc:
                raise UnsafeOutput(str(exc)) from None
            with safefs.opened(src):
                mode = os.fstat(src).st_mode
                with safefs.opened(safefs.create_at(dir_fd, tmp, mode)) as dst:
                    copied = safefs.copy_fd(src, dst)  # synced in a batch (Stager.sync)
                if copied != os.fstat(src).st_size:
                    raise TransportError("%s changed while it was copied" % self.shown(name))
            return
        where = safefs.fd_path(dir_fd)
        if where is None:
            raise TransportError("fetching outputs needs /proc/self/fd on this system")
        try:
            self.t.get(self.shown(name), posixpath.join(where, tmp))
        except UNSAFE as exc:  # the HPC side refused a link or a non-file: final
            raise UnsafeOutput(str(exc)) from None
        got = safefs.lstat_at(dir_fd, tmp)
        if got is None or not stat.S_ISREG(got.st_mode):
            raise UnsafeOutput("%s did not arrive as a regular file" % self.shown(name))


Reader = Callable[[str, int, bool], bytes]  # (name in W/jobs/KEY, limit, tail) -> bytes


def read_journal(read: Reader) -> journal.Journal:
    """A job's run lines and result from its journal (``job.json``), with what a pilot of
    an older release wrote instead: the lines of ``runs.jsonl`` first, ``result.json``
    when the journal holds no result. ``read`` raises RemoteFileMissing for a missing file;
    the result is None when there is none."""
    try:
        found = journal.parse(read(p.META, MAX_RECORD_BYTES, True))
    except RemoteFileMissing:
        found = journal.Journal([], None)
    runs, result = found.runs, found.result
    with contextlib.suppress(RemoteFileMissing):
        runs = parse_runs(read(p.RUNS, MAX_RUNS_BYTES, True)) + runs
    if result is None:
        with contextlib.suppress(RemoteFileMissing):
            result = Result.loads(read(p.RESULT, MAX_RECORD_BYTES, False), p.RESULT)
    return journal.Journal(runs, result)


def transport_reader(transport: Transport, directory: str) -> Reader:
    """A :data:`Reader` of the files in ``directory`` through ``transport``."""
    def read(name: str, limit: int, tail: bool) -> bytes:
        path = posixpath.join(directory, name)
        data = transport.read_bytes(path, limit=limit if tail else limit + 1)
        if not tail and len(data) > limit:
            raise transport_base.UnsafeRemoteFile("%s is larger than the %d bytes allowed"
                                                  % (path, limit))
        return data
    return read
