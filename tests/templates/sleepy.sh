#!/bin/bash
# Sleeps, then writes <<output>> and one "completed" line to the ledger.
set -e
echo "start $HPC_BATCH_JOB" >> <<ledger>>
sleep <<seconds>>
echo slept <<seconds>> > <<output>>
echo "completed $HPC_BATCH_JOB" >> <<ledger>>
