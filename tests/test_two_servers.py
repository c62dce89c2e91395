"""Two submitting servers, each with its own dropbox and spool, sharing one HPC workspace:
one pilot serves both (max_pilots = 1), every job ends ok at its own server; a submitter
killed while ``sbatch`` runs never leaves an unknown pilot or a second one."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from galaxy_hpc_runner.dropbox.registry import LOCK_NAME
from galaxy_hpc_runner.dropbox.submitter import Submitter
from hpc_worker import protocol as p
from hpc_worker.states import PilotState
from tests.services.cluster import SlurmCluster, SshServer
from tests.sitekit import PROJECT, Site, run_together

SERVERS = ("alpha", "beta")


def make_servers(tmp_path: Path, **sections: dict[str, str]) -> list[Site]:
    shared = tmp_path / "shared-workspace"
    shared.mkdir(exist_ok=True)
    sites = []
    for server in SERVERS:
        root = tmp_path / server
        root.mkdir()
        merged = dict(sections)
        merged["hpc_env"] = dict(sections.get("hpc_env", {}), workspace=str(shared),
                                 server=server)
        sites.append(Site(root, **merged))
    return sites


def burst(site: Site, server: str, count: int) -> list[str]:
    names = ["%s%02d" % (server, i) for i in range(count)]  # distinct names per server
    for name in names:
        site.drop(name, site.upper_job(name, "%s says %s\n" % (server, name)))
    return names


def drain_together(sites: list[Site], names: list[list[str]], timeout: float) -> list[Submitter]:
    """Both servers' submitters pass at once, each until its own jobs have results."""
    subs = [site.submitter() for site in sites]
    start = threading.Barrier(len(sites))

    def loop(site: Site, sub: Submitter, mine: list[str]) -> None:
        start.wait()
        site.drain(mine, timeout=timeout, sub=sub)

    run_together(loop, list(zip(sites, subs, names, strict=True)))
    return subs


def check_results(site: Site, server: str, names: list[str]) -> None:
    for name in names:
        job = site.result(name)["job"]
        assert job["status"] == "ok", job
        assert site.out(name + ".upper").read_text() == ("%s says %s\n" % (server, name)).upper()
    assert sorted(site.ledger_lines()) == sorted("run " + n for n in names)


@pytest.fixture
def local_servers(tmp_path: Path) -> Iterator[list[Site]]:
    sites = make_servers(tmp_path, pilot={"slots": "2", "idle_timeout": "3"})
    yield sites
    for site in sites:
        site.close()
    subs = [Submitter(site.cfg) for site in sites[:1]]
    for entry in subs[0].pilots.registry.entries().values():  # pilots of both servers
        if entry.scheduler_id and entry.state is not PilotState.GONE:
            subs[0].backend.cancel(entry.scheduler_id)


def test_bursts_from_two_servers_share_one_pilot(local_servers: list[Site]) -> None:
    names = [burst(site, server, 15) for site, server in zip(local_servers, SERVERS, strict=True)]
    subs = drain_together(local_servers, names, timeout=120)
    for site, server, mine in zip(local_servers, SERVERS, names, strict=True):
        check_results(site, server, mine)
    entries = subs[0].pilots.registry.entries()
    assert len(entries) == 1, entries
    (entry,) = entries.values()
    assert entry.submitter in SERVERS
    assert sum(len(site.spool.pilots()) for site in local_servers) == 1  # only its submitter's
    other = next(sub for sub in subs if sub.pilots.server != entry.submitter)
    picture = other.pilots.site_picture()
    assert picture["server"] == other.pilots.server and picture["servers"] == sorted(SERVERS)
    assert [i["mine"] for i in picture["pilots"]] == [False]
    assert other.pilots.servers_seen() == [entry.submitter]


