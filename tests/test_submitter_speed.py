"""Event-driven, constant-cost passes (issue 12), as behaviour on the local backend with
real pilots and real files; the speed itself is measured in bench/bench_throughput.py."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from galaxy_hpc_runner.dropbox import control
from galaxy_hpc_runner.dropbox import spool as spool_module
from galaxy_hpc_runner.dropbox import submitter as submitter_module
from hpc_worker.states import JobState


def test_the_loop_runs_a_dropped_job_on_the_change_not_at_the_interval(make_site: Any) -> None:
    """Interval 60 s: the drop and the job's end each start a pass by themselves."""
    site = make_site(submitter={"interval": "60"})
    sub = site.submitter()
    stop = threading.Event()
    loop = threading.Thread(target=sub.loop, args=(stop,), daemon=True)
    loop.start()
    try:
        time.sleep(0.5)  # the loop's first pass is over: it waits now
        site.drop("a", site.upper_job("a"))
        deadline = time.monotonic() + 40  # well under the 60 s interval
        while not site.result_path("a").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert site.result_path("a").exists(), "the loop waited for its interval"
    finally:
        stop.set()
        loop.join(30)
    assert site.result("a")["job"]["status"] == "ok"
    assert site.out("a.upper").read_text() == "HELLO WORLD\n"


def test_a_backlog_is_taken_in_chunks_with_a_pilot_asked_for_in_the_first_pass(
        make_site: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(submitter_module, "CHUNK", 8)
    site = make_site()
    names = ["j%d" % i for i in range(12)]
    for name in names:
        site.drop(name, site.upper_job(name))
    sub = site.submitter()
    report = sub.run_pass()  # a quarter of a chunk while the ready queue is short
    assert (report.received, report.staged, report.more) == (2, 2, True)
    assert report.pilots_submitted == 1  # the pilot starts on the first chunk
    site.drain(names, sub=sub)
    for name in names:
        assert site.result(name)["job"]["status"] == "ok"
    received = [e["job"] for e in sub.spool.history_all() if e["to"] == JobState.RECEIVED]
    assert sorted(received) == sorted(names)  # each received once


def test_a_staging_chunk_asks_for_pilots_before_the_next_chunk(
        make_site: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Received jobs waiting (paused), then resumed: pilots are asked for after the first
    staged chunk, while the rest still waits to be staged."""
    monkeypatch.setattr(submitter_module, "CHUNK", 2)
    site = make_site()
    control.set_mode(site.cfg.spool, control.Mode.PAUSED, "test")
    names = ["k%d" % i for i in range(5)]
    for name in names:
        site.drop(name, site.upper_job(name))
    sub = site.submitter()
    while sub.run_pass().more:
        pass
    control.set_mode(site.cfg.spool, control.Mode.RUNNING)
    staged_when_asked: list[int] = []
    submit = sub.pilots.submit

    def counting_submit() -> Any:
        staged_when_asked.append(sum(1 for r in sub.spool.active()
                                     if r.state != JobState.RECEIVED))
        return submit()

    monkeypatch.setattr(sub.pilots, "submit", counting_submit)
    report = sub.run_pass()
    assert report.staged == 5 and report.pilots_submitted == 1
    assert staged_when_asked == [2]
    site.drain(names, sub=sub)


def test_an_idle_pass_reads_no_record_that_did_not_change(
        make_site: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool_module, "FRESH", 0.0)
    site = make_site()
    control.set_mode(site.cfg.spool, control.Mode.PAUSED, "test")
    for i in range(20):
        site.drop("w%d" % i, site.upper_job("w%d" % i))
    sub = site.submitter()
    assert sub.run_pass().received == 20
    sub.run_pass()
    reads = sub.spool.reads
    report = sub.run_pass()
    assert report.ok and sub.spool.reads == reads
