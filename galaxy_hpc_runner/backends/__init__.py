"""Scheduler backends: submit a pilot, tell its state, cancel it."""

from __future__ import annotations

from galaxy_hpc_runner.backends.base import (
    Backend,
    CommandBackend,
    PilotSpec,
    PilotState,
    PilotStatus,
    SubmissionUncertain,
    pilot_spec,
)
from galaxy_hpc_runner.config import Config
from galaxy_hpc_runner.errors import ConfigError
from galaxy_hpc_runner.transport.base import Transport

__all__ = ["Backend", "CommandBackend", "PilotSpec", "PilotState", "PilotStatus",
           "SubmissionUncertain", "make_backend", "pilot_spec"]


def make_backend(cfg: Config, transport: Transport) -> Backend:
    """The backend named by ``[scheduler] backend``."""
    if cfg.backend == "local":
        from .local import LocalBackend

        return LocalBackend(cfg)
    if cfg.backend == "slurm":
        from .slurm import SlurmBackend

        return SlurmBackend(cfg, transport)
    if cfg.backend == "drmaa":
        from .drmaa_backend import DrmaaBackend

        return DrmaaBackend(cfg)
    raise ConfigError("scheduler backend %r is not available" % cfg.backend)
