"""`hpc-batch report --html`: the figures from a spool with known times, and the page as a
real headless Chromium renders it (its script ran, the timeline's colours are drawn)."""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from galaxy_hpc_runner.cli import report
from galaxy_hpc_runner.dropbox.spool import PilotRecord, Spool
from hpc_worker import protocol as p
from hpc_worker.states import JobState, PilotState

PROJECT = Path(__file__).resolve().parents[2]
T0 = datetime.datetime(2026, 11, 27, 8, 0, tzinfo=datetime.timezone.utc).timestamp()
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def iso(offset: float) -> str:
    return datetime.datetime.fromtimestamp(T0 + offset, datetime.timezone.utc).isoformat()


def event(at: float, job: str, old: str | None, new: str, **detail: object) -> None:
    EVENTS.append(dict({"time": iso(at), "job": job, "from": old, "to": new}, **detail))


EVENTS: list[dict[str, object]] = []


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    """One pilot queued 600 s, running 400 s (idle 100 s of it); two jobs, one failed."""
    s = Spool(tmp_path / "spool")
    EVENTS.clear()
    R, S, C, F = (str(x) for x in JobState)
    event(0, "a", None, R)
    event(1, "a", R, S)
    event(600, "a", S, C, pilot="pilot-1")
    event(800, "a", C, F, status="ok", rc=0)
    event(100, "b", None, R)
    event(101, "b", R, S)
    event(850, "b", S, C, pilot="pilot-1")
    event(950, "b", C, F, status="error", rc=3)
    for e in EVENTS:
        p.append_jsonl(str(s.events), e)
    s.save_pilot(PilotRecord(pilot_id="pilot-1", scheduler_id="42", backend="slurm",
                             submitted=iso(0), state=PilotState.GONE))
    record = p.read_json(str(s.pilots_dir / "pilot-1.json"))
    record["updated"] = iso(1000)  # gone at 1000: queued 0-600, ran 600-1000
    p.write_json(str(s.pilots_dir / "pilot-1.json"), record)
    return s


def test_the_figures_say_where_the_time_went(spool: Spool) -> None:
    built = report.build(spool, T0 - 10, T0 + 2000, slots=1)
    f = built.figures
    assert f["pilots_submitted"] == 1 and f["jobs_finished"] == 2 and f["jobs_failed"] == 1
    assert f["queue_wait_p50"] == 600 and f["queue_wait_max"] == 600
    assert f["job_wait_p50"] == 600 and f["job_wait_p90"] == 750
    assert f["latency_p50"] == 800 and f["latency_p99"] == 850
    assert f["gpu_slot_seconds_held"] == 400 and f["gpu_slot_seconds_used"] == 300
    assert f["gpu_slot_seconds_idle"] == 100
    [pilot] = built.pilots
    assert [(s.kind, s.end - s.start) for s in pilot.spans] == [
        ("queued", 600), ("busy", 200), ("idle", 50), ("busy", 100), ("idle", 50)]
    assert {r.label: r.note for r in built.jobs} == {"a": "ok", "b": "error rc 3"}


def test_a_window_clips_the_timeline(spool: Spool) -> None:
    [pilot] = report.build(spool, T0 + 700, T0 + 900, slots=1).pilots
    assert [(s.kind, s.start - T0, s.end - T0) for s in pilot.spans] == [
        ("busy", 700, 800), ("idle", 800, 850), ("busy", 850, 900)]
    assert report.percentile([], 50) is None
    assert report.percentile([5.0, 1.0, 3.0], 50) == 3.0


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/test.sh "
                                              "installs Debian's chromium)")
def test_chromium_renders_the_page(spool: Spool, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(report.render_html(report.build(spool, T0 - 10, T0 + 1100, 1), "test"))
    assert "http" not in page.read_text().replace("http://www.w3.org/2000/svg", "")
    browse = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
              "--user-data-dir=%s" % (tmp_path / "profile")]
    dom = subprocess.run(browse + ["--dump-dom", page.as_uri()], capture_output=True,
                         text=True, timeout=120).stdout
    assert 'data-rendered="yes"' in dom  # its script ran
    assert "9 spans drawn: busy 2, idle 2, queued 1, run 1, run-failed 1, waiting 2" in dom
    assert '<td id="fig-latency_p50">800 s</td>' in dom
    shot = tmp_path / "shot.png"
    subprocess.run(browse + ["--screenshot=%s" % shot, "--window-size=1200,400",
                             page.as_uri()], capture_output=True, timeout=120)
    from PIL import Image

    colours = {rgb for _, rgb in Image.open(shot).convert("RGB").getcolors(1 << 24) or []}
    for kind in report.COLOURS:
        rgb = tuple(int(report.COLOURS[kind][i:i + 2], 16) for i in (1, 3, 5))
        assert rgb in colours, kind


def test_the_command_writes_the_page(spool: Spool, tmp_path: Path) -> None:
    for sub in ("dropbox", "media", "ws"):
        (tmp_path / sub).mkdir()
    config = tmp_path / "site.ini"
    config.write_text("[dropbox]\npath = dropbox\nallowed_input_roots = media\n"
                      "allowed_output_roots = media\n[spool]\npath = spool\n[hpc_env]\n"
                      "workspace = %s/ws\nscripts = /s\ncontainers = /c\n" % tmp_path)
    out = tmp_path / "page.html"
    proc = subprocess.run([sys.executable, "-m", "galaxy_hpc_runner.cli", "-c", str(config),
                           "report", "--html", str(out), "--since", "2026-11-27T07:00+00:00",
                           "--until", "2026-11-27T09:00+00:00"], capture_output=True, text=True,
                          timeout=60, env=dict(os.environ, PYTHONPATH=str(PROJECT)))
    assert proc.returncode == 0, proc.stderr
    assert "1 pilot(s), 2 job(s)" in proc.stdout
    assert '<td id="fig-queue_wait_p50">600 s</td>' in out.read_text()
