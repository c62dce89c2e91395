"""Files the submitter leaves in the user's directories, and how it recognises them.

Temp files beside a job's outputs while they are fetched (``.BASE.hpc-batch-tmp-PID-RAND``,
removed by the next pass if a pass was killed mid-fetch), and an earlier run's result set
aside when a NAME is resubmitted (``NAME.job.finished.replaced-NS``).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

OUTPUT_TEMP_MARK = ".hpc-batch-tmp-"
REPLACED_MARK = ".replaced-"  # NAME.job.finished.replaced-NS: the result of an earlier run


# -- names the submitter writes in the user's directories ---------------------------------
def remove_stale_output_temps(targets: list[str]) -> list[str]:
    """Remove our temp files left beside ``targets`` by a pass that was killed mid-fetch.

    Only names of the fetch's temp pattern (``safefs.temp_name``: .BASE + OUTPUT_TEMP_MARK
    + PID-RAND) for exactly these targets, only regular files.
    Called under the spool lock, so no other pass of this spool is fetching them now.
    """
    removed = []
    for target in targets:
        directory, base = os.path.split(target)
        prefix = ".%s%s" % (base, OUTPUT_TEMP_MARK)
        try:
            names = os.listdir(directory or ".")
        except OSError:
            continue
        for name in names:
            path = os.path.join(directory, name)
            if name.startswith(prefix) and os.path.isfile(path) and not os.path.islink(path):
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
