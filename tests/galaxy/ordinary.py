"""Ordinary Galaxy tools (tools/ordinary) on the shared server: their inputs, runs, results."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tests.galaxy.server import GalaxyApi

TEXTS = {"a.txt": "alpha one\nalpha two\n", "b.txt": "beta\n", "c.txt": "gamma 1\ngamma 2\n"}


def tool_runs(api: GalaxyApi, history: str) -> dict[str, dict[str, Any]]:
    """Each ordinary tool's inputs (tool id -> API inputs) for one set of uploads."""
    ids = api.upload_many(history, TEXTS)
    hda = {name: {"src": "hda", "id": ident} for name, ident in ids.items()}
    hdca = api.list_collection(history, "abc", {n.split(".")[0]: i for n, i in ids.items()})
    return {
        "gx_repeat_cat": {"queries_0|input": hda["a.txt"], "queries_1|input": hda["b.txt"],
                          "queries_2|input": hda["c.txt"]},
        "gx_sections": {"first|value": "left", "second|value": "right",
                        "flags|verbose": True},
        "gx_collection": {"inputs": {"src": "hdca", "id": hdca}},
        "gx_multiple": {"inputs": {"values": [hda["c.txt"], hda["a.txt"]]}},
        "gx_discover": {"input": hda["c.txt"]},
        "gx_configfile": {"input": hda["a.txt"], "greeting": "hi there", "shout": True},
        "gx_tool_dir": {"input": hda["a.txt"], "label": "a;b c"},
    }


def start(api: GalaxyApi, history: str, tool: str, inputs: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = api.call("POST", "/api/tools", {
        "tool_id": tool, "history_id": history, "inputs": inputs})
    return out


def result(api: GalaxyApi, run: dict[str, Any]) -> dict[str, Any]:
    """The job, and its outputs' contents (a collection as identifier -> content)."""
    job = api.wait_job(str(run["jobs"][0]["id"]), 300)
    outputs: dict[str, Any] = {}
    for out in run["outputs"]:
        if "output_name" in out and not out.get("hid_of_collection"):
            outputs[out["output_name"]] = (api.wait_dataset(str(out["id"])),
                                           api.content(str(out["id"])))
    for coll in run.get("output_collections", []):
        outputs[coll["output_name"]] = api.collection_contents(str(coll["id"]))
    return {"job": job, "outputs": outputs}


@dataclass
class Reference:
    """Galaxy's own local runner on each ordinary tool (the ``ID_local`` copy), run once for
    the session: what our runner's runs of the same inputs, in any placement, must equal."""

    api: GalaxyApi
    history: str
    inputs: dict[str, dict[str, Any]]  # tool id -> API inputs (tool_runs)
    started: dict[str, dict[str, Any]]
    done: dict[str, dict[str, Any]] = field(default_factory=dict)

    def result(self, tool: str) -> dict[str, Any]:
        if tool not in self.done:
            self.done[tool] = result(self.api, self.started[tool])
        return self.done[tool]
