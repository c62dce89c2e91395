"""The pilot runs on whatever Python 3.8+ a cluster node has, with the standard library alone."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.sitekit import PROJECT

WORKER = PROJECT / "hpc_worker"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_worker_imports_only_the_standard_library() -> None:
    for path in WORKER.glob("*.py"):
        outside = _imports(path) - set(sys.stdlib_module_names) - {"__future__"}
        assert not outside, "%s imports %s" % (path.name, outside)


def test_worker_source_needs_at_most_python_3_8() -> None:
    vermin = shutil.which("vermin") or str(Path(sys.executable).parent / "vermin")
    proc = subprocess.run([vermin, "-t=3.8-", "--no-tips", "--violations", str(WORKER)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _python38() -> str | None:
    """A real python3.8 (pyenv's shim is only a wrapper that may refuse)."""
    candidates = [shutil.which("python3.8")] + sorted(
        str(p) for p in Path("/root/.pyenv/versions").glob("3.8*/bin/python3.8"))
    for candidate in filter(None, candidates):
        proc = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2])"],
                              capture_output=True, text=True)
        if proc.returncode == 0 and proc.stdout.strip() == "(3, 8)":
            return candidate
    return None


PY38 = _python38()


@pytest.mark.skipif(PY38 is None, reason="no python3.8 on this machine")
def test_pilot_runs_jobs_under_python_3_8(make_site: Any) -> None:
    py38 = PY38
    assert py38 is not None
    site = make_site(pilot={"python": py38})
    site.drop("old", site.upper_job("old", "from an old node\n"))
    site.drain(["old"])
    assert site.result("old")["job"]["status"] == "ok"
    assert site.out("old.upper").read_text() == "FROM AN OLD NODE\n"
    log = next((site.root / "hpc/workspace/pilots").glob("*.log")).read_text()
    assert "(%s) finished: ok" % site.key("old") in log
