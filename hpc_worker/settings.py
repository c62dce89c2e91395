"""What a pilot is told on its command line.

Standard library only, Python 3.8.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence


class PilotSettings:
    """What a pilot is told on its command line."""

    def __init__(self, root: str, pilot_id: str, slots: int = 1, idle_timeout: float = 300.0,
                 walltime: Optional[float] = None, poll: float = 0.5, heartbeat: float = 10.0,
                 grace: float = 10.0, scheduler_id: str = "", slots_per_gpu: int = 1,
                 gpu_sample: float = 10.0, keep_env: Sequence[str] = (),
                 settle: float = 0.2) -> None:
        self.root_as_given = root
        self.root = os.path.abspath(root)
        self.pilot_id = pilot_id
        self.slots = slots
        self.idle_timeout = idle_timeout
        self.walltime = walltime
        self.poll = poll
        self.heartbeat = heartbeat
        self.grace = grace
        self.scheduler_id = scheduler_id or _scheduler_id_from_env()
        self.slots_per_gpu = slots_per_gpu
        self.gpu_sample = gpu_sample
        self.keep_env = tuple(keep_env)
        self.settle = settle


def _scheduler_id_from_env() -> str:
    for name in ("SLURM_JOB_ID", "JOB_ID", "PBS_JOBID"):
        if os.environ.get(name):
            return os.environ[name]
    return str(os.getpid())  # the local backend's id for us
