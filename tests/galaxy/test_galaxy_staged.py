"""Galaxy-script mode, staged placement, on the real Galaxy 26.1 server and a real sshd.

On the shared server (conftest), whose job_conf has a second runner whose hpc-batch site
reaches its HPC workspace over ssh (the shared site's sshd); the workspace is not under any
of Galaxy's directories. Ordinary tools (data inputs in a repeat, a configfile with
``from_work_dir``, a ``$__tool_directory__`` script, ``discover_datasets``) run staged and
are compared with Galaxy's own local runner (the session's ``reference`` runs, same inputs);
metadata is set on the Galaxy host under ``metadata_strategy`` ``directory`` (the server's)
and ``extended`` (the environment's), with ``retry_metadata_internally: false``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from galaxy_hpc_runner.dropbox.spool import Spool
from tests.galaxy.ordinary import TEXTS, Reference, result, start
from tests.galaxy.server import GalaxyApi, GalaxySite

pytestmark = [pytest.mark.galaxy, pytest.mark.ssh]
TOOLS = ("gx_repeat_cat", "gx_configfile", "gx_tool_dir", "gx_discover", "gx_collection")


@pytest.fixture(scope="module")
def staged_site(galaxy_site: GalaxySite) -> GalaxySite:
    assert galaxy_site.ssh is not None  # the shared site has the staged environments
    return galaxy_site


@pytest.fixture(scope="module")
def staged_api(api: GalaxyApi) -> GalaxyApi:
    return api


@pytest.fixture(scope="module")
def staged_runs(staged_api: GalaxyApi, reference: Reference
                ) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """(tool, suffix) -> (staged run, the local runner's run), all submitted first."""
    api = staged_api
    ours = {tool + suffix: (tool, start(api, reference.history, tool + suffix,
                                        reference.inputs[tool]))
            for tool in TOOLS for suffix in ("_staged", "_staged_ext")}
    return {name: (result(api, run), reference.result(tool)) for name, (tool, run) in ours.items()}


def shown(job: dict[str, Any]) -> tuple[Any, ...]:
    return (job["state"], job.get("info"), job.get("job_stderr"), job.get("tool_stderr"))


# Discovered outputs under extended metadata: Galaxy 26.1.2 itself leaves the collection
# empty or failed (its local runner too, test_galaxy_extended.py); checked on its own below.
@pytest.mark.parametrize("tool", [t + s for t in TOOLS for s in ("_staged", "_staged_ext")
                                  if t + s != "gx_discover_staged_ext"])
def test_staged_tool_matches_the_local_runner(
        staged_runs: dict[str, tuple[dict[str, Any], dict[str, Any]]], tool: str) -> None:
    ours, local = staged_runs[tool]
    assert local["job"]["state"] == "ok", local["job"]
    assert ours["job"]["state"] == "ok", shown(ours["job"])
    assert ours["job"]["external_id"].startswith("galaxy-")
    assert ours["outputs"] == local["outputs"]
    assert ours["job"]["exit_code"] == local["job"]["exit_code"] == 0


def test_staged_outputs_are_what_the_tools_write(
        staged_runs: dict[str, tuple[dict[str, Any], dict[str, Any]]]) -> None:
    repeat = staged_runs["gx_repeat_cat_staged"][0]["outputs"]["out_file1"]
    assert repeat == ("ok", "== 0\n%s== 1\n%s== 2\n%s" % (
        TEXTS["a.txt"], TEXTS["b.txt"], TEXTS["c.txt"]))
    assert staged_runs["gx_discover_staged"][0]["outputs"]["lines"] == {
        "line00": "gamma 1\n", "line01": "gamma 2\n"}
    assert staged_runs["gx_discover_staged_ext"][0]["job"]["state"] == "ok"
    assert staged_runs["gx_configfile_staged_ext"][0]["outputs"]["output"] == (
        "ok", "greeting = hi there\nloud = yes\n2\n")


def test_staged_job_runs_in_the_hpc_workspace(staged_site: GalaxySite,
                                              staged_api: GalaxyApi) -> None:
    """The tool runs in the HPC workspace and reads its input there, not Galaxy's paths."""
    api = staged_api
    history = api.history("where")
    data = api.upload(history, "payload\n")
    run = result(api, start(api, history, "gx_where", {"input": {"src": "hda", "id": data}}))
    assert run["job"]["state"] == "ok", shown(run["job"])
    state, text = run["outputs"]["output"]
    cwd, input_path, payload = text.split("\n", 2)
    workspace = str(staged_site.remote / "workspace") + "/"
    assert state == "ok" and payload == "payload\n"
    assert cwd.startswith(workspace) and cwd.endswith("/galaxy/working"), cwd
    assert input_path.startswith(workspace), input_path
    assert str(staged_site.gx) not in text
    name = run["job"]["external_id"]
    assert Spool(staged_site.hpc / "ssh-spool").get(name) is not None  # the ssh site's
    metrics = api.metrics(run["job"]["id"])
    assert ("core", "runtime_seconds") in metrics and metrics[("hpc_batch", "host")]
    job_dir = Path(staged_site.gx / "jobs")
    assert not list(job_dir.rglob("hpc_batch_return.tar"))  # unpacked and removed
