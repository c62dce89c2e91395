"""The receive step: one ``NAME.job`` from the dropbox becomes a spool record or an error result.

Whoever may write the dropbox is not trusted with anything else. An entry is
read through one descriptor opened without following links or blocking
(a symlink, FIFO or directory named ``x.job`` is that entry's error result),
capped in size, parsed as plain YAML and validated. Any exception while one
description is handled becomes that description's error result; the pass
goes on with the others.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from galaxy_hpc_runner.config import Config
from galaxy_hpc_runner.dropbox import description as d
from galaxy_hpc_runner.dropbox import safefs
from galaxy_hpc_runner.dropbox.spool import JobRecord, Spool
from galaxy_hpc_runner.dropbox.userfiles import is_resubmission, set_aside_result
from galaxy_hpc_runner.dropbox.watch import QuietDirectory
from galaxy_hpc_runner.errors import JobError
from hpc_worker import protocol as p
from hpc_worker.states import Reason, ResultStatus

log = logging.getLogger(__name__)
MAX_DESCRIPTION_BYTES = 1 << 20
NAME_MAX = 255  # bytes of one file name on every file system we know
# seconds: every answered description is checked for a resubmission this often, a little
# less than the full look QuietDirectory takes every 30 s, so that look includes it
DEEP = 25.0
_unanswerable: set[str] = set()  # names already logged as impossible to answer


class Report(Protocol):
    received: int
    rejected: int
    more: bool  # descriptions left for the next pass


Finish = Callable[[JobRecord, dict[str, Any]], None]


class DropboxReader:
    """The receive step of a pass: new descriptions, at most ``limit`` a pass, in name
    order; the dropbox is not listed again while it is as a look that left nothing
    waiting found it (``watch.QuietDirectory``)."""

    def __init__(self, cfg: Config, spool: Spool, finish: Finish) -> None:
        self.cfg, self.spool, self.finish = cfg, spool, finish
        self._quiet = QuietDirectory(str(cfg.dropbox))
        # NAME -> inode of the NAME.job its NAME.job.finished was found to answer: a pass
        # that sees the same entry again need not stat both (checked anew every DEEP s)
        self._answered: dict[str, int] = {}
        self._deep_at = 0.0

    def receive(self, report: Report, limit: int, hold: bool = False) -> None:
        """Up to ``limit`` new descriptions; ``hold``: their records stay in memory until
        staged (``Spool.create``)."""
        key = self._quiet.key()
        if self._quiet.unchanged(key):
            return
        self._quiet.looked(key, complete=self._listed(report, limit, hold))

    def _listed(self, report: Report, limit: int, hold: bool) -> bool:
        """True when every description listed is taken or answered (none left waiting)."""
        with os.scandir(self.cfg.dropbox) as entries:
            inodes = {entry.name: entry.inode() for entry in entries}
        names = list(inodes)
        answered = {n[: -len(d.FINISHED_SUFFIX)] for n in names if n.endswith(d.FINISHED_SUFFIX)}
        self._forget_unless(answered)
        active = self.spool.active_names()
        taken, complete = 0, True
        with safefs.opened(safefs.open_root(self.cfg.dropbox)) as dir_fd:  # once a pass
            for name in self._waiting(inodes, answered, active):
                if taken >= limit:  # the rest in the next pass, which the loop starts at once
                    report.more = True
                    return False
                taken += 1
                if self.spool.has_finished(name):  # its result was taken away, dropped again
                    self.spool.retire(name)
                done = report.received + report.rejected
                receive_one(self.cfg, self.spool, name, report, self.finish, dir_fd, hold)
                complete = complete and report.received + report.rejected > done
        return complete

    def _forget_unless(self, answered: set[str]) -> None:
        """Keep what is known of the answered names still there; all of it every DEEP s:
        a description rewritten or touched in place keeps its inode (README: noticed
        within 30 s, as the dropbox's own time does not move then either)."""
        if time.monotonic() - self._deep_at >= DEEP:
            self._answered, self._deep_at = {}, time.monotonic()
        elif len(self._answered) > len(answered):
            self._answered = {n: i for n, i in self._answered.items() if n in answered}

    def _waiting(self, inodes: dict[str, int], answered: set[str], active: set[str]
                 ) -> Iterator[str]:
        """Names of the descriptions not yet received, in order."""
        for fname in sorted(inodes):
            if not fname.endswith(d.SUFFIX) or fname.startswith("."):
                continue
            name = fname[: -len(d.SUFFIX)]
            if name in active:
                continue
            if name in answered:
                if self._answered.get(name) == inodes[fname]:
                    continue  # the same entry its result answers: seen in an earlier pass
                if not self._resubmitted(name):
                    self._answered[name] = inodes[fname]
                    continue
            yield name

    def _resubmitted(self, name: str) -> bool:
        """A NAME.job newer than its NAME.job.finished is a new job; the old result is kept
        aside as NAME.job.finished.replaced-NS (README: resubmitting a name)."""
        result = self.cfg.dropbox / (name + d.FINISHED_SUFFIX)
        if not is_resubmission(self.cfg.dropbox / (name + d.SUFFIX), result):
            return False
        kept = set_aside_result(result)
        log.info("(%s) resubmitted: a new job; the earlier result is kept as %s", name, kept)
        return True


def answerable(name: str) -> bool:
    """Whether ``NAME.job.finished`` can exist at all (file names have a byte limit)."""
    try:
        size = len((name + d.FINISHED_SUFFIX).encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:
        return False
    return size <= NAME_MAX


def receive_one(cfg: Config, spool: Spool, name: str, report: Report, finish: Finish,
                dir_fd: int | None = None, hold: bool = False) -> None:
    """Receive ``NAME.job``: a spool record, an error result, or (still young) nothing yet.
    ``dir_fd``: the dropbox, opened once for a pass (else opened here); ``hold``: the
    record stays in memory until it is staged (``Spool.create``)."""
    if not answerable(name):
        if name not in _unanswerable:
            _unanswerable.add(name)
            log.error("(%r) cannot be answered: %s%s would be longer than %d bytes; rename or "
                      "remove %s%s", name, name, d.FINISHED_SUFFIX, NAME_MAX, name, d.SUFFIX)
        return
    doc: dict[str, Any] | None = None
    try:
        doc = _read_description(cfg, name, dir_fd)
        spool.create(name, doc, _meta(d.validate(name, doc, cfg)), hold=hold)
        report.received += 1
        return
    except FileNotFoundError:
        return
    except (JobError, OSError, UnicodeError) as exc:
        if _maybe_incomplete(cfg, name):
            return
        message = "Invalid job description: %s" % _text(exc)
    except Exception as exc:  # one description never stops a pass
        log.exception("(%r) unexpected error while reading its description", name)
        message = "Invalid job description: it could not be handled (%s: %s)" % (
            type(exc).__name__, _text(exc))
    try:
        _reject(cfg, spool, name, doc, message, finish)
    except Exception:  # not even an error result could be written: say so, go on
        log.exception("(%r) could not write its error result (%s)", name, message)
        return
    report.rejected += 1


def _text(exc: BaseException) -> str:
    return str(exc).encode("utf-8", "backslashreplace").decode("utf-8")


def _read_description(cfg: Config, name: str, dir_fd: int | None) -> dict[str, Any]:
    data = read_entry(cfg, name + d.SUFFIX, dir_fd)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JobError("the description is not UTF-8 text (byte %d)" % exc.start) from None
    return d.parse(text)


def read_entry(cfg: Config, fname: str, dir_fd: int | None = None) -> bytes:
    """A dropbox entry's bytes: a regular file, not a link, opened without blocking, capped."""
    if dir_fd is not None:
        return safefs.read_at(dir_fd, fname, MAX_DESCRIPTION_BYTES, fname)
    with safefs.opened(safefs.open_root(cfg.dropbox)) as own:
        return safefs.read_at(own, fname, MAX_DESCRIPTION_BYTES, fname)


def _meta(job: d.Job) -> dict[str, Any]:
    return {"inputs": {job.basenames[k]: v for k, v in job.inputs.items()},
            "outputs": {job.basenames[k]: v for k, v in job.outputs.items()},
            "script_text": job.rendered, "pilot_meta": job.meta()}


def _reject(cfg: Config, spool: Spool, name: str, doc: dict[str, Any] | None,
            message: str, finish: Finish) -> None:
    """The error result; a name the spool cannot hold is answered by the result file alone."""
    node = d.job_node(ResultStatus.ERROR, message, reason=Reason.INVALID)
    if not _utf8(name):
        path = os.path.join(str(cfg.dropbox), name + d.FINISHED_SUFFIX)
        p.atomic_write(path, d.result_document(None, node), mode=p.umask_mode(0o666))
        return
    try:
        rec = spool.create(name, doc)
    except (TypeError, ValueError):  # a document the spool cannot store as JSON
        node["message"] += " (the description is not repeated here: it cannot be stored)"
        rec = spool.create(name, None)
    finish(rec, node)


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _maybe_incomplete(cfg: Config, name: str) -> bool:
    """A young regular file that fails may still be being written: look again next pass."""
    try:
        info = os.stat(cfg.dropbox / (name + d.SUFFIX), follow_symlinks=False)
    except FileNotFoundError:
        return True
    return stat.S_ISREG(info.st_mode) and time.time() - info.st_mtime < cfg.settle
