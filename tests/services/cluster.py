"""Real services for integration tests, run as child processes of pytest.

- :class:`SlurmCluster` -- munged + slurmctld + slurmd (one node, fake GPUs)
- :class:`SshServer` -- a private sshd on 127.0.0.1 for paramiko
- :class:`GridEngine` -- sge_qmaster + sge_execd with the DRMAA 1.0 library
- :func:`free_port`

Each has ``start()``, ``stop()`` and context-manager support; daemons run in
the foreground under a private base directory and are stopped (terminate,
then kill after a timeout) in reverse start order.  ``install.sh`` beside this
file installs the Debian packages they need.
"""

from ._proc import free_port
from .gridengine import GridEngine
from .slurm import SlurmCluster
from .ssh import SshServer

__all__ = ["GridEngine", "SlurmCluster", "SshServer", "free_port"]
