#!/bin/bash
# Concatenates <<first>> and <<second>> into <<output>>.
set -eu
cat <<first>> <<second>> > <<output>>
