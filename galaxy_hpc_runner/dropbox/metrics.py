"""Metrics for monitoring: a Prometheus text file written after every submitter pass
(passes that follow each other closely under the loop: at most once a second, see
:class:`PassStatus`).

Every figure comes from what the spool keeps up to date as jobs change (counts per
state, the oldest waiting job): writing it costs nothing per job.

Point node_exporter's textfile collector (``--collector.textfile.directory``) at the
directory of ``[submitter] metrics_file`` (default ``SPOOL/metrics.prom``). The file is
replaced atomically, so a scrape never sees half of it. Every value comes from the
spool and the pass, none from a log.

    hpc_batch_jobs{state}                    jobs in the spool by state (finished: kept ones)
    hpc_batch_pilots{state}                  pilot records by scheduler state
    hpc_batch_oldest_queue_wait_seconds      age of the oldest job not yet running (0: none)
    hpc_batch_pass_duration_seconds          how long the last pass took
    hpc_batch_last_pass_ok                   1 when the last pass reached everything, else 0
    hpc_batch_last_pass_timestamp_seconds    when it ended (Unix time)
    hpc_batch_mode{mode}                     1 for the mode in force (running/paused/draining)
"""

from __future__ import annotations

import datetime
import logging
import math
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from galaxy_hpc_runner.dropbox import control
from hpc_worker import protocol as p
from hpc_worker.states import JobState, PilotState

if TYPE_CHECKING:
    from galaxy_hpc_runner.config import Config
    from galaxy_hpc_runner.dropbox.spool import Spool


log = logging.getLogger(__name__)
LAST_PASS = "last_pass.json"


class PassStatus:
    """``SPOOL/last_pass.json`` and the metrics file after each pass: a status for people
    and monitoring, not state. While passes follow each other closely (a burst under the
    loop, ``every`` > 0) they are written at most every ``every`` seconds, but at once for
    a pass that failed or the first one that did not; :meth:`flush` writes the one held
    back (the loop calls it as soon as it waits). Each write makes a file, and making a
    file is the dearest step on some file systems."""

    def __init__(self, cfg: Config, spool: Spool) -> None:
        self.cfg, self.spool = cfg, spool
        self.every = 0.0  # seconds; 0: every pass writes (cron, --once, the tests)
        self._written = -math.inf
        self._ok: bool | None = None
        self._held: tuple[dict[str, Any], bool, float, float] | None = None

    def after_pass(self, doc: dict[str, Any], ok: bool, duration: float) -> None:
        """``doc`` is what last_pass.json says of the pass; ``ok``: it met no error."""
        self._held = (doc, ok, duration, time.time())
        if not ok or self._ok is not True or time.monotonic() - self._written >= self.every:
            self.flush()

    def flush(self) -> None:
        if self._held is None:
            return
        doc, ok, duration, ended = self._held
        self._held, self._written, self._ok = None, time.monotonic(), ok
        try:  # a status must never fail a pass or stop the loop
            p.write_json(str(self.spool.path / LAST_PASS), doc, sync=False)
            write_metrics(self.cfg, self.spool, ok, duration, ended)
        except OSError as exc:
            log.warning("cannot write the pass status or the metrics file: %s", exc)


def metrics_path(cfg: Config) -> Path:
    return cfg.metrics_file or cfg.spool / "metrics.prom"


def write_metrics(cfg: Config, spool: Spool, ok: bool, duration: float | None = None,
                  now: float | None = None) -> Path:
    """Write the metrics file for the pass that just ended; returns its path."""
    path = metrics_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    p.atomic_write(str(path), render(cfg, spool, ok, duration,
                                     time.time() if now is None else now),
                   sync=False)  # for monitoring, not state: a crash may lose the last one
    return path


def render(cfg: Config, spool: Spool, ok: bool, duration: float | None, now: float) -> str:
    pilots = Counter(str(rec.state) for rec in spool.pilots())
    oldest = spool.oldest_waiting()
    mode = control.current(cfg.spool).mode
    out: list[str] = []
    _family(out, "jobs", "Jobs in the spool by state.",
            [('state="%s"' % s, spool.count(s)) for s in JobState])
    _family(out, "pilots", "Pilot records by scheduler state.",
            [('state="%s"' % s, pilots[str(s)]) for s in PilotState])
    _family(out, "oldest_queue_wait_seconds", "Age of the oldest job not yet running.",
            [("", max(now - oldest, 0.0) if oldest else 0.0)])
    if duration is not None:
        _family(out, "pass_duration_seconds", "Duration of the last submitter pass.",
                [("", duration)])
    _family(out, "last_pass_ok", "1 when the last pass reached everything it needed.",
            [("", int(ok))])
    _family(out, "last_pass_timestamp_seconds", "End of the last pass (Unix time).",
            [("", now)])
    _family(out, "mode", "The maintenance mode in force (hpc-batch pause/drain/resume).",
            [('mode="%s"' % m, int(m is mode)) for m in control.Mode])
    return "\n".join(out) + "\n"


def _family(out: list[str], name: str, helptext: str,
            samples: list[tuple[str, float]]) -> None:
    full = "hpc_batch_" + name
    out += ["# HELP %s %s" % (full, helptext), "# TYPE %s gauge" % full]
    out += ["%s%s %s" % (full, "{%s}" % labels if labels else "", _number(value))
            for labels, value in samples]


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else "%.3f" % value


def timestamp(iso: str | None) -> float | None:
    """Unix time of an ISO 8601 time as the spool writes it; None when there is none."""
    if not iso:
        return None
    try:
        return datetime.datetime.fromisoformat(iso).timestamp()
    except (TypeError, ValueError):
        return None
