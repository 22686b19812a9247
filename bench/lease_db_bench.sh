#!/usr/bin/env bash
# DORA/s of massboot on SQLite, on PostgreSQL, three massboots on one PostgreSQL, and Kea 2.2 on
# the same PostgreSQL, in one run (bench/lease_db_bench.py says how; README, "Performance").
#
# Usage (as root): bench/lease_db_bench.sh [--rates 250,500,1000] [--period 10] [--json FILE]
# Needs the Debian packages postgresql, kea-dhcp4-server and kea-admin (perfdhcp, kea-admin).
# Everything runs in a network namespace this script makes (its loopback carries the servers'
# and the relays' addresses) and removes on exit; no system service is used.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
[ "$(id -u)" = 0 ] || { echo "needs root (network namespace)" >&2; exit 2; }
for tool in perfdhcp kea-dhcp4 kea-admin; do
    command -v "$tool" >/dev/null || { echo "$tool missing: apt-get install kea-dhcp4-server kea-admin" >&2; exit 2; }
done
NS=massboot-leasebench-$$
cleanup() { ip netns pids "$NS" 2>/dev/null | xargs -r kill 2>/dev/null || true; ip netns del "$NS" 2>/dev/null || true; }
trap cleanup EXIT
ip netns add "$NS"
ip -n "$NS" link set lo up
for a in 127.0.0.2 127.0.0.3 127.0.0.4 127.0.0.11 127.0.0.12 127.0.0.13; do
    ip -n "$NS" addr add "$a/8" dev lo
done
ip netns exec "$NS" "$PYTHON" bench/lease_db_bench.py "$@"
