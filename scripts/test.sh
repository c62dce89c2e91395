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
# Debian's chromium renders the `hpc-batch report --html` page in its test (skipped without it)
if ! command -v chromium >/dev/null && [ "$(id -u)" -eq 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium \
        || echo "chromium could not be installed: the report page test will be skipped" >&2
fi
.venv/bin/ruff check .
.venv/bin/mypy galaxy_hpc_runner hpc_worker
# pytest exits 5 when it collected no test: that fails this script like any other error.
exec .venv/bin/python -m pytest "$@"
