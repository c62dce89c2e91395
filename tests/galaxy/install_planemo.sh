#!/bin/sh
# Install planemo (from PyPI) into its own venv for linting the tool wrappers.
# Idempotent: exits at once when the venv already has it.
#   usage: tests/galaxy/install_planemo.sh [VENV]   (default: .planemo-venv in the repo)
set -eu
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
VENV="${1:-$REPO/.planemo-venv}"
PYTHON="${PYTHON:-python3}"
if [ -x "$VENV/bin/planemo" ]; then
    exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -qq planemo
"$VENV/bin/planemo" --version
