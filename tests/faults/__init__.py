"""The fault matrix (issue 9): each fault case, many times, on a real Slurm reached
through a real sshd (slurm backend, ssh transport), with one summary table.

- :mod:`tests.faults.bench`: the services (our own Slurm cluster and sshd, an ``sbatch``
  wrapper on the login PATH) and one fresh site per repetition, its submitter loop a
  real ``hpc-batch submitter`` process;
- :mod:`tests.faults.cases`: the cases (baseline, kill -9 of the pilot, scancel,
  submitter killed at the instant of sbatch, ssh dropped mid-upload, slurmctld down,
  walltime warning) and how many times each runs in CI and in the long variant;
- :mod:`tests.faults.checks`: what holds for every job and the site after each repetition;
- :mod:`tests.faults.runner` and :mod:`tests.faults.table`: run, count, print.

CI runs a few repetitions of most cases (``tests/test_fault_matrix.py``); the long variant
runs with ``HPC_FAULT_LONG=1`` or ``-m faults_long``, or as ``python -m tests.faults``.
"""
