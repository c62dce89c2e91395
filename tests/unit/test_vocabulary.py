"""One vocabulary: no state, reason or protocol file name is spelled out twice.

The words live in ``hpc_worker/states.py`` (enums) and the file names in
``hpc_worker/protocol.py``; any other module that writes one as a string literal
has made a second copy of the contract (issue 8). Docstrings and log messages
are free to use the words inside longer text: only a literal that IS the word
counts.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from hpc_worker import protocol as p
from hpc_worker.states import HeartbeatState, JobState, PilotState, Reason, ResultStatus

ROOT = Path(__file__).resolve().parents[2]
DEFINING = {ROOT / "hpc_worker" / "states.py", ROOT / "hpc_worker" / "protocol.py",
            ROOT / "hpc_worker" / "records.py"}
# "walltime" is also the name of a description and a config key: it cannot be told apart.
KEY_NAMES = {"walltime"}
WORDS = {m.value for enum in (JobState, PilotState, HeartbeatState, ResultStatus, Reason)
         for m in enum} - KEY_NAMES
# ".json" is also the suffix of the spool's own records, which are not part of the protocol.
FILE_NAMES = {p.SCRIPT, p.META, p.RUNS, p.RESULT, p.STDOUT, p.STDERR, *p.QUEUE_DIRS,
              *p.PILOT_SUFFIXES} - {".json"}


def _sources() -> list[Path]:
    return sorted(path for pkg in ("galaxy_hpc_runner", "hpc_worker")
                  for path in (ROOT / pkg).rglob("*.py") if path not in DEFINING)


def _literals(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and (node.value in WORDS or node.value in FILE_NAMES)]


@pytest.mark.parametrize("path", _sources(), ids=lambda path: str(path.relative_to(ROOT)))
def test_no_second_copy_of_the_vocabulary(path: Path) -> None:
    found = _literals(path)
    assert not found, "%s spells out %s: use hpc_worker.states / hpc_worker.protocol" % (
        path.relative_to(ROOT), ", ".join("%r (line %d)" % (word, line) for line, word in found))
