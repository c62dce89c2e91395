"""The AMP tool wrappers pass planemo lint (planemo from PyPI, in its own venv)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.galaxy


def test_tool_wrappers_pass_planemo_lint() -> None:
    install = subprocess.run(["sh", str(REPO / "tests/galaxy/install_planemo.sh")],
                             capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stdout + install.stderr
    wrappers = sorted((REPO / "tool_wrappers").glob("*.xml"))
    tools = [w for w in wrappers if w.name != "macros.xml"]
    assert {t.stem for t in tools} == {"ina_speech_segmenter", "whisper",
                                      "gentle_forced_alignment"}
    proc = subprocess.run([str(REPO / ".planemo-venv/bin/planemo"), "lint", "--fail_level",
                           "warn", *map(str, tools)], capture_output=True, text=True,
                          timeout=600, cwd=REPO / "tool_wrappers")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
