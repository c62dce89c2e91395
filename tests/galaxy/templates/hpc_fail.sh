#!/bin/bash
# Test template: fails with a message on stderr and the given exit code.
echo "about to fail"
echo boom: <<message>> >&2
exit <<code>>
