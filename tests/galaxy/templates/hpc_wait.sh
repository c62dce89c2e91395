#!/bin/bash
# Test template: holds its slot until the release file exists (at most 120 s).
set -eu
for _ in $(seq 1 1200); do
    [ -e <<release>> ] && break
    sleep 0.1
done
[ -e <<release>> ] || { echo "never released" >&2; exit 9; }
echo released <<label>> > <<output>>