def test_a_server_killed_mid_pass_leaves_the_other_served(local_servers: list[Site]) -> None:
    alpha, beta = local_servers
    doomed = burst(alpha, "alpha", 5)
    env = dict(os.environ, PYTHONPATH=str(PROJECT))
    proc = subprocess.Popen([sys.executable, "-m", "galaxy_hpc_runner.cli", "-c",
                             str(alpha.config_path), "submitter"], env=env, cwd=PROJECT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not alpha.spool.pilots() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    mine = burst(beta, "beta", 5)
    beta.drain(mine, timeout=90)
    check_results(beta, "beta", mine)
    entries = Submitter(beta.cfg).pilots.registry.entries()
    assert len({e.pilot_id for e in entries.values()}) <= 2  # alpha's, perhaps one after it idled
    alpha.drain(doomed, timeout=90)  # alpha comes back and finishes its own
    check_results(alpha, "alpha", doomed)


# -- the real Slurm, through the real sshd ---------------------------------------------
def ssh_sections(server: SshServer) -> dict[str, dict[str, str]]:
    return {
        "transport": {"type": "ssh", "host": server.host, "port": str(server.port),
                      "user": server.user, "key_file": str(server.client_key_path),
                      "known_hosts": str(server.known_hosts_path), "timeout": "5"},
        "scheduler": {"backend": "slurm", "partition": "debug", "failure_backoff": "2",
                      "command_timeout": "20"},
        "pilot": {"python": sys.executable, "slots": "2", "idle_timeout": "3"},
    }


def slurm_pilots(cluster: SlurmCluster, states: str = "all") -> dict[str, str]:
    """Slurm job id -> name of every pilot job the cluster knows."""
    out = subprocess.run(["squeue", "-h", "-t", states, "-o", "%i %j"], capture_output=True,
                         text=True, env=dict(os.environ, **cluster.env), check=True).stdout
    return {i: n for i, n in (line.split() for line in out.splitlines() if line.strip())
            if n.startswith("pilot-")}


@pytest.mark.slurm
@pytest.mark.ssh
def test_two_servers_over_ssh_share_one_slurm_pilot(
        tmp_path: Path, slurm_cluster: SlurmCluster, ssh_server: SshServer) -> None:
    before = set(slurm_pilots(slurm_cluster))
    sites = make_servers(tmp_path, **ssh_sections(ssh_server))
    try:
        names = [burst(site, server, 10) for site, server in zip(sites, SERVERS, strict=True)]
        subs = drain_together(sites, names, timeout=240)
        for site, server, mine in zip(sites, SERVERS, names, strict=True):
            check_results(site, server, mine)
        entries = subs[0].pilots.registry.entries()
        new = {i: n for i, n in slurm_pilots(slurm_cluster).items() if i not in before}
        assert len(entries) == 1 and set(new.values()) == set(entries)
    finally:
        for site in sites:
            site.close()


def wait_no_pilot(cluster: SlurmCluster, before: set[str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while set(slurm_pilots(cluster, "pending,running")) - before:
        assert time.monotonic() < deadline, "the last pilot did not leave on idle"
        time.sleep(0.2)


WRAPPER = """#!/bin/sh
# sbatch as a slow head node runs it: the job is queued, the answer comes late
touch "$MARKS/started"
"$REAL_SBATCH" "$@"
rc=$?
sleep 3
exit $rc
"""


def wrapper_env(tmp_path: Path) -> dict[str, str]:
    """PATH with the slow sbatch first, and what the wrapper needs."""
    real = shutil.which("sbatch")
    assert real, "sbatch not on PATH"
    wrapper_dir, marks = tmp_path / "wrapper", tmp_path / "marks"
    wrapper_dir.mkdir()
    marks.mkdir()
    (wrapper_dir / "sbatch").write_text(WRAPPER)
    (wrapper_dir / "sbatch").chmod(0o755)
    return {"REAL_SBATCH": real, "MARKS": str(marks),
            "PATH": "%s:%s" % (wrapper_dir, os.environ["PATH"])}


def kill_during_sbatch(site: Site, cluster: SlurmCluster, env: dict[str, str],
                       marks: Path, tries: int = 20) -> None:
    """``submitter --once`` killed (-9) at a random instant of its sbatch, ``tries`` times;
    then passes until the job is done: never two pilots, never one unknown to status."""
    before = set(slurm_pilots(cluster))
    rng = random.Random(9)
    cut_short = 0  # tries whose kill left a pilot recorded only as an intent
    try:
        for i in range(tries):
            name = "k%02d" % i
            wait_no_pilot(cluster, before)  # so this try's pass must submit one
            site.drop(name, site.upper_job(name, "kill %d\n" % i))
            (marks / "started").unlink(missing_ok=True)
            proc = subprocess.Popen([sys.executable, "-m", "galaxy_hpc_runner.cli", "-c",
                                     str(site.config_path), "submitter", "--once"], env=env,
                                    cwd=PROJECT, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 30
            while not (marks / "started").exists() and proc.poll() is None \
                    and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.4))  # before, during or after the real sbatch
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            sub = site.submitter()
            cut_short += any(e.state is PilotState.SUBMITTING
                             for e in sub.pilots.registry.entries().values())
            deadline = time.monotonic() + 90
            while not site.result_path(name).exists():
                assert time.monotonic() < deadline, "try %d: no result" % i
                sub.run_pass()
                alive = slurm_pilots(cluster, "pending,running")
                assert len(set(alive) - before) <= 1, "try %d: two pilots %s" % (i, alive)
                time.sleep(0.2)
            assert site.result(name)["job"]["status"] == "ok"
            known = set(sub.pilots.registry.entries())
            slurm = {n for j, n in slurm_pilots(cluster).items() if j not in before}
            assert slurm <= known, "try %d: pilots unknown to status: %s" % (i, slurm - known)
        assert cut_short >= tries // 4, "only %d of %d kills hit a submission" % (
            cut_short, tries)
    finally:
        site.close()
        for entry in Submitter(site.cfg).pilots.registry.entries().values():
            if entry.scheduler_id and entry.state is not PilotState.GONE:
                subprocess.run(["scancel", entry.scheduler_id], check=False,
                               env=dict(os.environ, **cluster.env))


@pytest.mark.slurm
def test_submitter_killed_while_sbatch_runs_never_leaves_an_unknown_or_second_pilot(
        tmp_path: Path, slurm_cluster: SlurmCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """Local transport: sbatch runs on this host, as a child of the killed submitter."""
    for key, value in slurm_cluster.env.items():
        monkeypatch.setenv(key, value)
    env = dict(os.environ, PYTHONPATH=str(PROJECT), **wrapper_env(tmp_path))
    (site,) = make_servers(tmp_path, scheduler={"backend": "slurm", "partition": "debug",
                                                "command_timeout": "5"},
                           pilot={"python": sys.executable, "idle_timeout": "2"})[:1]
    kill_during_sbatch(site, slurm_cluster, env, Path(env["MARKS"]))


@pytest.mark.slurm
@pytest.mark.ssh
def test_submitter_killed_while_sbatch_runs_over_ssh(
        tmp_path: Path, tmp_path_factory: pytest.TempPathFactory,
        slurm_cluster: SlurmCluster) -> None:
    """SSH transport: the killed submitter's connection drops while sbatch runs remotely."""
    wrapped = wrapper_env(tmp_path)
    with SshServer(tmp_path_factory.mktemp("sshd"), env=dict(slurm_cluster.env, **wrapped)) \
            as server:
        sections = ssh_sections(server)
        sections["scheduler"]["command_timeout"] = "5"
        sections["pilot"].update(slots="1", idle_timeout="2")
        (site,) = make_servers(tmp_path, **sections)[:1]
        env = dict(os.environ, PYTHONPATH=str(PROJECT))
        kill_during_sbatch(site, slurm_cluster, env, Path(wrapped["MARKS"]), tries=12)


@pytest.mark.ssh
def test_the_registry_lock_over_sftp_is_exclusive(tmp_path: Path,
                                                  ssh_server: SshServer) -> None:
    """Two servers' submitters, each its own ssh connection, take the lock 25 times each."""
    sites = make_servers(tmp_path, **ssh_sections(ssh_server))
    subs = [Submitter(site.cfg) for site in sites]
    inside, overlaps = [0], [0]
    barrier = threading.Barrier(len(subs))

    errors: list[BaseException] = []

    def worker(sub: Submitter) -> None:
        try:
            sub.stager.ensure_layout()
            barrier.wait()
            for _ in range(25):
                with sub.pilots.registry.lock(wait=60):
                    inside[0] += 1
                    overlaps[0] += inside[0] > 1
                    time.sleep(0.002)
                    inside[0] -= 1
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(sub,)) for sub in subs]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        for sub in subs:
            sub.transport.close()
        for site in sites:
            site.close()
    assert not errors, errors
    assert overlaps[0] == 0
    assert not (tmp_path / "shared-workspace" / p.PILOTS / LOCK_NAME).exists()


