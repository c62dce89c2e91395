"""``hpc-batch report --html FILE``: where the time went, as one self-contained page.

Everything comes from the spool: the event log (each job's received / staged / claimed /
finished times and the pilot that held it) and the pilot records (submitted, state,
last change), with each live pilot's heartbeat for its start time when it can be read.
The page has no external resource: inline CSS, an inline SVG timeline, a few lines of
script (tooltips are SVG ``<title>`` elements and work without it).
"""

from __future__ import annotations

import html
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from galaxy_hpc_runner.dropbox.metrics import timestamp
from galaxy_hpc_runner.dropbox.spool import PilotRecord, Spool
from hpc_worker.states import JobState, PilotState, ResultStatus

# span kinds: a pilot is queued, busy (running a job) or idle; a job waits or runs
QUEUED, BUSY, IDLE, WAITING, RUN, RUN_FAILED = "queued", "busy", "idle", "waiting", "run", \
    "run-failed"
COLOURS = {QUEUED: "#b0b0b0", BUSY: "#2e7d32", IDLE: "#a5d6a7", WAITING: "#f9a825",
           RUN: "#1565c0", RUN_FAILED: "#c62828"}
Busy = dict[str, list[tuple[float, float]]]  # pilot -> intervals it ran a job
MAX_ROWS = 400  # rows drawn (the newest); the figures count everything in the window


@dataclass
class Span:
    start: float
    end: float
    kind: str


@dataclass
class Row:
    label: str
    kind: str  # pilot | job
    spans: list[Span] = field(default_factory=list)
    note: str = ""


@dataclass
class Report:
    since: float
    until: float
    pilots: list[Row]
    jobs: list[Row]
    figures: dict[str, Any]


def _job_rows(events: list[dict[str, Any]], now: float) -> tuple[list[Row], Busy]:
    """A row per job: waiting spans (received or given back -> claimed) and running spans;
    and, per pilot, the intervals it ran a job (for its idle time)."""
    by_job: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        if isinstance(event.get("job"), str) and timestamp(event.get("time")) is not None:
            by_job[event["job"]].append(event)
    rows: list[Row] = []
    busy: Busy = defaultdict(list)
    for name, evs in by_job.items():
        tracker = _Tracker(Row(name, "job"), busy)
        for event in evs:
            tracker.step(event)
        tracker.close(now, "")
        rows.append(tracker.row)
    return rows, busy


class _Tracker:
    """Follows one job's events: the span open now (waiting or running) and its holder."""

    def __init__(self, row: Row, busy: Busy) -> None:
        self.row, self.busy = row, busy
        self.opened: tuple[float, str] | None = None
        self.holder = ""

    def close(self, at: float, status: str) -> None:
        if self.opened is None:
            return
        start, kind = self.opened
        if kind == RUN:
            self.busy[self.holder].append((start, at))
            kind = RUN_FAILED if status == ResultStatus.ERROR else kind
        self.row.spans.append(Span(start, at, kind))
        self.opened = None

    def step(self, event: dict[str, Any]) -> None:
        at, to = timestamp(event["time"]) or 0.0, event.get("to")
        if to == JobState.CLAIMED:
            self.close(at, "")
            self.opened, self.holder = (at, RUN), str(event.get("pilot") or "")
        elif to in (JobState.RECEIVED, JobState.STAGED):
            if self.opened is None or self.opened[1] == RUN:
                self.close(at, "")
                self.opened = (at, WAITING)
        elif to == JobState.FINISHED:
            if self.opened is None:  # refused at once: a zero-length mark
                self.opened = (at, RUN)
            self.close(at, str(event.get("status") or ""))
            rc = event.get("rc")
            self.row.note = "%s%s" % (event.get("status") or str(JobState.FINISHED),
                                      " rc %s" % rc if rc not in (None, 0) else "")


def _pilot_rows(pilots: list[PilotRecord], busy: Busy, starts: dict[str, float],
                now: float) -> list[Row]:
    rows = []
    for pilot in pilots:
        submitted = timestamp(pilot.submitted)
        if submitted is None:
            continue
        mine = sorted(busy.get(pilot.pilot_id, []) + busy.get(pilot.scheduler_id, []))
        start = starts.get(pilot.pilot_id) or (mine[0][0] if mine else None)
        end = (timestamp(pilot.updated) or now) if pilot.state is PilotState.GONE else now
        row = Row(pilot.pilot_id, "pilot", note=str(pilot.state) + (" (never started)"
                                                                    if pilot.failed else ""))
        if start is None:
            row.spans.append(Span(submitted, end, QUEUED))
        else:
            row.spans.append(Span(submitted, start, QUEUED))
            row.spans += _running_and_idle(start, max(start, end), _union(mine))
        rows.append(row)
    return rows


def _union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for start, end in sorted(intervals):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _running_and_idle(start: float, end: float, busy: list[tuple[float, float]]) -> list[Span]:
    spans, at = [], start
    for b_start, b_end in busy:
        b_start, b_end = max(b_start, start), min(b_end, end)
        if b_end <= b_start:
            continue
        if b_start > at:
            spans.append(Span(at, b_start, IDLE))
        spans.append(Span(b_start, b_end, BUSY))
        at = b_end
    if at < end:
        spans.append(Span(at, end, IDLE))
    return spans


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def _clip(rows: list[Row], since: float, until: float) -> list[Row]:
    out = []
    for row in rows:
        spans = [Span(max(s.start, since), min(s.end, until), s.kind) for s in row.spans
                 if s.end > since and s.start < until]
        if spans:
            out.append(Row(row.label, row.kind, spans, row.note))
    return out


