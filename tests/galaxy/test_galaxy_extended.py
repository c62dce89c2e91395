"""Both modes with ``metadata_strategy: extended`` and ``retry_metadata_internally: false``.

On the shared server (conftest): Galaxy reads ``metadata_strategy`` per destination
(``JobWrapper.metadata_strategy``, the destination's else the server's) and so does our
runner, so the ``ID_ext`` tools run in environments that set it (``hpc_ext``, ``local_ext``,
``hpc_shout_ext``; server.py). Galaxy-script mode sets metadata and writes the model store
inside the job script, template mode on the Galaxy host after the job; an output whose
metadata nobody set would end ``failed_metadata`` and a missing model store would fail the job.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.galaxy.server import GalaxyApi

pytestmark = pytest.mark.galaxy


def test_extended_metadata_in_both_modes(api: GalaxyApi) -> None:
    history = api.history("extended metadata")
    ids = api.upload_many(history, {"a.txt": "one\ntwo\n", "b.txt": "three\n"})
    a, b = ({"src": "hda", "id": ids[name]} for name in ("a.txt", "b.txt"))
    runs: dict[str, Any] = {tool: api.call("POST", "/api/tools", {
        "tool_id": tool, "history_id": history, "inputs": inputs}) for tool, inputs in {
        "gx_repeat_cat_ext": {"queries_0|input": a, "queries_1|input": b},
        "gx_discover_ext": {"input": a},
        "gx_discover_local_ext": {"input": a},  # Galaxy's local runner, for comparison
        "gx_configfile_ext": {"input": b, "greeting": "hey", "shout": False},
        "hpc_shout_ext": {"input": a, "suffix": "!"},  # template mode
    }.items()}
    for tool, run in runs.items():
        job = api.wait_job(str(run["jobs"][0]["id"]), 300)
        assert job["state"] == "ok", (tool, job)
        # the job ran in an environment that sets the strategy (Galaxy's own is directory)
        params = api.call("GET", "/api/jobs/%s/destination_params" % job["id"])
        assert params.get("metadata_strategy") == "extended", (tool, params)
    contents = {tool: [(api.wait_dataset(str(o["id"])), api.content(str(o["id"])))
                       for o in run["outputs"] if not o.get("hid_of_collection")]
                for tool, run in runs.items() if tool != "gx_discover_local_ext"}
    assert contents["gx_repeat_cat_ext"] == [("ok", "== 0\none\ntwo\n== 1\nthree\n")]
    assert contents["gx_configfile_ext"] == [("ok", "greeting = hey\n1\n")]
    assert contents["hpc_shout_ext"] == [("ok", "ONE\nTWO\n!\n")]
    # Discovered outputs under extended metadata: whatever Galaxy's own local runner makes of
    # them (Galaxy 26.1.2 leaves this collection "failed", "Problem building datasets").
    ours, local = (api.call("GET", "/api/dataset_collections/%s?instance_type=history" % run[
        "output_collections"][0]["id"]) for run in (
            runs["gx_discover_ext"], runs["gx_discover_local_ext"]))
    assert (ours["populated_state"], ours["element_count"]) == (
        local["populated_state"], local["element_count"])
    shown = api.call("GET", "/api/datasets/%s" % runs["gx_repeat_cat_ext"]["outputs"][0]["id"])
    assert shown["metadata_data_lines"] == 5  # metadata really set, not just "ok"

