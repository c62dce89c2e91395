#!/bin/bash
# Hostile job: appends 400,000 forged start lines to its own journal (job.json), then ends well.
line='{"pilot": "forged", "rec": "run", "start": "2020-01-01T00:00:00"}'
for dir in . ..; do
    if [ -e $dir/job.json ]; then yes -- $line | head -n 400000 >> $dir/job.json; fi
done
echo fine > <<output>>
