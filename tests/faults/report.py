"""The fault matrix's table in pytest's terminal summary (hooked in tests/conftest.py)."""

from __future__ import annotations

from typing import Any

from tests.faults.table import ROWS, render


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: Any) -> None:
    if ROWS:
        terminalreporter.write_sep("=", "fault matrix (tests/faults)")
        terminalreporter.write_line(render(ROWS))
