#!/bin/bash
# INA Speech Segmenter (AMP): audio/video in, JSON segments out.
# args: detect_gender (true|false), vad_engine (sm|smn); input: input; output: segments
set -euo pipefail
singularity run --nv --bind <<workspace>>:/mnt <<containers>>/ina_speech_segmenter.sif \
    --detect_gender <<detect_gender>> --vad_engine <<vad_engine>> \
    /mnt/<<input>> /mnt/<<segments>>
