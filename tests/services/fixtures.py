"""Session-scoped pytest fixtures for the real services in :mod:`.cluster`.

Import them into a conftest (``from tests.services.fixtures import *``) or
list this module in ``pytest_plugins`` of a test module.  ``install.sh`` runs
once per session; if it fails, every fixture depending on it FAILS with the
installer's output (never skips).
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .cluster import GridEngine, SlurmCluster, SshServer

log = logging.getLogger(__name__)

INSTALL_SCRIPT = Path(__file__).with_name("install.sh")
INSTALL_TIMEOUT = 900.0

__all__ = ["gridengine", "services_installed", "slurm_cluster", "ssh_server"]


@pytest.fixture(scope="session")
def services_installed() -> None:
    """Run install.sh (fast when everything is installed); fail with its output."""
    try:
        proc = subprocess.run(
            ["sh", str(INSTALL_SCRIPT)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{INSTALL_SCRIPT} timed out after {INSTALL_TIMEOUT:.0f}s: {exc}")
    if proc.returncode != 0:
        pytest.fail(
            f"{INSTALL_SCRIPT} failed (exit {proc.returncode}):\n"
            f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}",
            pytrace=False,
        )
    log.debug("install.sh: %s", proc.stdout.strip())


@pytest.fixture(scope="session")
def slurm_cluster(
    tmp_path_factory: pytest.TempPathFactory, services_installed: None
) -> Iterator[SlurmCluster]:
    """A running one-node Slurm cluster (2 fake GPUs, 16 CPUs)."""
    with SlurmCluster(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def ssh_server(
    tmp_path_factory: pytest.TempPathFactory,
    services_installed: None,
    slurm_cluster: SlurmCluster,
) -> Iterator[SshServer]:
    """A running sshd on 127.0.0.1 whose login sessions see ``SLURM_CONF``."""
    with SshServer(tmp_path_factory.mktemp("sshd"), env=slurm_cluster.env) as server:
        yield server


@pytest.fixture(scope="session")
def gridengine(
    tmp_path_factory: pytest.TempPathFactory, services_installed: None
) -> Iterator[GridEngine]:
    """A running Grid Engine cell; start DRMAA code in a subprocess with ``.env``."""
    with GridEngine(tmp_path_factory.mktemp("gridengine")) as engine:
        yield engine
