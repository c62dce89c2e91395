"""Shared fixtures: a temp site for the pipeline tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sitekit import Site


@pytest.fixture(autouse=True)
def _private_state_home(tmp_path_factory: pytest.TempPathFactory,
                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A config without [spool] path keeps its spool under $XDG_STATE_HOME: not the tester's."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    s = Site(tmp_path)
    yield s
    s.close()


@pytest.fixture
def make_site(tmp_path: Path) -> Iterator[object]:
    """A site with config overrides: make_site(pilot={"slots": "2"})."""
    made: list[Site] = []

    def factory(**sections: dict[str, str]) -> Site:
        s = Site(tmp_path, **sections)
        made.append(s)
        return s

    yield factory
    for s in made:
        s.close()


# Real services (munge + Slurm, sshd, Grid Engine), session-scoped; the fault matrix's table.
from tests.faults.report import pytest_terminal_summary  # noqa: E402, F401 (the matrix table)

# The Galaxy servers, started in the background at the first test of a session that uses them.
from tests.galaxy.fixtures import celery_starting, galaxy_early, galaxy_starting  # noqa: E402, F401
from tests.services.fixtures import (  # noqa: E402, F401
    gridengine,
    services_installed,
    slurm_cluster,
    ssh_server,
)
