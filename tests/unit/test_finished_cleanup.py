"""A finished job's HPC files wait while other jobs are in flight (issue 12): its result is
delivered at once, the files go when nothing is in flight, and a restarted submitter removes
what an earlier one left (local backend, a real local pilot)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from galaxy_hpc_runner.dropbox.spool import FINISHED
from galaxy_hpc_runner.dropbox.submitter import Submitter
from hpc_worker import protocol as p
from hpc_worker.states import ResultStatus
from tests.sitekit import Site


def _job_dir(site: Site, sub: Submitter, name: str) -> Path:
    return Path(sub.stager.path(p.JOBS, site.key(name)))


def test_files_of_a_finished_job_wait_while_another_runs(make_site: Any) -> None:
    site: Site = make_site(pilot={"slots": "2"})
    site.drop("slow", site.sleepy_job("slow", 4))
    site.drop("fast", site.upper_job("fast"))
    first = site.drain(["fast"])
    assert site.result("fast")["job"]["status"] == ResultStatus.OK
    assert site.state("slow") != FINISHED, "the test needs slow still in flight"
    assert site.state("fast") == FINISHED
    assert _job_dir(site, first, "fast").is_dir(), "removed while slow was in flight"
    first.transport.close()
    second = site.submitter()  # a restarted submitter: it learns of fast from the spool
    site.drain(["slow"], sub=second)
    assert not _job_dir(site, second, "fast").exists()
    assert not _job_dir(site, second, "slow").exists()


def test_files_go_in_the_same_pass_when_nothing_else_is_in_flight(site: Site) -> None:
    site.drop("alone", site.upper_job("alone"))
    sub = site.drain(["alone"])
    assert not _job_dir(site, sub, "alone").exists()


def test_under_the_loop_a_bursts_files_go_a_slice_a_pass(site: Site) -> None:
    """After a burst the loop removes finished jobs' files ``clean_slice`` at a time, each
    pass saying there is more, so a new job waits for one slice, not for all of them."""
    names = ["s%d" % i for i in range(5)]
    for name in names:
        site.drop(name, site.upper_job(name))
    sub = site.submitter()
    sub.clean_slice = 2
    site.drain(names, sub=sub)
    left = [n for n in names if _job_dir(site, sub, n).exists()]
    while left:
        report = sub.run_pass()
        now = [n for n in names if _job_dir(site, sub, n).exists()]
        assert len(left) - len(now) <= 2 and report.more == bool(now), (left, now)
        left = now
    assert not sub.run_pass().more
