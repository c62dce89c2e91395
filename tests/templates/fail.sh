#!/bin/bash
# Fails the way a real tool does: a message on stderr and a non-zero exit.
echo "run $HPC_BATCH_JOB" >> <<ledger>>
echo "ERROR: Input file is the wrong format" >&2
exit <<code>>
