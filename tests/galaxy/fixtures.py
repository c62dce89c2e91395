"""The Galaxy servers of the test session, started early (tests/conftest.py imports these).

A Galaxy 26.1 start costs 30-45 s of one core (imports, the app, the routes), and the
tests that run before tests/galaxy (tests/adversarial, ~90 s) leave a core mostly idle: so
:func:`galaxy_early` starts, at the first test of a session, the servers that its selected
tests will use, each in a thread (:class:`~tests.galaxy.server.Starting`); a Galaxy fixture
then waits for its start (an error of the start fails that fixture's tests, never skips).
A session that selects no Galaxy test starts none.

- ``galaxy_starting``: the shared server (tests/galaxy/conftest.py ``galaxy_site``), with
  an sshd for the staged placement.
- ``celery_starting``: the server with ``enable_celery_tasks`` (server-wide in Galaxy),
  stopped by test_galaxy_celery.py when that module ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.galaxy.server import Starting, starting_site
from tests.services.ssh import SshServer

# Galaxy 26's Celery: the SQLAlchemy transport on Galaxy's own database, an SQLite result
# backend (both Galaxy's defaults); the worker is started by test_galaxy_celery.py.
CELERY: dict[str, Any] = {
    "enable_celery_tasks": True, "metadata_strategy": "celery",
    "retry_metadata_internally": False,
    "celery_conf": {"broker_url": None, "result_backend": None,
                    "task_routes": {"galaxy.fetch_data": "galaxy.external",
                                    "galaxy.set_job_metadata": "galaxy.external"}}}
EARLY = ("galaxy_starting", "celery_starting")


@pytest.fixture(scope="session")
def galaxy_starting(tmp_path_factory: pytest.TempPathFactory,
                    services_installed: None) -> Iterator[Starting]:
    """The shared site (with an sshd for the staged placement), its server starting."""
    root = tmp_path_factory.mktemp("galaxy-site")
    with SshServer(root / "sshd") as server, starting_site(root, ssh=server) as starting:
        yield starting


@pytest.fixture(scope="session")
def celery_starting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Starting]:
    """The Celery site, its server starting (template mode: metadata on the host)."""
    with starting_site(tmp_path_factory.mktemp("galaxy-celery"), slots=4,
                       galaxy_overrides=CELERY, template_metadata_in_process=False) as starting:
        yield starting


@pytest.fixture(scope="session", autouse=True)
def galaxy_early(request: pytest.FixtureRequest) -> None:
    """Start, in the background, each Galaxy server that a selected test will use."""
    wanted: set[str] = set()
    for item in request.session.items:
        wanted.update(getattr(item, "fixturenames", ()))
    for name in EARLY:
        if name in wanted:
            request.getfixturevalue(name)
