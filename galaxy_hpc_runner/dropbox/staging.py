"""Moving a job's files to the HPC workspace and its results back."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import secrets
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from galaxy_hpc_runner.config import Config
from galaxy_hpc_runner.dropbox import safefs
from galaxy_hpc_runner.dropbox.description import job_node
from galaxy_hpc_runner.dropbox.jobfiles import (
    UNSAFE,
    JobFiles,
    commit,
    open_output_dir,
    read_journal,
    transport_reader,
    unsafe_node,
)
from galaxy_hpc_runner.dropbox.spool import JobRecord
from galaxy_hpc_runner.errors import RemoteFileMissing, TransportError
from galaxy_hpc_runner.transport.base import LocalTransport, Transport
from hpc_worker import durable
from hpc_worker import protocol as p
from hpc_worker.records import MAX_STR, PROTOCOL_VERSION, Result
from hpc_worker.states import Reason, ResultStatus

log = logging.getLogger(__name__)
SNAPSHOTS = ".hpc-batch-stage-"  # private snapshots of inputs, in the spool, during staging
QUIET = 1.0  # seconds a local queue directory must be unchanged before a listing is reused


@dataclass
class QueueView:
    """One listing of the HPC queue directories, taken in the order markers move."""

    ready: set[str] = field(default_factory=set)  # this server's job names
    claimed: dict[str, str] = field(default_factory=dict)  # name -> pilot
    done: set[str] = field(default_factory=set)
    backlog: int = 0  # ready markers of every server sharing the workspace (pilot policy)

    def has(self, name: str) -> bool:
        return name in self.ready or name in self.claimed or name in self.done


class Stager:
    def __init__(self, cfg: Config, transport: Transport) -> None:
        self.cfg = cfg
        self.t = transport
        self.root = cfg.workspace
        self.server = cfg.server_tag
        self.tag = hashlib.sha1(str(cfg.spool).encode()).hexdigest()[:8]
        self._unsynced: set[str] = set()  # local directories written without fsync
        self._queues: dict[str, tuple[tuple[int, int, int], frozenset[str], int]] = {}
        self.begin_pass([], clean=False)

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def key(self, name: str) -> str:
        """The workspace key of this server's job ``name`` (``SERVER=NAME``)."""
        return p.hpc_key(self.server, name)

    def job_path(self, name: str, *parts: str) -> str:
        """W/jobs/KEY/... of this server's job ``name``."""
        return self.path(p.JOBS, self.key(name), *parts)

    def ensure_layout(self) -> None:
        for sub in p.ALL_DIRS:
            self.t.makedirs(self.path(sub))

    def marker_exists(self, name: str) -> bool:
        return self.queue_view().has(name)

    def begin_pass(self, inputs: Iterable[str], clean: bool = True) -> None:
        """Count input uses (the input paths of every job this pass stages): a file several
        jobs share is uploaded once and hard-linked.

        Under the spool lock (``clean``), snapshots a killed pass left are removed."""
        for stale in self.cfg.spool.glob(SNAPSHOTS + "*") if clean else ():
            shutil.rmtree(stale, ignore_errors=True)
        self._uses = Counter(inputs)
        self.file_mode = p.umask_mode(0o666)  # what the umask leaves: read once a pass
        self._shared: dict[str, str] = {}
        self._pass_dir = self.path(p.INPUTS, "%s-%s" % (self.tag, secrets.token_hex(4)))

    def end_pass(self) -> None:
        if self._shared:
            self.t.remove(self._pass_dir)  # the jobs' hard links keep the data
        self._shared = {}

    def _put_inputs(self, inputs: dict[str, str], directory: str, snapshots: str) -> None:
        """Upload what was validated: each input is opened once, without following links,
        under an allowed input root, and copied from that descriptor (a local workspace)
        or sent as a private snapshot of it, all of a job's in one transfer."""
        pairs: list[tuple[str, str]] = []
        links: list[tuple[str, str]] = []
        for base, local in inputs.items():
            remote = posixpath.join(directory, base)
            if local in self._shared:
                links.append((self._shared[local], remote))
                continue
            target = remote if self._uses.get(local, 0) < 2 else self._shared_path(local)
            with safefs.opened(safefs.open_under(local, self.cfg.allowed_input_roots)) as fd:
                if isinstance(self.t, LocalTransport):  # the workspace is here
                    safefs.copy_to_path(fd, target)
                else:
                    pairs.append((safefs.snapshot(fd, snapshots), target))
            if target != remote:
                self._shared[local] = target
                links.append((target, remote))
        put_many = getattr(self.t, "put_many", None)
        if put_many is not None and len(pairs) > 1:
            put_many(pairs)
        else:
            for snapshot, target in pairs:
                self.t.put(snapshot, target)
        for src, dst in links:
            self.t.link(src, dst)

    def _shared_path(self, local: str) -> str:
        if not self._shared:
            self.t.makedirs(self._pass_dir)
        return posixpath.join(self._pass_dir, "%d-%s" % (len(self._shared),
                                                         os.path.basename(local)))

    def publish(self, name: str) -> None:
        """The ready marker: any pilot may claim the job now (after :meth:`sync`). Only its
        name is protocol; on a local workspace it is a hard link to the job's own job.json,
        which appears whole in one step and allocates no inode (creating one is the
        dearest file step on some file systems, see bench/bench_throughput.py)."""
        key = self.key(name)
        marker = self.path(p.READY, key)
        if not isinstance(self.t, LocalTransport):
            self.t.write_text(marker, "")
        else:
            try:
                safefs.link_or_create(self.path(p.JOBS, key, p.META), marker)
            except OSError as exc:
                raise TransportError("cannot write %s: %s" % (marker, exc.strerror)) from exc
        log.debug("(%s) staged in %s", key, self.path(p.JOBS, key))  # INFO: the spool's line

    def sync(self) -> None:
        """Make the files written since the last sync durable: one ``syncfs`` for a local
        workspace and for the output directories written; a remote transport's writes
        are its own."""
        if self._unsynced:
            paths, self._unsynced = sorted(self._unsynced), set()
            durable.sync_paths(paths)

    def take_unsynced(self) -> set[str]:
        """The directories written without sync since the last call (the caller syncs)."""
        out, self._unsynced = self._unsynced, set()
        return out

    def _write(self, path: str, text: str) -> None:
        """A file of a job directory staging just made: on a local workspace written in
        place, unsynced (see :meth:`sync`). Nobody reads it before its ready marker, which
        comes after the sync; a pass killed before then leaves a directory the next
        attempt removes first."""
        if not isinstance(self.t, LocalTransport):
            self.t.write_text(path, text)
            return
        try:
            fd = os.open(path, p.CREATE_FLAGS, self.file_mode)
            try:
                p.write_all(fd, text.encode("utf-8"), sync=False)  # synced per chunk
            finally:
                os.close(fd)
        except OSError as exc:
            raise TransportError("cannot write %s: %s" % (path, exc.strerror)) from exc
        self._unsynced.add(posixpath.dirname(path))

    def _job_dir(self, directory: str) -> None:
        """An empty job directory; what an interrupted earlier attempt left goes first."""
        if isinstance(self.t, LocalTransport):
            try:
                os.mkdir(directory)
                return
            except FileExistsError:
                pass
            except OSError as exc:
                raise TransportError("cannot make directory %s: %s"
                                     % (directory, exc.strerror)) from exc
        self.t.remove(directory)
        self.t.makedirs(directory)

    def stage_files(self, rec: JobRecord) -> bool:
        """A job's directory, inputs, script and job.json; the caller then syncs a chunk of
        them (:meth:`sync`) and writes their ready markers (:meth:`publish`) last.

        False when the job was refused: an input that is no longer the regular file
        validated at receive (a link swapped in, gone, moved out of its root) ends the job
        here, its error result and done marker written instead for the next pass to collect.
        """
        key, meta = self.key(rec.name), rec.meta
        directory = self.path(p.JOBS, key)
        self._job_dir(directory)
        local = isinstance(self.t, LocalTransport)  # copied from the descriptor: no snapshots
        snapshots = "" if local else tempfile.mkdtemp(prefix=SNAPSHOTS, dir=str(self.cfg.spool))
        try:
            self._put_inputs(meta["inputs"], directory, snapshots)
        except (safefs.UnsafeFile, OSError) as exc:
            self._refuse(key, directory, "Input changed after it was validated, so the job "
                         "was not run: %s" % exc)
            return False
        finally:
            if snapshots:
                shutil.rmtree(snapshots, ignore_errors=True)
        spec = dict(meta["pilot_meta"], v=PROTOCOL_VERSION)
        script = meta["script_text"]
        if script and len(script) <= MAX_STR:  # in the spec: one new file less per job
            spec["script_text"] = script
        else:
            self._write(posixpath.join(directory, p.SCRIPT), script)
        self._write(posixpath.join(directory, p.META), json.dumps(spec) + "\n")  # the journal
        return True

    def _refuse(self, key: str, directory: str, message: str) -> None:
        log.error("(%s) %s", key, message)
        result = Result(status=ResultStatus.ERROR, message=message, reason=Reason.UNSAFE)
        self.t.write_text(posixpath.join(directory, p.RESULT), result.dumps())
        self.t.write_text(self.path(p.DONE, key), "")

    def queue_view(self) -> QueueView:
        """This server's jobs by name in each queue; other servers' only in ``backlog``."""
        ready, backlog = self._queue(p.READY)
        view = QueueView(ready=ready, backlog=backlog)
        for marker in self._listdir(p.CLAIMED):
            key, pilot = p.split_claim(marker)
            view.claimed.update({name: pilot for name in self._mine([key])})
        view.done = self._queue(p.DONE)[0]
        return view

    def _queue(self, queue: str) -> tuple[set[str], int]:
        """This server's names in a queue directory and the number of all its markers.

        A local directory unchanged since a look, and quiet for QUIET seconds before it
        (so no change can hide in the same timestamp tick), is not listed again."""
        if not isinstance(self.t, LocalTransport):
            keys = self.t.listdir(self.path(queue))
            return self._mine(keys), len(keys)
        path = self.path(queue)
        try:
            info = os.stat(path)
        except FileNotFoundError:
            return set(), 0
        sig = (info.st_ino, info.st_mtime_ns, info.st_ctime_ns)
        cached = self._queues.get(queue)
        if cached is not None and cached[0] == sig:
            return set(cached[1]), cached[2]
        keys = self._listdir(queue)
        names = self._mine(keys)
        if time.time() - info.st_mtime_ns / 1e9 > QUIET:
            self._queues[queue] = (sig, frozenset(names), len(keys))
        else:
            self._queues.pop(queue, None)
        return names, len(keys)

    def _listdir(self, queue: str) -> list[str]:
        """Visible entries of a queue directory, in no order (a local one unsorted)."""
        if isinstance(self.t, LocalTransport):
            try:
                return [n for n in os.listdir(self.path(queue)) if not n.startswith(".")]
            except FileNotFoundError:
                return []
        return self.t.listdir(self.path(queue))

    def _mine(self, keys: list[str]) -> set[str]:
        """The names behind the keys of this server (``SERVER=NAME``)."""
        prefix = self.key("")
        if self.server and p.SERVER_SEP not in self.server:  # the prefix names the server
            cut = len(prefix)
            return {key[cut:] for key in keys if key.startswith(prefix)}
        return {key[len(prefix):] for key in keys if key.startswith(prefix)
                and p.server_of(key) == self.server}

    def has_result(self, name: str) -> bool:
        """The job's journal (or an older pilot's result.json) holds its result."""
        try:
            return read_journal(transport_reader(self.t, self.job_path(name))).result is not None
        except (TransportError, ValueError) + UNSAFE:
            return False

    def move_claim(self, name: str, pilot: str, queue: str) -> bool:
        """Move a claim marker to ``queue``; False if it is no longer there."""
        key = self.key(name)
        return self.t.rename(self.path(p.CLAIMED, p.claim_name(key, pilot)), self.path(queue, key))

    def drop_claim(self, name: str, pilot: str) -> None:
        self.t.remove(self.path(p.CLAIMED, p.claim_name(self.key(name), pilot)))

    def withdraw(self, name: str) -> bool:
        """Take a staged job out of the queue before any pilot claims it."""
        key = self.key(name)
        return self.t.rename(self.path(p.READY, key), self.path(p.CANCEL, key))

    def request_cancel(self, name: str) -> None:
        self.t.write_text(self.path(p.CANCEL, self.key(name)), "")

    def cleanup(self, name: str) -> None:
        key = self.key(name)
        self.t.remove(self.path(p.JOBS, key))
        for queue in (p.DONE, p.CANCEL, p.READY):
            marker = self.path(queue, key)
            if not isinstance(self.t, LocalTransport):
                self.t.remove(marker)
                continue
            try:  # a marker is a file: one unlink, no look first
                os.unlink(marker)
            except FileNotFoundError:
                pass
            except OSError:
                self.t.remove(marker)  # not a file after all: the transport's own way

    # -- results ---------------------------------------------------------------------
    def job_files(self, name: str) -> JobFiles:
        """The job's files on the HPC side (RemoteFileMissing when its directory is gone,
        one of UNSAFE when it is no directory)."""
        return JobFiles(self.t, self.root, self.key(name))

    def collect(self, rec: JobRecord, files: JobFiles) -> dict[str, Any]:
        """The job node for the result, outputs not fetched (:meth:`fetch_outputs`); on ok
        every declared output is checked to be a regular file.

        Everything the job wrote is read with bounds and never through a link: a
        link or an oversized record where a result, a log or an output should be is
        an error result (Reason.UNSAFE) that says so. RemoteFileMissing (no result
        at all) is left to the caller.
        """
        try:
            node = self._node(files)
            if node["status"] == ResultStatus.OK:
                files.check_outputs(rec.meta.get("pilot_meta", {}).get("outputs", []))
        except UNSAFE as exc:
            return unsafe_node(rec.name, exc)
        return node

    def _node(self, files: JobFiles) -> dict[str, Any]:
        runs, result = read_journal(files.read)
        if result is None:
            raise RemoteFileMissing("no result in %s" % files.shown(p.META))
        return job_node(
            result.status, result.message, rc=result.rc,
            stdout=self._log(files, p.STDOUT), stderr=self._log(files, p.STDERR),
            start=result.start, end=result.end,
            attempts=sum(1 for run in runs if run.start is not None),
            pilot=result.scheduler_id, host=result.host, reason=result.reason,
            metrics=result.metrics or None)  # GPU accounting and runtime, where measured

    def _log(self, files: JobFiles, name: str) -> str:
        limit = self.cfg.max_log_bytes
        try:
            data = files.read(name, limit + 1, tail=True)
        except RemoteFileMissing:
            return ""
        if len(data) > limit:
            return "[... earlier output cut; full log: %s]\n%s" % (
                files.shown(name), data[-limit:].decode("utf-8", "replace"))
        return data.decode("utf-8", "replace")

    def fetch_outputs(self, outputs: dict[str, str], files: JobFiles) -> None:
        """All outputs to temps beside their targets, then all renamed into place.

        Each target directory is opened once, walked from its allowed root without
        following links; temps are created and renamed through that descriptor (no
        path is resolved again). On any failure no output is touched and every temp
        is removed. An unsafe file or directory raises :class:`UnsafeOutput`.
        """
        dirs: dict[str, int] = {}
        temps: list[tuple[int, str, str]] = []  # (directory fd, temp name, target name)
        try:
            for base, target in outputs.items():
                parent, name = os.path.split(target)
                if parent not in dirs:
                    dirs[parent] = open_output_dir(parent, self.cfg)
                temps.append((dirs[parent], safefs.temp_name(name), name))
                files.fetch(base, dirs[parent], temps[-1][1])
            commit(temps)
            self._unsynced.update(dirs)  # synced before the job's HPC files go
        finally:
            for dir_fd, tmp, _ in temps:
                safefs.unlink_at(dir_fd, tmp)
            for fd in dirs.values():
                os.close(fd)
