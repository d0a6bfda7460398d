#!/usr/bin/env bash
# Peak resident memory (VmHWM) of dfdaemon idle and after a download of
# SIZE_MIB through it, and of the supernode after PEERS peers registered
# for one task and pulled once each.  The reference is the same file's
# size: data is streamed through the piece store, never held whole.
#
#   bench/rss.sh [BUILD_DIR] [SIZE_MIB] [PEERS]
#
# Loopback only; stops everything it started by PID.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${1:-$ROOT/build}
SIZE_MIB=${2:-1024}
PEERS=${3:-1000}
. "$ROOT/bench/lib.sh"
start_origin "$SIZE_MIB"
echo small > "$WORK/nginx/www/small"
SPORT=$(free_port); DPORT=$(free_port)
hwm() { awk '/VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
"$BIN/supernode" --listen 127.0.0.1:$SPORT --data-dir "$WORK/sn" --advertise-ip 127.0.0.1 --log-level warn &
SN=$!; PIDS+=($SN)
wait_http "http://127.0.0.1:$SPORT/healthz"
"$BIN/dfdaemon" --home "$WORK/d" --node 127.0.0.1:$SPORT --listen 127.0.0.1:$DPORT --log-level warn &
DD=$!; PIDS+=($DD)
wait_http "http://127.0.0.1:$DPORT/healthz"
sleep 1
IDLE=$(hwm $DD)
"$BIN/dfget" -u "http://127.0.0.1:$NPORT/file" -o "$WORK/out/f" --home "$WORK/d" 2>/dev/null
cmp -s "$WORK/out/f" "$WORK/nginx/www/file" || { echo "download differs"; exit 1; }
BUSY=$(hwm $DD)
rm -f "$WORK/out/f"
SN0=$(hwm $SN)
python3 - "$SPORT" "$NPORT" "$PEERS" <<'PY'
import json, sys, urllib.request
sport, nport, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
def post(path, body):
    req = urllib.request.Request(f"http://127.0.0.1:{sport}{path}", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)
url = f"http://127.0.0.1:{nport}/small"
for i in range(n):
    ip = f"198.18.{i // 250}.{i % 250 + 1}"
    r = post("/api/v1/register", {"url": url, "peer": {"ip": ip, "port": 20000, "hostname": f"h{i}"}})
    post("/api/v1/report", {"task_id": r["task_id"], "peer_id": r["peer_id"], "results": []})
PY
SN1=$(hwm $SN)
echo "dfdaemon VmHWM: idle ${IDLE} MiB, after a ${SIZE_MIB} MiB download ${BUSY} MiB; supernode VmHWM: ${SN0} MiB before, ${SN1} MiB after ${PEERS} peers"
