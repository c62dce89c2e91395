"""Both modes with ``metadata_strategy: extended`` and ``retry_metadata_internally: false``.

A server of its own (started once for this module): Galaxy-script mode sets
metadata and writes the model store inside the job script, template mode on the
Galaxy host after the job; an output whose metadata nobody set would end
``failed_metadata`` and a missing model store would fail the job.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.galaxy.server import GalaxyApi, running_site

pytestmark = pytest.mark.galaxy


@pytest.fixture(scope="module")
def ext_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GalaxyApi]:
    with running_site(tmp_path_factory.mktemp("galaxy-extended"), slots=4, galaxy_overrides={
            "metadata_strategy": "extended", "retry_metadata_internally": False},
            template_metadata_in_process=False) as site:  # template mode: metadata on the host
        yield GalaxyApi.for_new_user(site)


def test_extended_metadata_in_both_modes(ext_api: GalaxyApi) -> None:
    api = ext_api
    history = api.history("extended metadata")
    ids = api.upload_many(history, {"a.txt": "one\ntwo\n", "b.txt": "three\n"})
    a, b = ({"src": "hda", "id": ids[name]} for name in ("a.txt", "b.txt"))
    runs: dict[str, Any] = {tool: api.call("POST", "/api/tools", {
        "tool_id": tool, "history_id": history, "inputs": inputs}) for tool, inputs in {
        "gx_repeat_cat": {"queries_0|input": a, "queries_1|input": b},
        "gx_discover": {"input": a},
        "gx_discover_local": {"input": a},  # Galaxy's local runner, for comparison
        "gx_configfile": {"input": b, "greeting": "hey", "shout": False},
        "hpc_shout": {"input": a, "suffix": "!"},  # template mode
    }.items()}
    for tool, run in runs.items():
        job = api.wait_job(str(run["jobs"][0]["id"]), 300)
        assert job["state"] == "ok", (tool, job)
    contents = {tool: [(api.wait_dataset(str(o["id"])), api.content(str(o["id"])))
                       for o in run["outputs"] if not o.get("hid_of_collection")]
                for tool, run in runs.items() if tool != "gx_discover_local"}
    assert contents["gx_repeat_cat"] == [("ok", "== 0\none\ntwo\n== 1\nthree\n")]
    assert contents["gx_configfile"] == [("ok", "greeting = hey\n1\n")]
    assert contents["hpc_shout"] == [("ok", "ONE\nTWO\n!\n")]
    # Discovered outputs under extended metadata: whatever Galaxy's own local runner makes of
    # them (Galaxy 26.1.2 leaves this collection "failed", "Problem building datasets").
    ours, local = (api.call("GET", "/api/dataset_collections/%s?instance_type=history" % run[
        "output_collections"][0]["id"]) for run in (runs["gx_discover"], runs["gx_discover_local"]))
    assert (ours["populated_state"], ours["element_count"]) == (
        local["populated_state"], local["element_count"])
    shown = api.call("GET", "/api/datasets/%s" % runs["gx_repeat_cat"]["outputs"][0]["id"])
    assert shown["metadata_data_lines"] == 5  # metadata really set, not just "ok"
