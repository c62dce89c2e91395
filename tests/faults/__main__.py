"""``python -m tests.faults [--ci] [--case NAME ...] [--scale X] [--markdown]``: the fault
matrix on our own Slurm + sshd (the long variant unless ``--ci``), then its table."""

from __future__ import annotations

import argparse
import datetime
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.faults.bench import Bench
from tests.faults.cases import CASES
from tests.faults.runner import SEED, run_matrix
from tests.faults.table import render, render_markdown
from tests.services.fixtures import INSTALL_SCRIPT


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults", description=__doc__)
    parser.add_argument("--ci", action="store_true", help="CI's repetitions, not the long ones")
    parser.add_argument("--case", action="append", choices=[c.name for c in CASES])
    parser.add_argument("--scale", type=float, default=1.0, help="repetitions times this")
    parser.add_argument("--markdown", action="store_true", help="also print a markdown table")
    parser.add_argument("--keep", action="store_true", help="keep the sites' directories")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("tests.faults").setLevel(logging.INFO)
    subprocess.run(["sh", str(INSTALL_SCRIPT)], check=True, stdout=subprocess.DEVNULL)
    base = Path(tempfile.mkdtemp(prefix="fault-matrix-"))
    started = datetime.datetime.now(datetime.timezone.utc)
    with Bench(base / "services") as bench:
        rows = run_matrix(bench, base / "sites", long=not args.ci, only=args.case,
                          scale=args.scale)
    title = "fault matrix %s, %s variant, seed %d, Slurm + sshd on this host (%s)" % (
        started.strftime("%Y-%m-%d %H:%M UTC"), "CI" if args.ci else "long", SEED, base)
    print(render(rows, title))
    if args.markdown:
        print()
        print(render_markdown(rows))
    if not args.keep:
        subprocess.run(["rm", "-rf", str(base / "sites")], check=False)
    return 0 if all(row.clean for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
