#!/bin/bash
# Demo "GPU tool": upper-cases a text file and reports which GPU slot it got.
set -euo pipefail
echo "job running on $(hostname) with CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-none}"
sleep <<seconds>>
tr '[:lower:]' '[:upper:]' < <<input>> > <<output>>
echo wrote <<output>> >&2
