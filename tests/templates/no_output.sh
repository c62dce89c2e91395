#!/bin/bash
# Exits 0 but forgets to write its output.
echo "run $HPC_BATCH_JOB" >> <<ledger>>
