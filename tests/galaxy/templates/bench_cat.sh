#!/bin/bash
# Benchmark template: the trivial tool, copy input to output.
cat <<input>> > <<output>>
