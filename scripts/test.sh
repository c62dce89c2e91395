#!/usr/bin/env bash
# Everything the tests need, then every test: the project venv, the Debian services
# (munge + Slurm, sshd, Grid Engine), lint and types, then pytest (Galaxy is installed
# into its own venv by the Galaxy tests' fixture). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
bash tests/services/install.sh
.venv/bin/ruff check .
.venv/bin/mypy galaxy_hpc_runner hpc_worker
# pytest exits 5 when it collected no test: that fails this script like any other error.
exec .venv/bin/python -m pytest "$@"
