#!/usr/bin/env bash
# Install everything the test suite needs, then run it. As root (CI, or `sudo`), it also installs
# the Debian packages of the real third-party clients, which run in network namespaces.
# Usage: tests/run.sh [pytest arguments]
#
# The suite runs on the distribution's own interpreter (/usr/bin/python3: Debian 12 has 3.11.2),
# whatever python3 comes first on PATH, so that it tests what README's Quick start promises;
# PYTHON=/path/to/python3 overrides it on other systems. Its virtualenv is .venv-test, apart from
# the Quick start's .venv, so the two lines work in either order on one checkout; files it leaves
# in the checkout as root are given back to the checkout's owner.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-/usr/bin/python3}
VENV=.venv-test
DEBIAN_PACKAGES="python3-venv gcc python3-dev iproute2 nftables isc-dhcp-client busybox udhcpc atftp tftp-hpa curl
    wget prometheus systemd qemu-system-x86 ipxe-qemu dnsmasq-base ovmf ipxe postgresql nginx"

owner=$(stat -c %u:%g .)
if [ "$(id -u)" = 0 ] && [ "$owner" != 0:0 ]; then
    # Whatever this run creates as root (the venv, egg-info, caches) goes back to the owner.
    trap 'chown -R --from=0:0 "$owner" . 2>/dev/null || true' EXIT
fi

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # The tests start private instances of PostgreSQL, nginx and dnsmasq (temporary directories,
    # loopback ports or their own namespaces): installing a package must not start its system
    # service. policy-rc.d's exit code 101 ("action forbidden", honoured by invoke-rc.d and
    # deb-systemd-invoke) holds for this install only, unless the machine has a policy already.
    policy=/usr/sbin/policy-rc.d
    made_policy=
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy" && made_policy=1
    fi
    set +e
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $DEBIAN_PACKAGES >/dev/null
    rc=$?
    set -e
    [ -n "$made_policy" ] && rm -f "$policy"
    [ "$rc" = 0 ] || exit "$rc"
fi
if [ ! -x "$PYTHON" ]; then
    echo "tests/run.sh: no interpreter at $PYTHON; set PYTHON=/path/to/python3 (3.11 or later)" >&2
    exit 1
fi

# A virtualenv made by one interpreter cannot be reused by another: make it anew when it was.
made_by=$("$PYTHON" -c 'import sys; print(sys.executable, sys.version.split()[0])')
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.made-by" 2>/dev/null)" != "$made_by" ]; then
    "$PYTHON" -m venv --clear "$VENV"
    echo "$made_by" > "$VENV/.made-by"
fi
"$VENV/bin/pip" install -q --upgrade pip >/dev/null
"$VENV/bin/pip" install -q -r requirements-test.txt -e .
echo "tests/run.sh: $("$VENV/bin/python" -c 'import sys; print("Python", sys.version.split()[0], "at", sys.executable)')"
"$VENV/bin/ruff" check massboot bench tests
set +e
"$VENV/bin/python" -m pytest "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then
    echo "pytest collected no tests: the suite is broken" >&2
    exit 1
fi
exit "$rc"
