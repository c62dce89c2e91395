#!/bin/bash
# Gentle forced alignment (AMP, Kaldi based): audio + transcript in, JSON word alignment out.
# args: conservative, disfluency (true|false); inputs: audio, transcript; output: alignment
set -euo pipefail
options=()
if [ <<conservative>> = true ]; then options+=(--conservative); fi
if [ <<disfluency>> = true ]; then options+=(--disfluency); fi
singularity run --nv --bind <<workspace>>:/mnt <<containers>>/gentle.sif \
    "${options[@]}" --output /mnt/<<alignment>> /mnt/<<audio>> /mnt/<<transcript>>
