"""Collecting a finished job: its result node, then its outputs, retried when fetching fails.

A fetch that fails for a reason that may pass (disk full, a dropped connection)
keeps everything on the HPC side and leaves the job where it is: the next pass
tries again, while ``policy.may_retry_collect`` allows (``FETCH_TRIES`` failures
and ``FETCH_MAX_AGE`` seconds since the first, both). Then the job ends in error
naming the files. Temp files an interrupted fetch left beside a job's outputs
(``.NAME.hpc-batch-tmp-*``) are removed first (each output directory is listed once
per process: ``userfiles.StaleTemps``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from galaxy_hpc_runner.dropbox import description as d
from galaxy_hpc_runner.dropbox import policy
from galaxy_hpc_runner.dropbox.jobfiles import UNSAFE, JobFiles, UnsafeOutput, unsafe_node
from galaxy_hpc_runner.dropbox.spool import JobRecord, Spool
from galaxy_hpc_runner.dropbox.staging import Stager
from galaxy_hpc_runner.dropbox.userfiles import StaleTemps, remove_stale_output_temps
from galaxy_hpc_runner.errors import RemoteFileMissing, TransportError
from hpc_worker.states import Reason, ResultStatus

log = logging.getLogger(__name__)
FETCH_TRIES = 5  # failed collections of a job's outputs before it may end in error ...
FETCH_MAX_AGE = 3600.0  # ... and seconds since the first failure (both must be reached)


class Collector:
    def __init__(self, spool: Spool, stager: Stager) -> None:
        self.spool, self.stager = spool, stager
        self.stale = StaleTemps()  # each output directory listed once per process

    def collect(self, rec: JobRecord, errors: list[str]) -> dict[str, Any] | None:
        """The job's result node with its outputs in place; None to try again next pass
        (the reason is appended to ``errors``, so the pass is reported failed). The job's
        directory is opened once for both (``Stager.job_files``)."""
        outputs: dict[str, str] = rec.meta.get("outputs") or {}
        for path in remove_stale_output_temps(list(outputs.values()), self.stale):
            log.info("(%s) removed %s, left by an interrupted fetch", rec.name, path)
        try:
            files = self.stager.job_files(rec.name)
        except UNSAFE as exc:
            return unsafe_node(rec.name, exc)
        except RemoteFileMissing as exc:
            return _lost(rec, exc)
        with files:
            node = self.result_node(rec, files)
            if node["status"] != ResultStatus.OK or not outputs:
                return node
            return self._fetch(rec, node, outputs, files, errors)

    def result_node(self, rec: JobRecord, files: JobFiles) -> dict[str, Any]:
        """The result node, outputs not fetched; a result that vanished or broke is an error."""
        try:
            return self.stager.collect(rec, files)
        except (RemoteFileMissing, ValueError, KeyError) as exc:
            return _lost(rec, exc)

    def _fetch(self, rec: JobRecord, node: dict[str, Any], outputs: dict[str, str],
               files: JobFiles, errors: list[str]) -> dict[str, Any] | None:
        try:
            self.stager.fetch_outputs(outputs, files)
        except UnsafeOutput as exc:  # never retried: what the job wrote is not trusted
            node.update(status=str(ResultStatus.ERROR), reason=str(Reason.UNSAFE),
                        message="Outputs not collected, nothing was replaced: %s" % exc)
        except (TransportError, OSError) as exc:
            if self._again(rec, outputs, exc, errors):
                return None
            node.update(status=str(ResultStatus.ERROR), reason=str(Reason.TRANSFER),
                        message="Could not retrieve outputs after %d tries: %s (outputs: %s)"
                        % (rec.fetch_failures + 1, exc, ", ".join(outputs.values())))
        return node

    def _again(self, rec: JobRecord, outputs: dict[str, str], exc: Exception,
               errors: list[str]) -> bool:
        """Note a failed fetch; True while the policy says try again on a later pass."""
        now = time.time()
        failures, since = rec.fetch_failures + 1, rec.fetch_since or now
        if not policy.may_retry_collect(failures, now - since, FETCH_TRIES, FETCH_MAX_AGE):
            return False
        message = ("(%s) could not fetch its outputs (%s): %s; they stay on the HPC side and "
                   "the next pass tries again (%d failure(s) so far)"
                   % (rec.name, ", ".join(outputs.values()), exc, failures))
        log.error("%s", message)
        self.spool.note(rec, fetch_failures=failures, fetch_since=since, message=message)
        errors.append(message)
        return True


def _lost(rec: JobRecord, exc: Exception) -> dict[str, Any]:
    log.error("(%s) unreadable result on the HPC side: %s", rec.name, exc)
    return d.job_node(ResultStatus.ERROR, "The job's result could not be read on the HPC "
                      "side: %s" % exc, reason=Reason.LOST)
