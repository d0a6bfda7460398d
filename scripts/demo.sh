#!/usr/bin/env bash
# Demo: nginx origin with a 64 MiB file, one supernode, 4 concurrent dfget
# peers.  Prints where each peer's bytes came from and checks every sha256.
# Everything started here is stopped by PID on exit (also on Ctrl-C / TERM).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PEERS=${PEERS:-4}
SIZE_MB=${SIZE_MB:-64}
BUILD=${BUILD:-$ROOT/build}

bash scripts/install-deps.sh
if [ -n "${DF_BIN_DIR:-}" ]; then
    BUILD=$DF_BIN_DIR  # use prebuilt binaries
else
    cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
    cmake --build "$BUILD" -j"${JOBS:-2}" >/dev/null
fi
for b in supernode dfget; do
    [ -x "$BUILD/$b" ] || { echo "demo: $BUILD/$b was not built" >&2; exit 1; }
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/dfly-demo.XXXXXX")
chmod 755 "$WORK"
PIDS=()
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 1 50); do
        local alive=0
        for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_http() {  # URL TRIES [WANT]: bounded wait for an HTTP answer (WANT: status, default any)
    local code
    for _ in $(seq 1 "$2"); do
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$1" 2>/dev/null || true)
        if [ -n "${3:-}" ]; then [ "$code" = "$3" ] && return 0
        elif [ -n "$code" ] && [ "$code" != 000 ]; then return 0; fi
        sleep 0.2
    done
    return 1
}

NGINX=$(command -v nginx || echo /usr/sbin/nginx)
NG_PORT=$(free_port)
SN_PORT=$(free_port)
mkdir -p "$WORK/nginx/html" "$WORK/nginx/tmp" "$WORK/sn"
head -c "$((SIZE_MB * 1024 * 1024))" /dev/urandom >"$WORK/nginx/html/demo.bin"
chmod 644 "$WORK/nginx/html/demo.bin"
WANT=$(sha256sum "$WORK/nginx/html/demo.bin" | cut -d' ' -f1)
USER_LINE=""
[ "$(id -u)" = 0 ] && USER_LINE="user root root;"
cat >"$WORK/nginx/nginx.conf" <<NGX
$USER_LINE
daemon off;
master_process on;
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log;
events { worker_connections 256; }
http {
    default_type application/octet-stream;
    sendfile on;
    client_body_temp_path $WORK/nginx/tmp;
    proxy_temp_path $WORK/nginx/tmp;
    fastcgi_temp_path $WORK/nginx/tmp;
    uwsgi_temp_path $WORK/nginx/tmp;
    scgi_temp_path $WORK/nginx/tmp;
    log_format dfly "\$request\\t\$status\\t\$body_bytes_sent\\t\$http_range";
    access_log $WORK/nginx/access.log dfly;
    server { listen 127.0.0.1:$NG_PORT; root $WORK/nginx/html; }
}
NGX
"$NGINX" -p "$WORK/nginx/" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log" &
PIDS+=($!)
URL="http://127.0.0.1:$NG_PORT/demo.bin"
wait_http "http://127.0.0.1:$NG_PORT/" 50 ||
    { echo "demo: nginx did not start"; cat "$WORK/nginx/error.log"; exit 1; }

"$BUILD/supernode" --listen "127.0.0.1:$SN_PORT" --data-dir "$WORK/sn" --advertise-ip 127.0.0.1 \
    --log-level info 2>"$WORK/supernode.log" &
PIDS+=($!)
wait_http "http://127.0.0.1:$SN_PORT/healthz" 100 200 ||
    { echo "demo: supernode did not answer /healthz"; tail -20 "$WORK/supernode.log"; exit 1; }
echo "origin $URL ($SIZE_MB MiB), supernode 127.0.0.1:$SN_PORT, $PEERS peers"

PEER_PIDS=()
for i in $(seq 1 "$PEERS"); do
    mkdir -p "$WORK/home$i"
    "$BUILD/dfget" -u "$URL" -o "$WORK/out$i.bin" --node "127.0.0.1:$SN_PORT" \
        --home "$WORK/home$i" --json >"$WORK/peer$i.json" 2>"$WORK/peer$i.log" &
    PIDS+=($!)
    PEER_PIDS+=($!)
done

# Bounded wait for the peers (polling: `wait` alone could block forever).
RCS=()
deadline=$(( $(date +%s) + ${DEMO_TIMEOUT:-300} ))
for idx in "${!PEER_PIDS[@]}"; do
    pid=${PEER_PIDS[$idx]}
    while kill -0 "$pid" 2>/dev/null && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
        RCS[$idx]=timeout
    else
        set +e; wait "$pid"; RCS[$idx]=$?; set -e
    fi
done

fail=0
printf '%-5s %-5s %12s %12s %12s %7s  %s\n' peer exit from_peers from_sn from_origin secs sha256
for i in $(seq 1 "$PEERS"); do
    rc=${RCS[$((i - 1))]}
    summary=$(python3 - "$WORK/peer$i.json" <<'PY'
import json, sys
try:
    j = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
    print(j.get("bytes_from_peers", "?"), j.get("bytes_from_supernode", "?"),
          j.get("bytes_from_origin", "?"), "%.1f" % float(j.get("seconds", 0)))
except Exception:
    print("? ? ? ?")
PY
)
    read -r fp fs fo secs <<<"$summary"
    if [ -f "$WORK/out$i.bin" ] && [ "$(sha256sum "$WORK/out$i.bin" | cut -d' ' -f1)" = "$WANT" ]; then
        ok=ok
    else
        ok=MISMATCH; fail=1
    fi
    [ "$rc" = 0 ] || fail=1
    printf '%-5s %-5s %12s %12s %12s %7s  %s\n' "$i" "$rc" "$fp" "$fs" "$fo" "$secs" "$ok"
    if [ "$rc" != 0 ]; then tail -5 "$WORK/peer$i.log" | sed 's/^/    /'; fi
done
served=$(awk -F'\t' '$1 ~ /demo.bin/ {s += $3} END {print s + 0}' "$WORK/nginx/access.log")
echo "origin served $served bytes for a $((SIZE_MB * 1024 * 1024))-byte file"
if [ "$fail" = 0 ]; then echo "demo: all $PEERS peers have the right file"; else echo "demo: FAILED"; fi
exit "$fail"
