#!/usr/bin/env bash
# The peer upload server against nginx, serving the same file's pieces to
# many concurrent clients on loopback: wrk requests 4 MiB ranges (cycling
# over the file's pieces) from nginx and from a dfdaemon's upload server
# that holds the same file.  Prints requests/s and MiB/s of each and the
# ratios (dfdaemon / nginx; 1.0 = as fast as nginx).
#
#   bench/upload_vs_nginx.sh [BUILD_DIR] [SIZE_MIB] [CONNECTIONS] [SECONDS] [ROUNDS]
#
# The two servers are measured alternately ROUNDS times (default 3) and the
# medians compared, so a noisy neighbour hits both alike.
#
# Needs wrk (Debian package wrk).  Loopback only, ephemeral ports; stops
# everything it started by PID.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${1:-$ROOT/build}
SIZE_MIB=${2:-256}
CONNS=${3:-64}
SECS=${4:-10}
ROUNDS=${5:-3}
command -v wrk >/dev/null || { echo "wrk is missing (apt-get install wrk)"; exit 2; }
. "$ROOT/bench/lib.sh"
start_origin "$SIZE_MIB"
SPORT=$(free_port); DPORT=$(free_port); UPORT=$(free_port)
URL=http://127.0.0.1:$NPORT/file
"$BIN/supernode" --listen 127.0.0.1:$SPORT --data-dir "$WORK/sn" --advertise-ip 127.0.0.1 --log-level warn &
PIDS+=($!)
wait_http "http://127.0.0.1:$SPORT/healthz"
"$BIN/dfdaemon" --home "$WORK/d" --node 127.0.0.1:$SPORT --listen 127.0.0.1:$DPORT \
    --upload-host 127.0.0.1 --upload-port $UPORT --log-level warn &
DD=$!; PIDS+=($DD)
wait_http "http://127.0.0.1:$DPORT/healthz"
TASK=$("$BIN/dfget" -u "$URL" -o "$WORK/out/f" --home "$WORK/d" --json 2>/dev/null |
       python3 -c 'import json,sys; print(json.load(sys.stdin)["task_id"])')
cmp -s "$WORK/out/f" "$WORK/nginx/www/file" || { echo "download differs"; exit 1; }

cat > "$WORK/ranges.lua" <<LUA
local n = 0
local pieces = $SIZE_MIB / 4
request = function()
  local s = (n % pieces) * 4194304
  n = n + 1
  return wrk.format("GET", nil, {["Range"] = "bytes=" .. s .. "-" .. (s + 4194303)})
end
LUA
run() { # URL -> "req/s MiB/s"
    wrk -t 2 -c "$CONNS" -d "${SECS}s" -s "$WORK/ranges.lua" "$1" > "$WORK/wrk.out" 2>&1
    python3 - "$WORK/wrk.out" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
m = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", t)
mult = {"B": 1 / 1048576, "KB": 1 / 1024, "MB": 1, "GB": 1024}[m.group(2)]
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
if bad:
    sys.exit("non-2xx answers: " + bad.group(1))
print(f"{rps:.1f} {float(m.group(1)) * mult:.1f}")
PY
}
# Server CPU seconds (user + system, from /proc) per GiB served: what each
# server spends on the same work, whatever wrk or the neighbours do.
NW=$(pgrep -P "$(cat "$WORK/nginx/nginx.pid")" | head -n1)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
per_gib() { # PID TICKS0 "req/s MiB/s" -> CPU s per GiB
    awk -v t0="$2" -v t1="$(cpu_ticks "$1")" -v hz="$(getconf CLK_TCK)" -v m="${3#* }" -v s="$SECS" \
        'BEGIN { printf "%.3f", (t1 - t0) / hz / (m * s / 1024) }'
}
: > "$WORK/n.t"; : > "$WORK/d.t"; : > "$WORK/r.t"; : > "$WORK/nc.t"; : > "$WORK/dc.t"
for i in $(seq 1 "$ROUNDS"); do
    T0=$(cpu_ticks "$NW"); N=$(run "$URL"); NC=$(per_gib "$NW" "$T0" "$N")
    T0=$(cpu_ticks "$DD"); D=$(run "http://127.0.0.1:$UPORT/peer/file/$TASK"); DC=$(per_gib "$DD" "$T0" "$D")
    echo "$N" >> "$WORK/n.t"; echo "$D" >> "$WORK/d.t"; echo "$NC" >> "$WORK/nc.t"; echo "$DC" >> "$WORK/dc.t"
    R=$(awk -v n="${N%% *}" -v d="${D%% *}" 'BEGIN { printf "%.2f", d / n }')
    echo "$R" >> "$WORK/r.t"
    echo "round $i: nginx $N, dfdaemon $D (req/s MiB/s), ratio $R; server CPU s/GiB nginx $NC, dfdaemon $DC"
done
NR=$(cut -d' ' -f1 "$WORK/n.t" | median); NM=$(cut -d' ' -f2 "$WORK/n.t" | median)
DR=$(cut -d' ' -f1 "$WORK/d.t" | median); DM=$(cut -d' ' -f2 "$WORK/d.t" | median)
awk -v nr="$NR" -v nm="$NM" -v dr="$DR" -v dm="$DM" -v c="$CONNS" -v s="$SECS" -v k="$ROUNDS" 'BEGIN {
  printf "%d connections, %d x %d s, 4 MiB ranges, medians: nginx %.1f req/s %.0f MiB/s; dfdaemon %.1f req/s %.0f MiB/s; ratio req/s %.2f, MiB/s %.2f\n",
         c, k, s, nr, nm, dr, dm, dr / nr, dm / nm }'
# The load of a shared machine changes from round to round; the ratio within
# a round (the two measured back to back) is the steadier figure.
echo "per-round ratio dfdaemon/nginx (req/s): median $(median < "$WORK/r.t"), spread" \
     "$(sort -g "$WORK/r.t" | head -n1)-$(sort -g "$WORK/r.t" | tail -n1)"
echo "server CPU s per GiB, medians: nginx $(median < "$WORK/nc.t"), dfdaemon $(median < "$WORK/dc.t")"
