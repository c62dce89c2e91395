"""The load path named in ``job_conf.yml``: ``galaxy_hpc_runner.runner:HpcBatchJobRunner``.

The runner itself lives in :mod:`galaxy_hpc_runner.galaxy.runner` with the rest of the
Galaxy side; this module only keeps the documented load path working.
"""

from galaxy_hpc_runner.galaxy.runner import RUNNER_PARAM_SPECS, HpcBatchJobRunner

__all__ = ["RUNNER_PARAM_SPECS", "HpcBatchJobRunner"]
