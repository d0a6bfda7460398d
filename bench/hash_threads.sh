#!/usr/bin/env bash
# Piece verification on a hash thread against on the event loop, same
# build: one warm supernode (it already holds the file), then PAIRS pairs of
# in-process dfget runs, `--hash-threads 0` and `--hash-threads 1`, their
# order alternating from pair to pair so that a burst of load on the shared
# machine hits both.  Prints each run's wall and CPU seconds, the medians and
# the median of the per-pair ratios (threaded throughput / on-the-loop).
#
#   bench/hash_threads.sh [BUILD_DIR] [SIZE_MIB] [PAIRS]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${1:-$ROOT/build}
SIZE_MIB=${2:-1024}
PAIRS=${3:-5}
. "$ROOT/bench/lib.sh"
start_origin "$SIZE_MIB"
URL=http://127.0.0.1:$NPORT/file
SPORT=$(free_port)
"$BIN/supernode" --listen 127.0.0.1:$SPORT --data-dir "$WORK/sn" --advertise-ip 127.0.0.1 \
    --log-level warn & PIDS+=($!)
wait_http "http://127.0.0.1:$SPORT/healthz"
"$BIN/dfget" -u "$URL" -o "$WORK/out/w" --node 127.0.0.1:$SPORT --home "$WORK/homew" \
    --log-level warn 2>/dev/null
rm -rf "$WORK/out/w" "$WORK/homew"

run() { # THREADS: appends "wall cpu" to $WORK/t$THREADS
    rm -f "$WORK/out/d"
    /usr/bin/time -f '%e %U %S' -o "$WORK/one" "$BIN/dfget" -u "$URL" -o "$WORK/out/d" \
        --node 127.0.0.1:$SPORT --home "$WORK/home" --hash-threads "$1" --log-level warn 2>/dev/null
    cmp -s "$WORK/out/d" "$WORK/nginx/www/file" || { echo "dfget output differs"; exit 1; }
    rm -rf "$WORK/home"
    awk '{printf "%s %.2f\n", $1, $2 + $3}' "$WORK/one" >> "$WORK/t$1"
    tail -n1 "$WORK/t$1"
}
: > "$WORK/t0"; : > "$WORK/t1"
for i in $(seq 1 "$PAIRS"); do
    if [ $((i % 2)) -eq 1 ]; then a=$(run 0); b=$(run 1); else b=$(run 1); a=$(run 0); fi
    echo "pair $i: on the loop ${a% *} s (cpu ${a#* } s), hash thread ${b% *} s (cpu ${b#* } s)"
    echo "${a% *} ${b% *}" | awk '{printf "%.2f\n", $1 / $2}' >> "$WORK/ratio"
done
for t in 0 1; do
    echo "hash-threads $t: wall median $(cut -d' ' -f1 "$WORK/t$t" | median) s" \
         "($(cut -d' ' -f1 "$WORK/t$t" | sort -g | head -n1)-$(cut -d' ' -f1 "$WORK/t$t" | sort -g | tail -n1))," \
         "cpu median $(cut -d' ' -f2 "$WORK/t$t" | median) s"
done
echo "size $SIZE_MIB MiB, $PAIRS pairs: median per-pair throughput ratio thread/loop $(median < "$WORK/ratio")" \
     "($(sort -g "$WORK/ratio" | head -n1)-$(sort -g "$WORK/ratio" | tail -n1))"
