#!/bin/bash
# Hostile job: replaces its stdout.txt (where the pilot publishes it) with a link to <<target>>,
# then writes its output normally.
echo "run $HPC_BATCH_JOB" >> <<ledger>>
for dir in . ..; do
    if [ -e $dir/stdout.txt ]; then rm -f $dir/stdout.txt; ln -s <<target>> $dir/stdout.txt; fi
done
echo fine > <<output>>
