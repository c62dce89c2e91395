"""The HPC side of galaxy-hpc-batch: the pilot that drains staged jobs.

Standard library only, Python 3.8+, so a checkout of the repository on a
cluster node can run it as ``python3 -m hpc_worker``.
"""
