"""Moving a job's files to the HPC workspace and its results back."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import secrets
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from galaxy_hpc_runner.config import Config
from galaxy_hpc_runner.dropbox.description import job_node
from galaxy_hpc_runner.dropbox.spool import JobRecord, output_temp
from galaxy_hpc_runner.errors import TransportError
from galaxy_hpc_runner.transport.base import Transport
from hpc_worker import protocol as p
from hpc_worker.states import Reason, ResultStatus

log = logging.getLogger(__name__)


@dataclass
class QueueView:
    """One listing of the HPC queue directories, taken in the order markers move."""

    ready: set[str] = field(default_factory=set)
    claimed: dict[str, str] = field(default_factory=dict)  # key -> pilot
    done: set[str] = field(default_factory=set)

    def has(self, key: str) -> bool:
        return key in self.ready or key in self.claimed or key in self.done


class Stager:
    def __init__(self, cfg: Config, transport: Transport) -> None:
        self.cfg = cfg
        self.t = transport
        self.root = cfg.workspace
        self.tag = hashlib.sha1(str(cfg.spool).encode()).hexdigest()[:8]
        self.begin_pass([])

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def ensure_layout(self) -> None:
        for sub in p.ALL_DIRS:
            self.t.makedirs(self.path(sub))

    def marker_exists(self, key: str) -> bool:
        return self.queue_view().has(key)

    def begin_pass(self, records: list[JobRecord]) -> None:
        """Count input uses: a file several jobs share is uploaded once and hard-linked."""
        self._uses = Counter(src for rec in records for src in rec.meta["inputs"].values())
        self._shared: dict[str, str] = {}
        self._pass_dir = self.path(p.INPUTS, "%s-%s" % (self.tag, secrets.token_hex(4)))

    def end_pass(self) -> None:
        if self._shared:
            self.t.remove(self._pass_dir)  # the jobs' hard links keep the data
        self._shared = {}

    def _put_input(self, local: str, remote: str) -> None:
        if self._uses.get(local, 0) < 2:
            self.t.put(local, remote)
            return
        if local not in self._shared:
            if not self._shared:
                self.t.makedirs(self._pass_dir)
            shared = posixpath.join(self._pass_dir, "%d-%s" % (
                len(self._shared), os.path.basename(local)))
            self.t.put(local, shared)
            self._shared[local] = shared
        self.t.link(self._shared[local], remote)

    def stage(self, rec: JobRecord) -> None:
        """Job directory, inputs, script and job.json first; the ready marker last."""
        key, meta = rec.name, rec.meta
        directory = self.path(p.JOBS, key)
        self.t.remove(directory)  # what an interrupted earlier attempt left
        self.t.makedirs(directory)
        for base, local in meta["inputs"].items():
            self._put_input(local, posixpath.join(directory, base))
        self.t.write_text(posixpath.join(directory, p.SCRIPT), meta["script_text"])
        self.t.write_text(posixpath.join(directory, p.META), json.dumps(meta["pilot_meta"]))
        self.t.write_text(self.path(p.READY, key), "")
        log.info("(%s) staged in %s", key, directory)

    def queue_view(self) -> QueueView:
        view = QueueView(ready=set(self.t.listdir(self.path(p.READY))))
        for name in self.t.listdir(self.path(p.CLAIMED)):
            key, pilot = p.split_claim(name)
            view.claimed[key] = pilot
        view.done = set(self.t.listdir(self.path(p.DONE)))
        return view

    def has_result(self, key: str) -> bool:
        return self.t.exists(self.path(p.JOBS, key, p.RESULT))

    def move_claim(self, key: str, pilot: str, queue: str) -> bool:
        """Move a claim marker to ``queue``; False if it is no longer there."""
        return self.t.rename(self.path(p.CLAIMED, p.claim_name(key, pilot)), self.path(queue, key))

    def drop_claim(self, key: str, pilot: str) -> None:
        self.t.remove(self.path(p.CLAIMED, p.claim_name(key, pilot)))

    def withdraw(self, key: str) -> bool:
        """Take a staged job out of the queue before any pilot claims it."""
        return self.t.rename(self.path(p.READY, key), self.path(p.CANCEL, key))

    def request_cancel(self, key: str) -> None:
        self.t.write_text(self.path(p.CANCEL, key), "")

    def cleanup(self, key: str) -> None:
        self.t.remove(self.path(p.JOBS, key))
        for queue in (p.DONE, p.CANCEL, p.READY):
            self.t.remove(self.path(queue, key))

    # -- results ---------------------------------------------------------------------
    def collect(self, rec: JobRecord) -> dict[str, Any]:
        """The job node for the result; on ok, every output is in place first."""
        directory = self.path(p.JOBS, rec.name)
        result = json.loads(self.t.read_text(posixpath.join(directory, p.RESULT)))
        runs = [json.loads(line) for line in
                self.t.read_text(posixpath.join(directory, p.RUNS)).splitlines() if line]
        node = job_node(
            result["status"], result["message"], rc=result.get("rc"),
            stdout=self._log(directory, p.STDOUT), stderr=self._log(directory, p.STDERR),
            start=result.get("start"), end=result.get("end"),
            attempts=sum(1 for run in runs if "start" in run),
            pilot=result.get("scheduler_id"), host=result.get("host"),
            reason=result.get("reason"))
        if node["status"] == ResultStatus.OK:
            try:
                self.fetch_outputs(directory, rec.meta["outputs"])
            except (TransportError, OSError) as exc:
                node.update(status=str(ResultStatus.ERROR), reason=str(Reason.TRANSFER),
                            message="Could not retrieve outputs: %s" % exc)
        return node

    def _log(self, directory: str, name: str) -> str:
        limit = self.cfg.max_log_bytes
        try:
            text = self.t.read_text(posixpath.join(directory, name), limit=limit + 1)
        except TransportError:
            return ""
        if len(text.encode("utf-8")) > limit:
            return "[... earlier output cut; full log: %s]\n%s" % (
                posixpath.join(directory, name), text[-limit:])
        return text

    def fetch_outputs(self, directory: str, outputs: dict[str, str]) -> None:
        """All outputs to temp names beside their targets, then all renamed into place."""
        temps: list[tuple[str, str]] = []
        try:
            for base, target in outputs.items():
                tmp = output_temp(target)  # .NAME.hpc-batch-tmp-PID-RAND: stale ones are removed
                temps.append((tmp, target))
                self.t.get(posixpath.join(directory, base), tmp)
            for tmp, target in temps:
                os.replace(tmp, target)
        finally:
            for tmp, _ in temps:
                if os.path.exists(tmp):
                    os.unlink(tmp)
