"""Smoke tests: each real service starts and does its basic job."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import paramiko
import pytest

from tests.services.cluster import GridEngine, SlurmCluster, SshServer, free_port

FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}


def _slurm(cluster: SlurmCluster, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **cluster.env}
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)


def _wait_job(cluster: SlurmCluster, job_id: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = _slurm(cluster, "squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T").stdout
        if state.strip() in FINAL_STATES:
            return state.strip()
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} not finished after {timeout}s")


def _connect(server: SshServer, known_hosts: Path | None = None) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.load_host_keys(str(known_hosts or server.known_hosts_path))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        server.host,
        server.port,
        username=server.user,
        key_filename=str(server.client_key_path),
        look_for_keys=False,
        allow_agent=False,
        timeout=10,
    )
    return client


def _exec(client: paramiko.SSHClient, command: str) -> tuple[int, str]:
    _, stdout, stderr = client.exec_command(command, timeout=30)
    out = stdout.read().decode() + stderr.read().decode()
    return stdout.channel.recv_exit_status(), out


def test_free_port_is_bindable() -> None:
    port = free_port()
    assert 1024 <= port <= 65535


@pytest.mark.slurm
def test_slurm_gpu_job(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    out = tmp_path / "cvd.txt"
    proc = _slurm(
        slurm_cluster,
        "sbatch",
        "--parsable",
        "--gres=gpu:1",
        f"--chdir={tmp_path}",
        "--wrap",
        f"echo $CUDA_VISIBLE_DEVICES > {out}",
    )
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip().split(";")[0]
    assert _wait_job(slurm_cluster, job_id) == "COMPLETED"
    assert out.read_text().strip() == "0"


@pytest.mark.slurm
def test_slurm_controller_outage(
    slurm_cluster: SlurmCluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # a second, private cluster: free ports let it run beside the session one,
    # and a short MessageTimeout makes clients give up in ~2 s instead of ~9 s
    base = tmp_path_factory.mktemp("slurm-outage")
    with SlurmCluster(base, gpus=0, extra_conf={"MessageTimeout": "2"}) as cluster:
        assert cluster.ctld_port != slurm_cluster.ctld_port
        assert _slurm(cluster, "squeue", "-h").returncode == 0
        cluster.stop_controller()
        try:
            down = _slurm(cluster, "squeue", "-h")
            assert down.returncode != 0
            assert "Unable to contact slurm controller" in down.stderr
        finally:
            cluster.start_controller()
        assert _slurm(cluster, "squeue", "-h").returncode == 0
        cluster.wait_idle(30)
    assert _slurm(slurm_cluster, "squeue", "-h").returncode == 0


@pytest.mark.ssh
@pytest.mark.slurm
def test_ssh_runs_commands_with_slurm_env(ssh_server: SshServer) -> None:
    client = _connect(ssh_server)
    try:
        assert _exec(client, "echo ok") == (0, "ok\n")
        code, out = _exec(client, "echo $SLURM_CONF && sbatch --version")
        assert code == 0, out
        slurm_conf, version = out.splitlines()[:2]
        assert slurm_conf == ssh_server.login_env["SLURM_CONF"]
        assert version.startswith("slurm")
        assert _exec(client, "squeue -h")[0] == 0
    finally:
        client.close()


@pytest.mark.ssh
def test_ssh_unknown_host_key_rejected(ssh_server: SshServer, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        _connect(ssh_server, known_hosts=empty)


@pytest.mark.ssh
def test_ssh_outage_and_restart(ssh_server: SshServer) -> None:
    port, key = ssh_server.port, ssh_server.host_key_public
    ssh_server.stop()
    try:
        with pytest.raises(paramiko.ssh_exception.NoValidConnectionsError):
            _connect(ssh_server)
    finally:
        ssh_server.start()
    assert (ssh_server.port, ssh_server.host_key_public) == (port, key)
    client = _connect(ssh_server)
    try:
        assert _exec(client, "echo ok") == (0, "ok\n")
    finally:
        client.close()


DRMAA_JOB = """
import sys
import drmaa

with drmaa.Session() as session:
    jt = session.createJobTemplate()
    jt.remoteCommand = "/bin/sleep"
    jt.args = ["1"]
    jt.outputPath = ":" + sys.argv[1]
    jt.joinFiles = True
    job_id = session.runJob(jt)
    info = session.wait(job_id, 60)
    print(job_id, info.hasExited, info.exitStatus)
"""


@pytest.mark.drmaa
def test_gridengine_drmaa_job(gridengine: GridEngine, tmp_path: Path) -> None:
    # GLIBC_TUNABLES only works when the process starts with it: use a subprocess
    env = {**os.environ, **gridengine.env}
    proc = subprocess.run(
        [sys.executable, "-c", DRMAA_JOB, str(tmp_path / "job.out")],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    _, exited, status = proc.stdout.split()
    assert (exited, status) == ("True", "0")
