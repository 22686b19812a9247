#!/usr/bin/env bash
# Install everything the test suite needs, then run it. As root (CI, or `sudo`), it also installs
# the Debian packages of the real third-party clients, which run in network namespaces.
# Usage: tests/run.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
DEBIAN_PACKAGES="python3-venv iproute2 nftables isc-dhcp-client busybox udhcpc atftp tftp-hpa curl
    prometheus systemd qemu-system-x86 ipxe-qemu"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $DEBIAN_PACKAGES >/dev/null
fi
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q -r requirements-test.txt -e .
.venv/bin/ruff check massboot bench tests
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then
    echo "pytest collected no tests: the suite is broken" >&2
    exit 1
fi
exit "$rc"
