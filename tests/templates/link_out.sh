#!/bin/bash
# Hostile job: makes its output a symbolic link to <<target>> (a file the submitter can read).
echo "run $HPC_BATCH_JOB" >> <<ledger>>
ln -s <<target>> <<output>>
