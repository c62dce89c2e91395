"""How the submitting side reaches the HPC side: files and commands, locally or over ssh."""

from galaxy_hpc_runner.transport.base import LocalTransport, Transport

__all__ = ["LocalTransport", "Transport"]
