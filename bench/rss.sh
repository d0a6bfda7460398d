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
WORK=$(mktemp -d "${TMPDIR:-/tmp}/dfly-bench.XXXXXX")
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -f "$WORK/nginx/nginx.pid" ] && kill "$(cat "$WORK/nginx/nginx.pid")" 2>/dev/null || true
    sleep 0.3
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 1 100); do curl -sf "$1" >/dev/null && return 0; sleep 0.1; done; echo "no answer from $1"; exit 1; }
hwm() { awk '/VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }

mkdir -p "$WORK/nginx/www" "$WORK/out"
chmod 755 "$WORK" "$WORK/nginx" "$WORK/nginx/www"
head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom > "$WORK/nginx/www/file"
echo small > "$WORK/nginx/www/small"
NPORT=$(free_port); SPORT=$(free_port); DPORT=$(free_port)
cat > "$WORK/nginx/nginx.conf" <<CONF
daemon on; pid $WORK/nginx/nginx.pid; error_log $WORK/nginx/error.log;
events { worker_connections 1024; }
http { access_log off; server { listen 127.0.0.1:$NPORT; root $WORK/nginx/www; } }
CONF
nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf"
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
