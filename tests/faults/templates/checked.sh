#!/bin/bash
# Fault matrix: logs every start and end (job, attempt), checks its input's checksum,
# works for <<seconds>>, then writes the input and its checksum to <<output>>.
set -eu
echo "start $HPC_BATCH_JOB $HPC_BATCH_ATTEMPT" >> <<ledger>>
sum=$(sha256sum < <<input>> | cut -d ' ' -f 1)
if [ "$sum" != <<sha>> ]; then
    echo "badinput $HPC_BATCH_JOB $HPC_BATCH_ATTEMPT" >> <<ledger>>
    exit 3
fi
sleep <<seconds>>
cat <<input>> > <<output>>
echo "$sum" >> <<output>>
echo "end $HPC_BATCH_JOB $HPC_BATCH_ATTEMPT" >> <<ledger>>
