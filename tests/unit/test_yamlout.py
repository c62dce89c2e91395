"""The fast YAML writer: whatever it writes reads back as the same document."""

from __future__ import annotations

import random
from typing import Any

import yaml

from galaxy_hpc_runner.dropbox import description as d
from galaxy_hpc_runner.dropbox import yamlout

RESULT = {
    "output_map": {"output": "/data/results/j1.txt"},
    "script": "noop",
    "args": {"model": "large-v2", "languages": ["en", "de"], "beam": 5, "temperature": 0.25,
             "diarize": False, "note": None, "title": "it's a test: #1"},
    "job": {"status": "ok", "message": "processed OK", "stderr": "", "stdout": "", "rc": 0,
            "start": "2026-11-27T14:49:36.819+00:00", "end": "2026-11-27T14:49:37.031+00:00",
            "attempts": 1, "pilot": "1270", "host": "gpu-node-07",
            "metrics": {"runtime_seconds": 0.212, "gpu_seconds": 3}},
}
# strings a careless writer would turn into something else, or break the document with
TRICKY = ["yes", "No", "ON", "off", "null", "Null", "~", "y", "n", "true", "False", "1270",
          "0x1f", "1e3", "1:20", ".inf", "-", "- x", "a: b", "a #b", "#c", "'q'", '"dq"',
          "&a", "*a", "!tag", "%x", "@x", "`x", "|", ">", "[a]", "{a: 1}", "<<", "=", "?",
          " lead", "trail ", "tab\there", "it's", "2026-11-27", "caf\u00e9", "\u2028",
          "line\nbreak", "end\n", "\x85", "\ufeff", "\U0001f600", "", "a\rb", "\x00"]


def test_a_plain_result_is_written_as_pyyaml_writes_it() -> None:
    plain = {k: v for k, v in RESULT.items() if k != "args"}
    assert d.dump_yaml(plain) == d._pyyaml(plain)
    assert yaml.safe_load(d.dump_yaml(RESULT)) == RESULT


def test_every_tricky_string_reads_back_as_itself() -> None:
    for text in TRICKY:
        doc = {"job": {"message": text}, "list": ["x", text], "k": text}
        written = d.dump_yaml(doc)
        assert yaml.safe_load(written) == doc, (text, written)


def test_multi_line_logs_stay_literal_blocks() -> None:
    doc = {"job": {"stdout": "line one\nline two\n"}}
    assert d.dump_yaml(doc) == d._pyyaml(doc)
    assert "stdout: |" in d.dump_yaml(doc)


def test_generated_documents_read_back_alike() -> None:
    rng = random.Random(20261127)
    for _ in range(3000):
        doc = _mapping(rng, 0)
        assert yaml.safe_load(d.dump_yaml(doc)) == doc
        assert yaml.safe_load(yamlout.emit(doc, lambda _doc: "{}\n")) in (doc, {})


def _mapping(rng: random.Random, depth: int) -> dict[str, Any]:
    keys = [rng.choice(["a", "job", "output_map", "x y", "yes", "1", "k-2", "_p"] + TRICKY)
            for _ in range(rng.randint(1, 4))]
    return {key: _value(rng, depth) for key in keys}


def _value(rng: random.Random, depth: int) -> Any:
    kind = rng.randrange(8 if depth < 3 else 6)
    if kind == 0:
        return rng.choice(TRICKY)
    if kind == 1:
        return rng.choice([0, -3, 7, 10**12, True, False, None])
    if kind == 2:
        return rng.choice([0.5, -2.25, 1e20, 3.0, float("inf"), 1e-7])
    if kind == 3:
        return "".join(rng.choice("ab :#-'\"\n\t\u00e9") for _ in range(rng.randint(0, 8)))
    if kind in (4, 5):
        return rng.choice(["ok", "processed OK", "/data/x.txt", "gpu-node-07"])
    if kind == 6:
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return _mapping(rng, depth + 1) if rng.random() < 0.8 else {}
