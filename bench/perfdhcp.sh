#!/usr/bin/env bash
# ISC perfdhcp (Debian package kea-admin) against massboot: an independent DHCP rate figure.
#
# Usage (as root): bench/perfdhcp.sh [RATE...]       e.g. bench/perfdhcp.sh 1000 2000 3000
#   PERIOD=10 CLIENTS=20000 PYTHON=.venv/bin/python bench/perfdhcp.sh 2500
#
# For each rate it starts a fresh massboot (new lease database, [logger] level = warning,
# allow_simple_dhcp on: perfdhcp sends no PXE options) and runs
#   perfdhcp -4 -l 127.0.0.2 -r RATE -R CLIENTS -p PERIOD -W 2000000 127.0.0.1
# perfdhcp is a relay agent at 127.0.0.2:67 (giaddr) and wants the replies there; it refuses
# an address that is not on an interface, so both run in a network namespace of their own whose
# loopback carries 127.0.0.2: the host's loopback and its port 67 are not touched. -W waits 2 s
# after the last request so that replies still in flight are not counted as drops. perfdhcp
# exits 3 when anything was dropped: the drop ratios are read from its report instead.
# Prints one line per rate: DORA exchanges completed per second of the test period, the drop
# ratios of DISCOVER-OFFER and REQUEST-ACK, the exchanges completed (ACKs) over those started,
# and massboot's CPU seconds over the run.
# The namespace, massboot and the temporary directory are removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
PERIOD=${PERIOD:-10}
CLIENTS=${CLIENTS:-20000}
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
RATES=("$@")
[ ${#RATES[@]} -gt 0 ] || RATES=(1000 2000 3000 4000)
[ "$(id -u)" = 0 ] || { echo "needs root (network namespace)" >&2; exit 2; }
command -v perfdhcp >/dev/null || { echo "perfdhcp missing: apt-get install kea-admin" >&2; exit 2; }

NS=massboot-perf-$$
TMP=$(mktemp -d)
PID=
cleanup() {
    if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
    ip netns del "$NS" 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT
ip netns add "$NS"
ip -n "$NS" link set lo up
ip -n "$NS" addr add 127.0.0.2/8 dev lo

start_massboot() {
    rm -f "$TMP/leases.sqlite3"*
    cat > "$TMP/massboot.ini" <<EOF
[logger]
type = stderr
level = warning

[bootpd]
address = 127.0.0.1
port = 67
pool_start = 127.1.0.1
pool_count = $((CLIENTS * 2 + 1000))
lease_time = 3600
lease_db = $TMP/leases.sqlite3
allow_simple_dhcp = on

[bootfile]
default = pxelinux.0

[tftpd]
address = 127.0.0.1
port = 6969
root = $TMP
EOF
    ip netns exec "$NS" "$PYTHON" -m massboot -p -c "$TMP/massboot.ini" >"$TMP/massboot.log" 2>&1 &
    PID=$!
    for _ in $(seq 100); do
        ip netns exec "$NS" ss -Hlun 'sport = :67' | grep -q . && return 0
        kill -0 "$PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "massboot did not start:" >&2; cat "$TMP/massboot.log" >&2; exit 2
}

cpu_seconds() {  # utime + stime of $PID
    awk -v hz="$(getconf CLK_TCK)" '{ sub(/.*\) /, ""); print ($12 + $13) / hz }' "/proc/$PID/stat"
}

printf '%8s %10s %12s %12s %18s %10s\n' rate "DORA/s" "DO drops" "RA drops" "DORA done" "server CPU"
for rate in "${RATES[@]}"; do
    start_massboot
    cpu0=$(cpu_seconds)
    set +e
    ip netns exec "$NS" perfdhcp -4 -l 127.0.0.2 -r "$rate" -R "$CLIENTS" -p "$PERIOD" -W 2000000 \
        127.0.0.1 >"$TMP/perfdhcp.out" 2>&1
    status=$?
    set -e
    cpu1=$(cpu_seconds)
    kill "$PID"; wait "$PID" 2>/dev/null || true; PID=
    if [ "$status" != 0 ] && [ "$status" != 3 ]; then
        echo "perfdhcp exited $status:" >&2; cat "$TMP/perfdhcp.out" >&2; exit 1
    fi
    awk -v rate="$rate" -v period="$PERIOD" -v cpu0="$cpu0" -v cpu1="$cpu1" '
        /Statistics for: DISCOVER-OFFER/ { part = "do" }
        /Statistics for: REQUEST-ACK/ { part = "ra" }
        /^sent packets:/ { sent[part] = $3 }
        /^received packets:/ { recv[part] = $3 }
        /^drops ratio:/ { ratio[part] = $3 }
        END {
            done = recv["ra"] + 0; started = sent["do"] + 0
            printf "%8d %10.0f %10.3f %% %10.3f %% %8d/%-8d %9.2fs\n", rate, done / period, ratio["do"], ratio["ra"],
                done, started, cpu1 - cpu0
        }' "$TMP/perfdhcp.out"
done
