#!/usr/bin/env bash
# ISC perfdhcp (Debian package kea-admin) against massboot and, side by side in the same run,
# against ISC Kea 2.2 (Debian kea-dhcp4-server, memfile leases with persist: true).
#
# Usage (as root): bench/perfdhcp.sh [RATE...]       e.g. bench/perfdhcp.sh 1000 2000 3000
#   PERIOD=10 CLIENTS=20000 PYTHON=.venv/bin/python bench/perfdhcp.sh 2500
#   LEVEL=info TARGETS="massboot massboot:/path/to/other/checkout kea" bench/perfdhcp.sh 2000 3000
#
# TARGETS (default: massboot) are the servers, each run fresh for every rate, in turn:
#   massboot        this checkout, [logger] type = file, level = LEVEL (default info: one line
#                   per OFFER and ACK, as a deployment logs), a new SQLite lease database,
#                   [metrics] on (its subscriber counts every event), allow_simple_dhcp on
#                   (perfdhcp sends no PXE options)
#   massboot:DIR    the same config run from another checkout (e.g. a worktree of main, for a
#                   before/after figure in one run)
#   kea             kea-dhcp4 with a memfile lease file (persist: true) in the temporary
#                   directory, the same pool and relay, its log at INFO in a file
# and perfdhcp runs
#   perfdhcp -4 -l 127.0.0.2 -r RATE -R CLIENTS -p PERIOD -W 2000000 127.0.0.1
# perfdhcp is a relay agent at 127.0.0.2:67 (giaddr) and wants the replies there; it refuses
# an address that is not on an interface, so everything runs in a network namespace of its own
# whose loopback carries 127.0.0.2: the host's loopback and its port 67 are not touched. -W
# waits 2 s after the last request so that replies still in flight are not counted as drops.
# perfdhcp exits 3 when anything was dropped: the drop ratios are read from its report instead.
# Prints one line per target and rate: DORA exchanges completed per second of the test period,
# the drop ratios of DISCOVER-OFFER and REQUEST-ACK, the exchanges completed (ACKs) over those
# started, the server's CPU seconds over the run and per 1,000 completed DORA, and (massboot)
# the lines its log got; then, per target, the highest offered rate with < 1 % drops and the
# highest up to which every rate had < 1 % (bench/perfdhcp_summary.py). The namespace, the
# servers and the temporary directory are removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
HERE=$PWD
PERIOD=${PERIOD:-10}
CLIENTS=${CLIENTS:-20000}
LEVEL=${LEVEL:-info}
TARGETS=${TARGETS:-massboot}
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
PYTHON=$(command -v "$PYTHON" || echo "$PYTHON")
case $PYTHON in /*) ;; *) PYTHON=$HERE/$PYTHON ;; esac
RATES=("$@")
[ ${#RATES[@]} -gt 0 ] || RATES=(1000 2000 3000 4000)
[ "$(id -u)" = 0 ] || { echo "needs root (network namespace)" >&2; exit 2; }
command -v perfdhcp >/dev/null || { echo "perfdhcp missing: apt-get install kea-admin" >&2; exit 2; }
case " $TARGETS " in *" kea "*)
    command -v kea-dhcp4 >/dev/null || { echo "kea-dhcp4 missing: apt-get install kea-dhcp4-server" >&2; exit 2; }
esac

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
POOL=$((CLIENTS * 2 + 1000))

wait_port() {  # $1: what started, for the error
    for _ in $(seq 100); do
        ip netns exec "$NS" ss -Hlun 'sport = :67' | grep -q . && return 0
        kill -0 "$PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "$1 did not start:" >&2; cat "$TMP/server.out" >&2; exit 2
}

start_massboot() {  # $1: the checkout to run
    rm -f "$TMP"/leases.sqlite3* "$TMP/massboot.log"
    cat > "$TMP/massboot.ini" <<EOF
[logger]
type = file
file = $TMP/massboot.log
level = $LEVEL

[bootpd]
address = 127.0.0.1
port = 67
pool_start = 127.1.0.1
pool_count = $POOL
lease_time = 3600
lease_db = $TMP/leases.sqlite3
allow_simple_dhcp = on

[bootfile]
default = pxelinux.0

[tftpd]
address = 127.0.0.1
port = 6969
root = $TMP

[metrics]
address = 127.0.0.1
port = 9469
EOF
    (cd "$1" && exec ip netns exec "$NS" "$PYTHON" -m massboot -p -c "$TMP/massboot.ini") >"$TMP/server.out" 2>&1 &
    PID=$!
    wait_port massboot
}

start_kea() {
    rm -f "$TMP"/kea-leases4.csv* "$TMP/kea.log"
    last=$((0x7F010001 + POOL - 1))
    end="$((last >> 24 & 255)).$((last >> 16 & 255)).$((last >> 8 & 255)).$((last & 255))"
    cat > "$TMP/kea-dhcp4.json" <<EOF
{"Dhcp4": {
  "interfaces-config": {"interfaces": ["lo/127.0.0.1"], "dhcp-socket-type": "udp"},
  "lease-database": {"type": "memfile", "persist": true, "name": "$TMP/kea-leases4.csv", "lfc-interval": 0},
  "control-socket": {"socket-type": "unix", "socket-name": "$TMP/kea4.sock"},
  "valid-lifetime": 3600, "renew-timer": 1800, "rebind-timer": 3150,
  "subnet4": [{"id": 1, "subnet": "127.0.0.0/8", "pools": [{"pool": "127.1.0.1 - $end"}],
               "relay": {"ip-addresses": ["127.0.0.2"]}}],
  "loggers": [{"name": "kea-dhcp4", "severity": "INFO", "output_options": [{"output": "$TMP/kea.log"}]}]
}}
EOF
    KEA_PIDFILE_DIR=$TMP KEA_LOCKFILE_DIR=$TMP ip netns exec "$NS" kea-dhcp4 -c "$TMP/kea-dhcp4.json" \
        >"$TMP/server.out" 2>&1 &
    PID=$!
    wait_port kea-dhcp4
}

cpu_seconds() {  # utime + stime of $PID
    awk -v hz="$(getconf CLK_TCK)" '{ sub(/.*\) /, ""); print ($12 + $13) / hz }' "/proc/$PID/stat"
}

printf '%-26s %6s %8s %10s %10s %18s %9s %10s %8s\n' target rate "DORA/s" "DO drops" "RA drops" \
    "DORA done" "CPU-s" "CPU-s/1k" "log"
for rate in "${RATES[@]}"; do
    for target in $TARGETS; do
        case $target in
            kea) start_kea; label="kea 2.2 memfile" ;;
            massboot) start_massboot "$HERE"; label="massboot ($LEVEL)" ;;
            massboot:*) start_massboot "${target#massboot:}"; label="massboot:$(basename "${target#massboot:}") ($LEVEL)" ;;
            *) echo "unknown target $target" >&2; exit 2 ;;
        esac
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
        lines=-
        [ "$target" = kea ] || lines=$(wc -l < "$TMP/massboot.log")
        awk -v rate="$rate" -v period="$PERIOD" -v cpu0="$cpu0" -v cpu1="$cpu1" -v label="$label" -v lines="$lines" '
            /Statistics for: DISCOVER-OFFER/ { part = "do" }
            /Statistics for: REQUEST-ACK/ { part = "ra" }
            /^sent packets:/ { sent[part] = $3 }
            /^received packets:/ { recv[part] = $3 }
            /^drops ratio:/ { ratio[part] = $3 }
            END {
                done = recv["ra"] + 0; started = sent["do"] + 0; cpu = cpu1 - cpu0
                printf "%-26s %6d %8.0f %8.3f %% %8.3f %% %8d/%-9d %8.2fs %9.3fs %8s\n", label, rate,
                    done / period, ratio["do"], ratio["ra"], done, started, cpu,
                    done ? cpu * 1000 / done : 0, lines
            }' "$TMP/perfdhcp.out" | tee -a "$TMP/table"
    done
done
echo
"$PYTHON" "$HERE/bench/perfdhcp_summary.py" "$TMP/table"
