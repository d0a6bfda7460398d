#!/usr/bin/env bash
# The cold path with the seed hashing on a thread against on its event loop,
# same build, with each process's CPU time.  Per round: one curl from nginx
# (the reference), then two cold dfget runs, each through a fresh supernode
# started with `--hash-threads 0` and `--hash-threads 1`, their order
# alternating from round to round so that a burst of load on the shared
# machine hits both.  For every run it records the wall time and the CPU
# seconds (user + system) of nginx, curl, the supernode and dfget, and
# prints the medians, the ratios to curl and the CPU per run.
#
#   bench/seed_threads.sh [BUILD_DIR] [SIZE_MIB] [ROUNDS] [DFGET_ARGS...]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${1:-$ROOT/build}
SIZE_MIB=${2:-1024}
ROUNDS=${3:-5}
shift $(($# < 3 ? $# : 3))
EXTRA=("$@")
. "$ROOT/bench/lib.sh"
start_origin "$SIZE_MIB"
URL=http://127.0.0.1:$NPORT/file
TCK=$(getconf CLK_TCK)

# CPU seconds (user + system) so far of the processes PIDS...
cpu_of() { for p in "$@"; do awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0; done |
           awk -v t="$TCK" '{s += $1} END {printf "%.2f\n", s / t}'; }
nginx_pids() { pgrep -s "$(ps -o sid= -p "$(cat "$WORK/nginx/nginx.pid")" | tr -d ' ')" nginx; }
delta() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f\n", b - a}'; }

curl_run() { # appends "wall curl_cpu nginx_cpu" to $WORK/curl
    local n0 n1
    rm -f "$WORK/out/c"
    n0=$(cpu_of $(nginx_pids))
    /usr/bin/time -f '%e %U %S' -o "$WORK/one" curl -s -o "$WORK/out/c" "$URL"
    n1=$(cpu_of $(nginx_pids))
    awk -v n="$(delta "$n0" "$n1")" '{printf "%s %.2f %s\n", $1, $2 + $3, n}' "$WORK/one" >> "$WORK/curl"
}

dfly_run() { # THREADS: appends "wall dfget_cpu supernode_cpu nginx_cpu" to $WORK/t$THREADS
    local sport spid n0 n1 s1
    rm -rf "$WORK/out/d" "$WORK/sn" "$WORK/home"
    sport=$(free_port)
    "$BIN/supernode" --listen 127.0.0.1:$sport --data-dir "$WORK/sn" --advertise-ip 127.0.0.1 \
        --hash-threads "$1" --log-level warn 2>/dev/null & spid=$!; PIDS+=($spid)
    wait_http "http://127.0.0.1:$sport/healthz"
    n0=$(cpu_of $(nginx_pids))
    /usr/bin/time -f '%e %U %S' -o "$WORK/one" "$BIN/dfget" -u "$URL" -o "$WORK/out/d" \
        --node 127.0.0.1:$sport --home "$WORK/home" --log-level warn "${EXTRA[@]}" 2>/dev/null
    s1=$(cpu_of "$spid"); n1=$(cpu_of $(nginx_pids))
    kill "$spid"; wait "$spid" 2>/dev/null || true; unset 'PIDS[-1]'
    cmp -s "$WORK/out/d" "$WORK/nginx/www/file" || { echo "dfget output differs"; exit 1; }
    awk -v s="$s1" -v n="$(delta "$n0" "$n1")" '{printf "%s %.2f %s %s\n", $1, $2 + $3, s, n}' \
        "$WORK/one" >> "$WORK/t$1"
}

: > "$WORK/curl"; : > "$WORK/t0"; : > "$WORK/t1"
for i in $(seq 1 "$ROUNDS"); do
    curl_run
    if [ $((i % 2)) -eq 1 ]; then dfly_run 0; dfly_run 1; else dfly_run 1; dfly_run 0; fi
    echo "round $i: curl $(tail -n1 "$WORK/curl" | cut -d' ' -f1) s," \
         "on the loop $(tail -n1 "$WORK/t0" | cut -d' ' -f1) s, hash thread $(tail -n1 "$WORK/t1" | cut -d' ' -f1) s"
    paste -d' ' <(tail -n1 "$WORK/t0") <(tail -n1 "$WORK/t1") |
        awk '{printf "%.2f\n", $1 / $5}' >> "$WORK/pair"
done
col() { cut -d' ' -f"$2" "$1" | median; }
range() { echo "$(cut -d' ' -f"$2" "$1" | sort -g | head -n1)-$(cut -d' ' -f"$2" "$1" | sort -g | tail -n1)"; }
C=$(col "$WORK/curl" 1)
echo "curl: wall median $C s ($(range "$WORK/curl" 1)); CPU median: curl $(col "$WORK/curl" 2) s," \
     "nginx $(col "$WORK/curl" 3) s"
for t in 0 1; do
    D=$(col "$WORK/t$t" 1)
    echo "hash-threads $t: dfget wall median $D s ($(range "$WORK/t$t" 1)), ratio to curl" \
         "$(awk -v c="$C" -v d="$D" 'BEGIN {printf "%.2f", c / d}'); CPU median: dfget" \
         "$(col "$WORK/t$t" 2) s, supernode $(col "$WORK/t$t" 3) s, nginx $(col "$WORK/t$t" 4) s"
done
echo "size $SIZE_MIB MiB, $ROUNDS rounds: median per-round throughput ratio thread/loop" \
     "$(median < "$WORK/pair") ($(sort -g "$WORK/pair" | head -n1)-$(sort -g "$WORK/pair" | tail -n1))"
