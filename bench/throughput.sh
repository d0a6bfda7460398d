#!/usr/bin/env bash
# One peer downloading one file on loopback: dfget (through a fresh
# supernode, so the origin is read by the seed and the pieces travel
# seed -> peer) against curl from the same nginx.  Prints each run and the
# ratio of median throughputs (dfget / curl; 1.0 = as fast as curl).
#
#   bench/throughput.sh [BUILD_DIR] [SIZE_MIB] [RUNS]
#
# Everything runs on 127.0.0.1 with ephemeral ports; everything started is
# stopped by PID on exit.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${1:-$ROOT/build}
SIZE_MIB=${2:-1024}
RUNS=${3:-3}
. "$ROOT/bench/lib.sh"
start_origin "$SIZE_MIB"
URL=http://127.0.0.1:$NPORT/file

: > "$WORK/curl.t"; : > "$WORK/dfget.t"
for i in $(seq 1 "$RUNS"); do
    rm -f "$WORK/out/"*
    /usr/bin/time -f %e -a -o "$WORK/curl.t" curl -s -o "$WORK/out/c" "$URL"
    SPORT=$(free_port)
    "$BIN/supernode" --listen 127.0.0.1:$SPORT --data-dir "$WORK/sn$i" --advertise-ip 127.0.0.1 \
        --log-level warn & PIDS+=($!)
    for _ in $(seq 1 50); do curl -sf "http://127.0.0.1:$SPORT/healthz" >/dev/null && break; sleep 0.1; done
    /usr/bin/time -f %e -a -o "$WORK/dfget.t" "$BIN/dfget" -u "$URL" -o "$WORK/out/d" \
        --node 127.0.0.1:$SPORT --home "$WORK/home$i" --log-level warn 2>/dev/null
    cmp -s "$WORK/out/d" "$WORK/nginx/www/file" || { echo "dfget output differs"; exit 1; }
    kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true; unset 'PIDS[-1]'
    rm -rf "$WORK/sn$i" "$WORK/home$i"
    echo "run $i: curl $(tail -n1 "$WORK/curl.t") s, dfget $(tail -n1 "$WORK/dfget.t") s"
done
C=$(median < "$WORK/curl.t"); D=$(median < "$WORK/dfget.t")
awk -v c="$C" -v d="$D" -v m="$SIZE_MIB" 'BEGIN {
  printf "size %d MiB: curl median %.2f s (%.0f MiB/s), dfget median %.2f s (%.0f MiB/s), ratio dfget/curl throughput %.2f\n",
         m, c, m / c, d, m / d, c / d }'
