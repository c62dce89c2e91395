#!/bin/bash
# Whisper (AMP): audio/video in; transcript as JSON, plain text and WebVTT out.
# args: model, language ("auto": detect), prompt; input: input;
# outputs: transcript_json, transcript_text, transcript_vtt
set -euo pipefail
language=<<language>>
prompt=<<prompt>>
options=(--model <<model>> --output_format all --output_dir /mnt/whisper-out)
if [ "$language" != auto ]; then options+=(--language "$language"); fi
if [ -n "$prompt" ]; then options+=(--initial_prompt "$prompt"); fi
mkdir -p whisper-out
singularity run --nv --bind <<workspace>>:/mnt <<containers>>/whisper.sif \
    "${options[@]}" /mnt/<<input>>
stem=<<input>>
stem=${stem%.*}  # whisper names its files after the input, without its extension
mv "whisper-out/$stem.json" <<transcript_json>>
mv "whisper-out/$stem.txt" <<transcript_text>>
mv "whisper-out/$stem.vtt" <<transcript_vtt>>
