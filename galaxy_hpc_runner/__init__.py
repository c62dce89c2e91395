"""The submitting side of galaxy-hpc-batch: spool, staging, scheduler backends, CLI.

Only :mod:`galaxy_hpc_runner.galaxy.runner` imports Galaxy; everything else runs in a
cron job or the admin CLI as well as inside Galaxy.
"""

__version__ = "0.1.0"
