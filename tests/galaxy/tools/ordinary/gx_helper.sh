#!/bin/bash
# Helper of gx_tool_dir: reverse the lines of $1 into $2 with a label.
set -eu
printf 'label %s\n' "$3" > "$2"
tac "$1" >> "$2"
