#!/bin/sh
# Install the real services the integration tests start as child processes:
# Slurm (slurmctld, slurmd, clients) + munge, OpenSSH server, and Grid Engine
# with its DRMAA 1.0 library.  Idempotent: exits quickly when all is installed.
# Needs root (CI runs as root with no stdin).  Services are never started by
# the package scripts: a temporary policy-rc.d forbids it.
set -eu

PACKAGES="slurmctld slurmd slurm-client munge openssh-server
gridengine-master gridengine-exec gridengine-client gridengine-drmaa1.0"
POLICY=${POLICY_RC_D:-/usr/sbin/policy-rc.d}  # overridable only to test this script
DRMAA_LIB=/usr/lib/gridengine-drmaa/lib/libdrmaa.so.1.0

export DEBIAN_FRONTEND=noninteractive

is_installed() {
    dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null | grep -qx installed
}

missing=""
for pkg in $PACKAGES; do
    is_installed "$pkg" || missing="$missing $pkg"
done

ensure_runtime_dirs() {
    # sshd's privilege-separation dir (tmpfs: gone after a reboot); root only
    if [ "$(id -u)" -eq 0 ]; then
        mkdir -p /run/sshd
        chmod 0755 /run/sshd
    fi
}

if [ -z "$missing" ] && [ -e "$DRMAA_LIB" ] && [ -x /usr/sbin/slurmctld ] && [ -x /usr/sbin/sshd ]; then
    ensure_runtime_dirs
    echo "install.sh: all packages already installed"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: must run as root to install:$missing" >&2
    exit 1
fi

created_policy=0
cleanup() {
    if [ "$created_policy" -eq 1 ]; then
        rm -f "$POLICY"
    fi
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM

if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$POLICY"
    chmod 0755 "$POLICY"
    created_policy=1
fi

host="$(hostname)"
debconf-set-selections <<EOF
gridengine-common shared/gridenginemaster string $host
gridengine-common shared/gridenginecell string default
gridengine-common shared/gridengineconfig boolean true
gridengine-client shared/gridenginemaster string $host
gridengine-client shared/gridenginecell string default
gridengine-client shared/gridengineconfig boolean true
gridengine-master shared/gridenginemaster string $host
gridengine-master shared/gridenginecell string default
gridengine-master shared/gridengineconfig boolean true
EOF

echo "install.sh: installing:$missing"
# wait for a concurrent apt/dpkg (another test session) instead of failing
LOCK_WAIT="-o DPkg::Lock::Timeout=600"
# shellcheck disable=SC2086  # word splitting of the lists is intended
apt-get $LOCK_WAIT update -q </dev/null
# shellcheck disable=SC2086
apt-get $LOCK_WAIT install -y -q $PACKAGES </dev/null

ensure_runtime_dirs
echo "install.sh: done"
