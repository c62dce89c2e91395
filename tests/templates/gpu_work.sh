#!/bin/bash
# Contention benchmark's stand-in GPU tool: holds its GPU <<seconds>> s, then writes <<output>>.
set -eu
sleep <<seconds>>
echo gpu work done after <<seconds>> s > <<output>>
