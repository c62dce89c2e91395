"""How the submitting side reaches the HPC side: files and commands, locally or over ssh."""

from galaxy_hpc_runner.transport.base import (
    READ_CAP,
    TMP_PREFIX,
    CommandOutcomeUnknown,
    LocalTransport,
    ManyTransferError,
    Transport,
    UnsafeRemoteFile,
)

__all__ = ["READ_CAP", "TMP_PREFIX", "CommandOutcomeUnknown", "LocalTransport",
           "ManyTransferError", "Transport", "UnsafeRemoteFile"]
