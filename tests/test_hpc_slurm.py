"""Real HPC: the pilot on a real Slurm, reached through a real sshd with the ssh transport."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from galaxy_hpc_runner.backends.base import PilotSpec
from galaxy_hpc_runner.backends.slurm import SlurmBackend
from galaxy_hpc_runner.cli.exitcodes import Exit
from galaxy_hpc_runner.errors import ConfigError
from galaxy_hpc_runner.transport.base import LocalTransport
from hpc_worker.states import JobState, PilotState
from tests.services.cluster import SlurmCluster, SshServer
from tests.sitekit import Site

pytestmark = [pytest.mark.slurm, pytest.mark.ssh]


@pytest.fixture(scope="module")
def hpc(tmp_path_factory: pytest.TempPathFactory,
        services_installed: None) -> Iterator[tuple[SlurmCluster, SshServer]]:
    """Our own cluster (short MessageTimeout for the outage test) behind our own sshd."""
    with SlurmCluster(tmp_path_factory.mktemp("slurm"),
                      extra_conf={"MessageTimeout": "2"}) as cluster, \
            SshServer(tmp_path_factory.mktemp("sshd"), env=cluster.env) as server:
        yield cluster, server


def hpc_sections(server: SshServer, **overrides: dict[str, str]) -> dict[str, dict[str, str]]:
    sections = {
        "transport": {"type": "ssh", "host": server.host, "port": str(server.port),
                      "user": server.user, "key_file": str(server.client_key_path),
                      "known_hosts": str(server.known_hosts_path), "timeout": "5"},
        "scheduler": {"backend": "slurm", "gres": "gpu:1", "partition": "debug",
                      "failure_backoff": "2", "command_timeout": "20"},
        "pilot": {"python": sys.executable, "idle_timeout": "3"},
    }
    for section, values in overrides.items():
        sections.setdefault(section, {}).update(values)
    return sections


class SlurmSite(Site):
    def close(self) -> None:
        with contextlib.suppress(ConfigError):  # a test of a refused config has no pilots
            sub = self.submitter()
            for pilot in self.spool.pilots():
                if pilot.scheduler_id and pilot.state is not PilotState.GONE:
                    with contextlib.suppress(Exception):
                        sub.backend.cancel(pilot.scheduler_id)
            super().close()


@pytest.fixture
def slurm_site(tmp_path: Path, hpc: tuple[SlurmCluster, SshServer]) -> Iterator[Any]:
    made: list[Site] = []

    def factory(**overrides: dict[str, str]) -> Site:
        site = SlurmSite(tmp_path, **hpc_sections(hpc[1], **overrides))
        made.append(site)
        return site

    yield factory
    for site in made:
        site.close()


def squeue_ids(cluster: SlurmCluster) -> list[str]:
    """Ids of the pilots Slurm knows: jobs named after a pilot id."""
    out = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i %j"], capture_output=True,
                         text=True, env=dict(__import__("os").environ, **cluster.env)).stdout
    return [line.split()[0] for line in out.splitlines()
            if len(line.split()) > 1 and line.split()[1].startswith("pilot-")]


def test_burst_of_50_through_ssh_and_slurm_with_one_sbatch(
        slurm_site: Any, hpc: tuple[SlurmCluster, SshServer]) -> None:
    site = slurm_site(pilot={"slots": "2"}, scheduler={"gres": "gpu:2"})
    before = set(squeue_ids(hpc[0]))
    names = ["s%02d" % i for i in range(50)]
    shared = site.media("shared.txt", "one media file, many tools\n")
    for i, name in enumerate(names):
        doc = site.upper_job(name, "slurm item %d\n" % i)
        if i % 10 == 0:  # the common case: one media file through several tools
            doc["input_map"]["input"] = str(shared)
        site.drop(name, doc)
    site.drain(names, timeout=180)
    pilots = site.spool.pilots()
    assert len(pilots) == 1
    assert set(squeue_ids(hpc[0])) - before == {pilots[0].scheduler_id}
    for i, name in enumerate(names):
        job = site.result(name)["job"]
        assert job["status"] == "ok" and job["pilot"] == pilots[0].scheduler_id, job
        expected = "ONE MEDIA FILE, MANY TOOLS\n" if i % 10 == 0 else "SLURM ITEM %d\n" % i
        assert site.out(name + ".upper").read_text() == expected
    assert sorted(site.ledger_lines()) == sorted("run " + n for n in names)


def test_late_arrival_is_drained_by_the_same_slurm_pilot(slurm_site: Any) -> None:
    site = slurm_site()
    site.drop("early", site.sleepy_job("early", 2))
    sub = site.pass_until(lambda: site.state("early") == "claimed", timeout=60)
    site.drop("late", site.upper_job("late"))
    site.drain(["early", "late"], sub=sub, timeout=60)
    assert len(site.spool.pilots()) == 1
    assert site.result("late")["job"]["pilot"] == site.result("early")["job"]["pilot"]


def test_scancel_mid_job_reruns_it_in_the_next_pilot_exactly_once(slurm_site: Any) -> None:
    site = slurm_site()
    site.drop("cancelled", site.sleepy_job("cancelled", 3))
    sub = site.pass_until(lambda: site.state("cancelled") == "claimed", timeout=60)
    first = site.spool.pilots()[0].scheduler_id
    subprocess.run(["scancel", first], check=True, env=_slurm_env(site))
    site.drain(["cancelled"], sub=sub, timeout=90)
    job = site.result("cancelled")["job"]
    assert job["status"] == "ok" and job["attempts"] == 2
    assert job["pilot"] != first
    assert site.ledger_lines().count("completed cancelled") == 1


def _slurm_env(site: Site) -> dict[str, str]:
    import os

    conf = site.submitter().transport.run(["printenv", "SLURM_CONF"]).stdout.strip()
    return dict(os.environ, SLURM_CONF=conf)


def test_pilot_warned_before_its_time_limit_releases_the_job(
        slurm_site: Any, tmp_path: Path) -> None:
    """Warned 15 s before its 60 s limit, the pilot drains: the running job goes on until
    just before the limit, then is released and rerun by the next pilot. It started late in
    the first pilot (after a 25 s job), so it is not one that no pilot could ever finish."""
    site = slurm_site(pilot={"walltime": "60", "idle_timeout": "5"},
                      scheduler={"signal": "B:USR1@15"})
    site.drop("warmup", site.sleepy_job("warmup", 25))
    sub = site.pass_until(lambda: site.state("warmup") == "claimed", timeout=60)
    flag = tmp_path / "first-attempt"
    site.drop("limited", {"script": "first_slow", "args": {"flag": str(flag)},
                          "output_map": {"output": str(site.out("limited.out"))}})
    site.drain(["warmup", "limited"], sub=sub, timeout=240)
    assert site.result("warmup")["job"]["status"] == "ok"
    job = site.result("limited")["job"]
    assert job["status"] == "ok" and job["attempts"] == 2, job
    assert site.spool.get("limited").lost == 0  # type: ignore[union-attr]
    # the spool's journal, not the pilot's log wording, says it was given back once
    releases = [e for e in site.spool.history("limited")
                if e["from"] == JobState.CLAIMED and e["to"] == JobState.STAGED]
    assert len(releases) == 1 and "released by pilot" in releases[0]["message"], releases


def test_pass_without_sshd_fails_cleanly_and_the_next_completes(
        slurm_site: Any, hpc: tuple[SlurmCluster, SshServer]) -> None:
    site = slurm_site()
    names = ["o%d" % i for i in range(5)]
    for name in names:
        site.drop(name, site.upper_job(name))
    hpc[1].stop()
    try:
        sub = site.submitter()
        report = sub.run_pass()
        assert report.errors and "cannot reach" in report.errors[0]
        assert report.received == 5 and report.staged == 0
        status = site.cli("status", "--config", str(site.config_path)).stdout
        assert "last pass" in status and "FAILED" in status and "cannot reach" in status
    finally:
        hpc[1].start()
    site.drain(names, sub=sub, timeout=90)
    assert all(site.result(n)["job"]["status"] == "ok" for n in names)
    assert len(site.spool.pilots()) == 1


def test_controller_down_never_yields_a_second_pilot(
        slurm_site: Any, hpc: tuple[SlurmCluster, SshServer]) -> None:
    site = slurm_site()
    site.drop("c0", site.sleepy_job("c0", 4))
    sub = site.pass_until(lambda: site.state("c0") == "claimed", timeout=60)
    hpc[0].stop_controller()
    try:
        for i in range(1, 4):
            site.drop("c%d" % i, site.upper_job("c%d" % i))
        for _ in range(3):
            sub.run_pass()
        assert len(site.spool.pilots()) == 1
        assert site.spool.pilots()[0].state is not PilotState.GONE  # unknown: last word kept
    finally:
        hpc[0].start_controller()
    site.drain(["c0", "c1", "c2", "c3"], sub=sub, timeout=90)
    assert all(site.result("c%d" % i)["job"]["status"] == "ok" for i in range(4))
    assert len({p.scheduler_id for p in site.spool.pilots()}) == len(site.spool.pilots())
    assert site.ledger_lines().count("completed c0") == 1


def test_unknown_host_key_is_refused(slurm_site: Any, tmp_path: Path) -> None:
    """Refused when the config is read (check and every pass), before any connection."""
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    site = slurm_site(transport={"known_hosts": str(empty)})
    site.drop("k", site.upper_job("k"))
    with pytest.raises(ConfigError, match=r"no key for.*ssh-keyscan"):
        site.submitter().run_pass()


def test_pilot_dry_run_prints_the_sbatch_command_and_script(slurm_site: Any) -> None:
    site = slurm_site()
    proc = site.cli("pilot", "--dry-run", "--config", str(site.config_path))
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first.startswith("sbatch --parsable --job-name=pilot-")
    assert "--export=NONE" in first
    assert "--gres=gpu:1" in first and "--signal=B:USR1@120" in first
    assert "--workspace" in proc.stdout and "--pilot-id pilot-" in proc.stdout
    assert site.spool.pilots() == []


def test_check_remote_reaches_workspace_pilot_and_scheduler(slurm_site: Any) -> None:
    site = slurm_site()
    proc = site.cli("--config", str(site.config_path), "check", "--remote")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for line in ("ok: workspace", "ok: the pilot program deploys and runs",
                 "ok: the slurm scheduler answers"):
        assert line in proc.stdout


def test_check_remote_finds_a_partition_typo_before_any_queue_wait(slurm_site: Any) -> None:
    site = slurm_site(scheduler={"partition": "gpux"})
    proc = site.cli("--config", str(site.config_path), "check", "--remote")
    assert proc.returncode == Exit.UNREACHABLE
    assert "FAILED: the slurm scheduler answers: partition 'gpux' is not one of debug" \
        in proc.stdout


def test_pilot_found_by_name_and_without_the_submitters_environment(
        hpc: tuple[SlurmCluster, SshServer], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The backend on a Slurm client host: the job name is the pilot id, nothing exported."""
    for key, value in hpc[0].env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("HPC_KEY_PASS", "s3cret-passphrase")
    (tmp_path / "pilots").mkdir()
    backend = SlurmBackend(SimpleNamespace(scheduler={"command_timeout": "20"}),  # type: ignore[arg-type]
                           LocalTransport())
    pilot_id = "pilot-find-%d" % os.getpid()
    argv = ["/bin/sh", "-c", "env > %s/env.txt; sleep 30" % tmp_path]
    spec = PilotSpec(pilot_id=pilot_id, argv=argv, env={"PYTHONPATH": "/code dir"},
                     workspace=str(tmp_path), walltime=120)
    assert backend.find_by_name(pilot_id) is None
    sid = backend.submit(spec)
    try:
        assert backend.find_by_name(pilot_id) == sid
        deadline = time.monotonic() + 30
        while not (tmp_path / "env.txt").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        states = backend.status([sid, "999999"])  # an id Slurm does not know (any more)
        assert states[sid].state is PilotState.RUNNING
        assert states["999999"].state is PilotState.GONE
        env = (tmp_path / "env.txt").read_text()
        assert "SLURM_JOB_NAME=%s" % pilot_id in env and "PYTHONPATH=/code dir" in env
        assert "HPC_KEY_PASS" not in env and "s3cret" not in env
    finally:
        backend.cancel(sid)
    deadline = time.monotonic() + 30
    while backend.status([sid])[sid].state is not PilotState.GONE:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert backend.find_by_name(pilot_id) == sid  # an ended job is still found while listed
    backend.cancel(sid)  # cancelling an ended pilot is no error