def build(spool: Spool, since: float, until: float, slots: int,
          starts: dict[str, float] | None = None) -> Report:
    """The report of the window [since, until] from the spool."""
    jobs, busy = _job_rows(spool.history_all(), until)
    pilots = _pilot_rows(spool.pilots(), busy, starts or {}, until)
    pilots, jobs = _clip(pilots, since, until), _clip(jobs, since, until)
    return Report(since, until, pilots, jobs, _figures(spool, pilots, jobs, since, slots))


def _figures(spool: Spool, pilots: list[Row], jobs: list[Row], since: float,
             slots: int) -> dict[str, Any]:
    def total(rows: list[Row], *kinds: str) -> float:
        return sum(s.end - s.start for r in rows for s in r.spans if s.kind in kinds)

    submitted = [p for p in spool.pilots() if (timestamp(p.submitted) or 0) >= since]
    queue_waits = [r.spans[0].end - r.spans[0].start for r in pilots
                   if len(r.spans) > 1 and r.spans[0].kind == QUEUED]
    latencies, waits = [], []
    for row in jobs:
        if row.note:  # finished in the window
            latencies.append(row.spans[-1].end - row.spans[0].start)
        ran = [i for i, s in enumerate(row.spans) if s.kind != WAITING]
        if ran:  # waited until its first run
            waits.append(sum(s.end - s.start for s in row.spans[:ran[0]]))
    held = total(pilots, BUSY, IDLE) * slots
    used = total(jobs, RUN, RUN_FAILED)
    return {"pilots_submitted": len(submitted),
            "pilots_never_started": sum(1 for p in submitted if p.failed),
            "jobs_finished": sum(1 for r in jobs if r.note),
            "jobs_failed": sum(1 for r in jobs if r.note.startswith(ResultStatus.ERROR)),
            "queue_wait_p50": percentile(queue_waits, 50),
            "queue_wait_max": max(queue_waits, default=None),
            "job_wait_p50": percentile(waits, 50), "job_wait_p90": percentile(waits, 90),
            "latency_p50": percentile(latencies, 50), "latency_p90": percentile(latencies, 90),
            "latency_p99": percentile(latencies, 99),
            "gpu_slot_seconds_held": held, "gpu_slot_seconds_used": used,
            "gpu_slot_seconds_idle": max(0.0, held - used)}


def render_html(report: Report, title: str) -> str:
    rows = report.pilots[-MAX_ROWS // 4:] + report.jobs[-MAX_ROWS:]
    return PAGE % {"title": html.escape(title), "figures": _figure_table(report.figures),
                   "svg": _svg(rows, report.since, report.until),
                   "legend": "".join('<span class="key"><i style="background:%s"></i>%s</span>'
                                     % (c, k) for k, c in COLOURS.items())}


def _figure_table(figures: dict[str, Any]) -> str:
    def cell(key: str, value: Any) -> str:
        if value is None:
            text = "-"
        elif key.startswith(("queue_", "job_wait", "latency", "gpu_")):
            text = "%.0f s" % value
        else:
            text = str(value)
        return '<tr><th>%s</th><td id="fig-%s">%s</td></tr>' % (
            key.replace("_", " "), key, html.escape(text))
    return "<table>%s</table>" % "".join(cell(k, v) for k, v in figures.items())


def _svg(rows: list[Row], since: float, until: float) -> str:
    width, label_w, height = 1100, 260, 14
    scale = (width - label_w) / max(1.0, until - since)
    parts = ['<svg id="timeline" xmlns="http://www.w3.org/2000/svg" width="%d" height="%d">'
             % (width, height * len(rows) + 20)]
    for i, row in enumerate(rows):
        y = i * height + 16
        parts.append('<text x="0" y="%d" class="%s">%s</text>' % (
            y + 10, row.kind, html.escape(row.label[:40])))
        for span in row.spans:
            x = label_w + (span.start - since) * scale
            parts.append('<rect x="%.1f" y="%d" width="%.1f" height="%d" fill="%s" '
                         'data-kind="%s" data-row="%s"><title>%s %s: %.0f s %s</title></rect>'
                         % (x, y, max(1.0, (span.end - span.start) * scale), height - 3,
                            COLOURS[span.kind], span.kind, row.kind, html.escape(row.label),
                            span.kind, span.end - span.start, html.escape(row.note)))
    parts.append("</svg>")
    return "".join(parts)


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>%(title)s</title>
<style>
body{font:14px sans-serif;margin:1.5em} table{border-collapse:collapse;margin-bottom:1em}
th{text-align:left;padding:2px 1em 2px 0;font-weight:normal;color:#555} td{text-align:right}
text{font:11px monospace} text.pilot{font-weight:bold} .key{margin-right:1.2em}
.key i{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:middle}
</style></head><body>
<h1>%(title)s</h1>
%(figures)s
<p>%(legend)s</p>
<p id="drawn"></p>
%(svg)s
<script>
(function () {
  var rects = document.querySelectorAll("#timeline rect");
  var kinds = {};
  rects.forEach(function (r) { kinds[r.dataset.kind] = (kinds[r.dataset.kind] || 0) + 1; });
  document.getElementById("drawn").textContent = rects.length + " spans drawn: " +
    Object.keys(kinds).sort().map(function (k) { return k + " " + kinds[k]; }).join(", ");
  document.body.dataset.rendered = "yes";
})();
</script>
</body></html>
"""
