"""Ordinary Galaxy tools through the pilot in Galaxy-script mode, on the real Galaxy 26.1 server.

Each tool's output is compared with what Galaxy's own local runner gives for the
same inputs (the ``ID_local`` copy of the tool, run once for the session: conftest's
``reference``, which test_galaxy_staged.py compares with too). The site runs with
``metadata_strategy: directory`` and ``retry_metadata_internally: false``, so an
output whose metadata the job script did not set would end ``failed_metadata``.
Every job is submitted first and waited for afterwards: Galaxy is slow on 2 cores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from galaxy_hpc_runner.dropbox.spool import FINISHED, Spool
from tests.galaxy.ordinary import TEXTS, Reference, result, start
from tests.galaxy.server import GPU_DEVICES, GalaxyApi, GalaxySite, alive, wait_until

pytestmark = pytest.mark.galaxy


@pytest.fixture(scope="module")
def uploaded(reference: Reference) -> tuple[str, dict[str, dict[str, Any]]]:
    return reference.history, reference.inputs


@pytest.fixture(scope="module")
def compared(api: GalaxyApi, reference: Reference
             ) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """tool -> (our run, the local runner's run), ours all submitted before any is awaited."""
    started = {tool: start(api, reference.history, tool, inputs)
               for tool, inputs in reference.inputs.items()}
    # metadata not in the job script: set on the Galaxy host (retry_metadata_internally off)
    started["gx_repeat_cat_noembed"] = start(api, reference.history, "gx_repeat_cat_noembed",
                                             reference.inputs["gx_repeat_cat"])
    ours = {tool: result(api, run) for tool, run in started.items()}
    return {tool: (run, reference.result(tool.removesuffix("_noembed")))
            for tool, run in ours.items()}


@pytest.mark.parametrize("tool", ["gx_repeat_cat", "gx_sections", "gx_collection", "gx_multiple",
                                  "gx_discover", "gx_configfile", "gx_tool_dir",
                                  "gx_repeat_cat_noembed"])
def test_ordinary_tool_matches_the_local_runner(
        compared: dict[str, tuple[dict[str, Any], dict[str, Any]]], tool: str) -> None:
    ours, local = compared[tool]
    assert local["job"]["state"] == "ok", local["job"]
    assert ours["job"]["state"] == "ok", ours["job"]
    assert ours["job"]["external_id"].startswith("galaxy-")  # it went through our spool
    assert ours["outputs"] == local["outputs"]
    assert ours["job"]["exit_code"] == local["job"]["exit_code"] == 0


def test_outputs_are_what_the_tools_write(
        compared: dict[str, tuple[dict[str, Any], dict[str, Any]]]) -> None:
    """Not merely equal to the local runner's: the values that flattening used to lose."""
    repeat = compared["gx_repeat_cat"][0]["outputs"]["out_file1"][1]
    assert repeat == "== 0\n%s== 1\n%s== 2\n%s" % (
        TEXTS["a.txt"], TEXTS["b.txt"], TEXTS["c.txt"])
    assert compared["gx_sections"][0]["outputs"]["output"][1] == \
        "first=left\nsecond=right\nverbose\n"
    assert compared["gx_discover"][0]["outputs"]["lines"] == {
        "line00": "gamma 1\n", "line01": "gamma 2\n"}
    assert compared["gx_configfile"][0]["outputs"]["output"][1] == \
        "greeting = hi there\nloud = yes\n2\n"
    assert compared["gx_tool_dir"][0]["outputs"]["output"][1].endswith(
        "\nalpha two\nalpha one\n")  # the helper script beside the tool ran


def test_galaxy_shows_what_ran(api: GalaxyApi,
                               compared: dict[str, tuple[dict[str, Any], dict[str, Any]]]) -> None:
    job = compared["gx_configfile"][0]["job"]
    assert "result.txt" in job["command_line"]  # the tool's own command, as it ran
    metrics = api.metrics(job["id"])
    assert ("core", "runtime_seconds") in metrics  # Galaxy's own instrumentation ran
    assert metrics[("hpc_batch", "mode")] == "galaxy"
    assert metrics[("hpc_batch", "job")] == job["external_id"]
    assert metrics[("hpc_batch", "host")] and metrics[("hpc_batch", "pilot")]
    assert metrics[("hpc_batch", "gpu")] in GPU_DEVICES.split(",")


def test_gpu_tool_sees_its_slots_device(galaxy_site: GalaxySite, api: GalaxyApi) -> None:
    history = api.history("gpu")
    tools = ("gx_gpu", "gx_gpu_res", "gx_cpu")
    runs = {tool: start(api, history, tool, {"label": "x"}) for tool in tools}
    done = {tool: result(api, runs[tool]) for tool in tools}
    for tool in tools:
        assert done[tool]["job"]["state"] == "ok", done[tool]["job"]
    for tool in ("gx_gpu", "gx_gpu_res"):  # a compute requirement, a CUDA device resource
        seen = dict(line.split("=", 1) for line in done[tool]["outputs"]["output"][1].split())
        metrics = api.metrics(done[tool]["job"]["id"])
        assert seen["gpu_enabled"] == "true"
        assert seen["cuda"] == metrics[("hpc_batch", "gpu")]  # the slot's device
        assert seen["cuda"] == GPU_DEVICES.split(",")[int(metrics[("hpc_batch", "slot")])]
        assert seen["slots"] == "1"  # no scheduler CPUs on the local backend
    seen = dict(line.split("=", 1) for line in done["gx_cpu"]["outputs"]["output"][1].split())
    assert seen["gpu_enabled"] == "false"
    assert seen["slots"] == "3"  # the destination's galaxy_slots


@pytest.mark.parametrize(("tool", "words"), [
    ("gx_repeat_cat_tmpl", ["repeat 'queries'"]),
    ("gx_sections_tmpl", ["'first|value'", "'second|value'", "share the name"]),
    ("gx_collection_tmpl", ["collection input 'inputs'"]),
    ("gx_multiple_tmpl", ["'inputs' takes several datasets"]),
    ("gx_discover_tmpl", ["output collection 'lines'"]),
])
def test_template_mode_refuses_what_it_cannot_map(
        api: GalaxyApi, uploaded: tuple[str, dict[str, dict[str, Any]]], tool: str,
        words: list[str]) -> None:
    history, runs = uploaded
    job = api.wait_job(start(api, history, tool, runs[tool[: -len("_tmpl")]])["jobs"][0]["id"],
                       120)
    assert job["state"] == "error"
    assert not job.get("external_id")  # refused before it reached the spool
    message = job.get("job_stderr") or ""
    for word in words + ["Galaxy-script mode"]:
        assert word in message, message


def test_cancel_kills_galaxys_script_and_the_tool(galaxy_site: GalaxySite, api: GalaxyApi,
                                                  tmp_path: Path) -> None:
    history = api.history("cancel")
    pid_file = tmp_path / "tool.pid"
    job, _ = api.run_tool(history, "gx_wait", {"release": str(tmp_path / "never"),
                                               "pid_file": str(pid_file)})
    wait_until(lambda: api.job_state(job) == "running" and pid_file.exists()
               and pid_file.read_text().strip(), 120, "the tool running")
    pid = int(pid_file.read_text())
    name = str(api.job(job)["external_id"])
    api.cancel(job)
    wait_until(lambda: (rec := Spool(galaxy_site.hpc / "spool").get(name)) is not None
               and rec.state == FINISHED, 60, "the cancel to end the job")
    wait_until(lambda: not alive(pid), 10, "the tool's process to end")
    assert api.job_state(job) in ("deleted", "deleting")
