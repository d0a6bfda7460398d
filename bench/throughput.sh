#!/usr/bin/env bash
# One peer downloading one file on loopback: dfget (through a fresh
# supernode, so the origin is read by the seed and the pieces travel
# seed -> peer) against curl from the same nginx.  Prints each run and the
# ratio of median throughputs (dfget / curl; 1.0 = as fast as curl).
#
#   bench/throughput.sh [BUILD_DIR] [SIZE_MIB] [RUNS] [cold|warm]
#
# cold (default): a fresh supernode per run, so the seed reads the origin
# while the peer fetches from it.  warm: one supernode that already holds
# the file (fetched once before the first run), so only seed -> peer is
# measured.  Each run's dfget is an in-process peer with a fresh home.
# Everything runs on 127.0.0.1 with ephemeral ports; everything started is
# stopped by PID on exit.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${1:-$ROOT/build}
SIZE_MIB=${2:-1024}
RUNS=${3:-3}
MODE=${4:-cold}
case $MODE in cold|warm) ;; *) echo "mode must be cold or warm"; exit 2;; esac
. "$ROOT/bench/lib.sh"
start_origin "$SIZE_MIB"
URL=http://127.0.0.1:$NPORT/file
start_supernode() { # DATA_DIR: sets SPORT, appends the PID to PIDS
    SPORT=$(free_port)
    "$BIN/supernode" --listen 127.0.0.1:$SPORT --data-dir "$1" --advertise-ip 127.0.0.1 \
        --log-level warn & PIDS+=($!)
    for _ in $(seq 1 50); do curl -sf "http://127.0.0.1:$SPORT/healthz" >/dev/null && break; sleep 0.1; done
}
if [ "$MODE" = warm ]; then
    start_supernode "$WORK/sn"
    "$BIN/dfget" -u "$URL" -o "$WORK/out/w" --node 127.0.0.1:$SPORT --home "$WORK/homew" \
        --log-level warn 2>/dev/null
    rm -rf "$WORK/out/w" "$WORK/homew"
fi

: > "$WORK/curl.t"; : > "$WORK/dfget.t"
for i in $(seq 1 "$RUNS"); do
    rm -f "$WORK/out/"*
    /usr/bin/time -f %e -a -o "$WORK/curl.t" curl -s -o "$WORK/out/c" "$URL"
    [ "$MODE" = cold ] && start_supernode "$WORK/sn$i"
    /usr/bin/time -f %e -a -o "$WORK/dfget.t" "$BIN/dfget" -u "$URL" -o "$WORK/out/d" \
        --node 127.0.0.1:$SPORT --home "$WORK/home$i" --log-level warn 2>/dev/null
    cmp -s "$WORK/out/d" "$WORK/nginx/www/file" || { echo "dfget output differs"; exit 1; }
    if [ "$MODE" = cold ]; then
        kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true; unset 'PIDS[-1]'
    fi
    rm -rf "$WORK/sn$i" "$WORK/home$i"
    echo "run $i: curl $(tail -n1 "$WORK/curl.t") s, dfget $(tail -n1 "$WORK/dfget.t") s"
done
C=$(median < "$WORK/curl.t"); D=$(median < "$WORK/dfget.t")
echo "spread: curl $(sort -g "$WORK/curl.t" | head -n1)-$(sort -g "$WORK/curl.t" | tail -n1) s," \
     "dfget $(sort -g "$WORK/dfget.t" | head -n1)-$(sort -g "$WORK/dfget.t" | tail -n1) s"
awk -v c="$C" -v d="$D" -v m="$SIZE_MIB" -v mode="$MODE" 'BEGIN {
  printf "%s, size %d MiB: curl median %.2f s (%.0f MiB/s), dfget median %.2f s (%.0f MiB/s), ratio dfget/curl throughput %.2f\n",
         mode, m, c, m / c, d, m / d, c / d }'