@pytest.mark.slurm
@pytest.mark.ssh
def test_two_servers_racing_over_ssh_queue_one_slurm_pilot_in_50_tries(
        tmp_path: Path, slurm_cluster: SlurmCluster, ssh_server: SshServer) -> None:
    from tests.test_registry import race_submit

    sites = make_servers(tmp_path, **ssh_sections(ssh_server))
    subs = [Submitter(site.cfg) for site in sites]
    before = set(slurm_pilots(slurm_cluster))
    try:
        for sub in subs:
            sub.stager.ensure_layout()
            sub.pilots.preflight()
        for attempt in range(50):
            for sub in subs:
                sub.pilots.refresh()  # both decide on a registry without a live pilot
            got = race_submit((subs[0], subs[1]))
            active = [e for e in subs[0].pilots.registry.entries().values()
                      if e.state is not PilotState.GONE]
            queued = {n for j, n in slurm_pilots(slurm_cluster).items() if j not in before}
            assert len(active) == 1 and queued == {active[0].pilot_id}, (attempt, queued)
            assert set(got.values()) == {active[0].pilot_id}
            subprocess.run(["scancel", active[0].scheduler_id], check=True,
                           env=dict(os.environ, **slurm_cluster.env))
            before |= set(slurm_pilots(slurm_cluster))
            active[0].state = PilotState.GONE  # as the next refresh would find
            subs[0].pilots.registry.write(active[0])
    finally:
        for sub in subs:
            sub.transport.close()
        for site in sites:
            site.close()


