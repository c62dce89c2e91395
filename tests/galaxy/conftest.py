"""Session fixtures: ONE real Galaxy server (installed if missing) with our runner, shared by
every Galaxy module that Galaxy's configuration lets share it.

Its job_conf has an environment per configuration under test (template and Galaxy-script
mode, metadata in or out of the job, ``metadata_strategy: extended`` per destination, the
staged placement over a real sshd, ...); tools are routed to them by tool id. Only what is
server-wide in Galaxy (``enable_celery_tasks``) has a server of its own
(test_galaxy_celery.py), and that module starts this one beside its own (:func:`start_shared`),
so the two starts overlap.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.galaxy.ordinary import Reference, start, tool_runs
from tests.galaxy.server import GalaxyApi, GalaxySite, Starting, starting_site
from tests.services.ssh import SshServer

INPUT_TEXT = "hello world\nsecond line\n"


@pytest.fixture(scope="session")
def galaxy_starting(tmp_path_factory: pytest.TempPathFactory,
                    services_installed: None) -> Iterator[Starting]:
    """The shared site (with an sshd for the staged placement), its server starting."""
    root = tmp_path_factory.mktemp("galaxy-site")
    with SshServer(root / "sshd") as server, starting_site(root, ssh=server) as starting:
        yield starting


@pytest.fixture(scope="session")
def galaxy_site(galaxy_starting: Starting) -> GalaxySite:
    """Galaxy on loopback; installing it must work (a failure fails, it never skips)."""
    return galaxy_starting.wait()


def start_shared(request: pytest.FixtureRequest) -> None:
    """Start the shared server now, in the background, if a selected test will use it."""
    if any("galaxy_site" in getattr(item, "fixturenames", ())
           for item in request.session.items):
        request.getfixturevalue("galaxy_starting")


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
