"""Files the submitter leaves in the user's directories, and how it recognises them.

Temp files beside a job's outputs while they are fetched (``.BASE.hpc-batch-tmp-PID-RAND``,
removed by the next pass if a pass was killed mid-fetch), and an earlier run's result set
aside when a NAME is resubmitted (``NAME.job.finished.replaced-NS``).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import OrderedDict
from pathlib import Path

OUTPUT_TEMP_MARK = ".hpc-batch-tmp-"
REPLACED_MARK = ".replaced-"  # NAME.job.finished.replaced-NS: the result of an earlier run


# -- names the submitter writes in the user's directories ---------------------------------
class StaleTemps:
    """Temp files an interrupted fetch left, found by listing each output directory once.

    Only a process that died mid-fetch leaves temps (a live one removes its own), so what
    one look at a directory finds is all there is for this process to clean; later jobs
    with outputs there cost no listing. Directories looked at are remembered up to
    ``size`` (then looked at again)."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._found: OrderedDict[str, set[str]] = OrderedDict()

    def names(self, directory: str) -> set[str]:
        """Names of our temp pattern in ``directory`` when it was first looked at."""
        found = self._found.get(directory)
        if found is not None:
            self._found.move_to_end(directory)
            return found
        try:
            found = {n for n in os.listdir(directory or ".")
                     if n.startswith(".") and OUTPUT_TEMP_MARK in n}
        except OSError:
            found = set()
        self._found[directory] = found
        while len(self._found) > self.size:
            self._found.popitem(last=False)
        return found


def remove_stale_output_temps(targets: list[str], stale: StaleTemps | None = None
                              ) -> list[str]:
    """Remove our temp files left beside ``targets`` by a pass that was killed mid-fetch.

    Only names of the fetch's temp pattern (``safefs.temp_name``: .BASE + OUTPUT_TEMP_MARK
    + PID-RAND) for exactly these targets, only regular files. ``stale`` remembers what
    a look at each directory found (no listing per job); without it every directory is
    listed. Called under the spool lock, so no other pass of this spool is fetching now.
    """
    stale = stale or StaleTemps()
    removed = []
    for target in targets:
        directory, base = os.path.split(target)
        prefix = ".%s%s" % (base, OUTPUT_TEMP_MARK)
        found = stale.names(directory)
        for name in [n for n in found if n.startswith(prefix)]:
            found.discard(name)
            path = os.path.join(directory, name)
            if os.path.isfile(path) and not os.path.islink(path):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                    removed.append(path)
    return removed


# -- resubmission of a NAME that has a result ----------------------------------------------
def is_resubmission(description: Path, result: Path) -> bool:
    """``NAME.job`` changed after ``NAME.job.finished`` was written: a new job of that name.

    A new description (written in place, renamed in, copied, or touched) gets a change
    time (ctime) later than the result's; the description a result answers is older.
    """
    try:
        return description.stat().st_ctime_ns > result.stat().st_ctime_ns
    except FileNotFoundError:
        return False


def set_aside_result(result: Path) -> Path | None:
    """Rename an earlier run's result to ``NAME.job.finished.replaced-NS`` (kept, never read)."""
    target = result.with_name("%s%s%d" % (result.name, REPLACED_MARK, time.time_ns()))
    try:
        os.rename(result, target)
    except FileNotFoundError:
        return None
    return target
