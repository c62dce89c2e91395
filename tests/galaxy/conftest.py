"""Session fixtures: one real Galaxy server (installed if missing) with our runner."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.galaxy.server import GalaxyApi, GalaxySite, running_site

INPUT_TEXT = "hello world\nsecond line\n"


@pytest.fixture(scope="session")
def galaxy_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GalaxySite]:
    """Galaxy on loopback; installing it must work (a failure fails, it never skips)."""
    with running_site(tmp_path_factory.mktemp("galaxy-site")) as site:
        yield site


@pytest.fixture(scope="session")
def api(galaxy_site: GalaxySite) -> GalaxyApi:
    return GalaxyApi.for_new_user(galaxy_site)


@pytest.fixture(scope="session")
def history(api: GalaxyApi) -> str:
    return api.history("hpc-batch tests")


@pytest.fixture(scope="session")
def text_dataset(api: GalaxyApi, history: str) -> str:
    return api.upload(history, INPUT_TEXT)
