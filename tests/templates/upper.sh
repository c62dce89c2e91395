#!/bin/bash
# Upper-cases <<input>> into <<output>>; records that it ran.
set -eu
echo "run $HPC_BATCH_JOB" >> <<ledger>>
tr '[:lower:]' '[:upper:]' < <<input>> > <<output>>
echo "upper done on gpu $CUDA_VISIBLE_DEVICES"
