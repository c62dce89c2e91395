#!/bin/sh
# Install a real Galaxy server (galaxy-web-apps from PyPI) into its own venv for
# the Galaxy integration tests, plus bioblend/requests for the test client.
# Idempotent: exits at once when the venv already holds the pinned release.
#   usage: tests/galaxy/install_galaxy.sh [VENV]   (default: .galaxy-venv in the repo)
set -eu

GALAXY_VERSION="${GALAXY_VERSION:-26.1.2}"
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
VENV="${1:-${GALAXY_VENV:-$REPO/.galaxy-venv}}"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.galaxy-web-apps-$GALAXY_VERSION"

if [ -e "$STAMP" ] && "$VENV/bin/python" -c "import galaxy.jobs.runners, yaml" 2>/dev/null; then
    echo "install_galaxy.sh: Galaxy $GALAXY_VERSION already in $VENV"
    exit 0
fi

echo "install_galaxy.sh: installing galaxy-web-apps==$GALAXY_VERSION into $VENV"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -qq --upgrade pip
"$VENV/bin/pip" install -qq "galaxy-web-apps==$GALAXY_VERSION" PyYAML
"$VENV/bin/python" -c "import galaxy.jobs.runners"
touch "$STAMP"
echo "install_galaxy.sh: done"
