#!/usr/bin/env bash
# The demo: a burst of job descriptions dropped into a dropbox, staged, drained by ONE
# pilot on the local backend (no cluster needed) and answered with result files.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e .
rm -rf demo-run
exec .venv/bin/hpc-batch demo --dir demo-run --jobs "${JOBS:-20}"
