#!/bin/bash
# Test template: upper-case the input, append the suffix argument.
set -euo pipefail
tr '[:lower:]' '[:upper:]' < <<input>> > <<output>>
printf '%s\n' <<suffix>> >> <<output>>
echo shouted <<input>>
echo "note from the HPC side" >&2
