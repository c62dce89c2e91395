#!/bin/bash
echo "run $HPC_BATCH_JOB" >> <<ledger>>
echo <<not_defined_anywhere>> > <<output>>
