#!/bin/bash
# Writes the value of an argument, as the script saw it, into <<output>>.
echo "run $HPC_BATCH_JOB" >> <<ledger>>
printf '%s' <<value>> > <<output>>
