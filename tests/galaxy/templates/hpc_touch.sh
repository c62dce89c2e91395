#!/bin/bash
# Test template: proves it ran by creating the marker file.
set -eu
touch <<marker>>
echo ran > <<output>>
