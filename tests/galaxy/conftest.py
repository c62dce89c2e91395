"""Session fixtures: ONE real Galaxy server (installed if missing) with our runner, shared by
every Galaxy module that Galaxy's configuration lets share it.

Its job_conf has an environment per configuration under test (template and Galaxy-script
mode, metadata in or out of the job, ``metadata_strategy: extended`` per destination, the
staged placement over a real sshd, ...); tools are routed to them by tool id. Only what is
server-wide in Galaxy (``enable_celery_tasks``) has a server of its own
(test_galaxy_celery.py). Both start at the session's first test, in the background
(tests/galaxy/fixtures.py), while the tests before these run.
"""

from __future__ import annotations

import pytest

from tests.galaxy.ordinary import Reference, start, tool_runs
from tests.galaxy.server import GalaxyApi, GalaxySite, Starting

INPUT_TEXT = "hello world\nsecond line\n"


@pytest.fixture(scope="session")
def galaxy_site(galaxy_starting: Starting) -> GalaxySite:
    """Galaxy on loopback; installing it must work (a failure fails, it never skips)."""
    return galaxy_starting.wait()


@pytest.fixture(scope="session")
def api(galaxy_site: GalaxySite) -> GalaxyApi:
    return GalaxyApi.for_new_user(galaxy_site)


@pytest.fixture(scope="session")
def history(api: GalaxyApi) -> str:
    return api.history("hpc-batch tests")


@pytest.fixture(scope="session")
def text_dataset(api: GalaxyApi, history: str) -> str:
    return api.upload(history, INPUT_TEXT)


@pytest.fixture(scope="session")
def reference(api: GalaxyApi) -> Reference:
    """Submitted, not awaited: a module submits its own runs before it waits for these."""
    history = api.history("galaxy-script mode")
    inputs = tool_runs(api, history)
    started = {tool: start(api, history, tool + "_local", values)
               for tool, values in inputs.items()}
    return Reference(api, history, inputs, started)
