#!/bin/bash
# Hostile job: appends millions of start lines to its own runs.jsonl, then ends well.
line='{"pilot": "forged", "start": "2020-01-01T00:00:00"}'
for dir in . ..; do
    if [ -e $dir/runs.jsonl ]; then yes -- $line | head -n 400000 >> $dir/runs.jsonl; fi
done
echo fine > <<output>>
