"""Old finished records are pruned once per period, whichever process (cron pass) asks."""

from __future__ import annotations

import os
import time
from pathlib import Path

from galaxy_hpc_runner.dropbox.spool import Spool
from hpc_worker.states import JobState


def test_pruning_is_due_once_per_period_whichever_process_asks(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")

    def old_finished(name: str) -> None:
        rec = spool.create(name, {"script": "x"})
        spool.transition(rec, JobState.FINISHED, status="ok")
        spool.archive(rec)
        path = tmp_path / "spool" / "finished" / (name + ".json")
        os.utime(path, (time.time() - 40 * 86400,) * 2)

    old_finished("a")
    assert spool.prune_if_due(keep_days=30, every=3600) == 1
    old_finished("b")
    assert Spool(tmp_path / "spool").prune_if_due(keep_days=30, every=3600) == 0  # a cron pass
    assert spool.prune_if_due(keep_days=30, every=0) == 1