class CutAfterSbatch(SlurmBackend):
    """sbatch runs, then the ssh session dies before its answer comes back."""

    def submit_argv(self, spec: PilotSpec) -> list[str]:
        return ["sh", "-c", 'sbatch "$@" >/dev/null; kill -9 $PPID; sleep 5', "sh",
                *super().submit_argv(spec)[1:]]


def test_a_submission_cut_off_after_sbatch_is_found_by_name_not_repeated(
        hpc: tuple[SlurmCluster, SshServer], tmp_path: Path) -> None:
    from galaxy_hpc_runner.backends.base import SubmissionUncertain
    from galaxy_hpc_runner.transport.ssh import SshTransport

    server = hpc[1]
    t = SshTransport(server.host, server.port, server.user, str(server.client_key_path),
                     known_hosts=str(server.known_hosts_path), timeout=10)
    backend = CutAfterSbatch(SimpleNamespace(scheduler={"command_timeout": "20"}),  # type: ignore[arg-type]
                             t)
    (tmp_path / "pilots").mkdir()
    pilot_id = "pilot-cut-%d" % os.getpid()
    spec = PilotSpec(pilot_id=pilot_id, argv=["sleep", "30"], workspace=str(tmp_path),
                     walltime=120)
    before = set(squeue_ids(hpc[0]))
    with pytest.raises(SubmissionUncertain, match="look it up by name"):
        backend.submit(spec)
    sid = backend.find_by_name(pilot_id)  # a fresh connection
    try:
        assert sid is not None and set(squeue_ids(hpc[0])) - before == {sid}
        assert backend.status([sid])[sid].state in (PilotState.PENDING, PilotState.RUNNING)
    finally:
        if sid:
            backend.cancel(sid)
        t.close()
