"""The fault matrix (tests/faults) on a real Slurm behind a real sshd.

CI runs a few repetitions of each case (about 3 minutes); the long variant (50 scancels,
20 submitter kills at the instant of sbatch, ...) runs with ``HPC_FAULT_LONG=1`` or
``-m faults_long``. Either prints the summary table at the end of the session.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.bench import Bench
from tests.faults.cases import CASES, Case
from tests.faults.runner import long_wanted, run_case
from tests.faults.table import ROWS, render

pytestmark = [pytest.mark.slurm, pytest.mark.ssh]


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory, services_installed: None
          ) -> Iterator[Bench]:
    with Bench(tmp_path_factory.mktemp("faults")) as matrix_bench:
        yield matrix_bench


@pytest.mark.parametrize("case", [c for c in CASES if c.ci], ids=lambda c: c.name)
def test_fault_case_holds_every_promise(bench: Bench, case: Case, tmp_path: Path) -> None:
    row = run_case(bench, case, case.ci, tmp_path)
    ROWS.append(row)
    assert row.clean, render([row])


@pytest.mark.faults_long
def test_long_fault_matrix(bench: Bench, tmp_path: Path, request: pytest.FixtureRequest
                           ) -> None:
    if not long_wanted(str(request.config.getoption("markexpr"))):
        pytest.skip("the long fault matrix runs with HPC_FAULT_LONG=1 or -m faults_long")
    rows = []
    for case in CASES:
        rows.append(run_case(bench, case, case.long, tmp_path))
        ROWS.append(rows[-1])
    assert all(row.clean for row in rows), render(rows)