def test_a_job_held_by_another_servers_dead_pilot_is_rerun(tmp_path: Path) -> None:
    """beta's job runs on alpha's pilot; that pilot is killed; beta reruns its job."""
    alpha, beta = make_servers(tmp_path, pilot={"idle_timeout": "30", "max_attempts": "3"})
    try:
        first = burst(alpha, "alpha", 1)
        alpha.drain(first, timeout=60)  # alpha's pilot is up, idling
        (pilot,) = Submitter(alpha.cfg).pilots.registry.entries().values()
        beta.drop("slow", beta.sleepy_job("slow", 3))
        sub = beta.pass_until(lambda: beta.state("slow") == "claimed", timeout=30)
        assert beta.spool.get("slow").pilot == pilot.pilot_id  # type: ignore[union-attr]
        assert beta.spool.pilots() == []  # beta queued nothing of its own
        os.kill(int(pilot.scheduler_id), signal.SIGKILL)
        beta.drain(["slow"], timeout=90, sub=sub)
        job = beta.result("slow")["job"]
        assert job["status"] == "ok" and job["attempts"] == 2, job
        assert beta.ledger_lines().count("completed slow") == 1
        assert len(beta.spool.pilots()) == 1  # the rerun's pilot, beta's own
    finally:
        for site in (alpha, beta):
            site.close()
        for entry in Submitter(alpha.cfg).pilots.registry.entries().values():
            if entry.scheduler_id and entry.state is not PilotState.GONE:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(entry.scheduler_id), signal.SIGKILL)
