#!/bin/bash
# A script without `set -e`: when its sleep is killed it carries on and exits 0.
echo "start $HPC_BATCH_JOB" >> <<ledger>>
sleep <<seconds>>
echo slept <<seconds>> > <<output>>
echo "completed $HPC_BATCH_JOB" >> <<ledger>>
