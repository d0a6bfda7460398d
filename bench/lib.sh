# Shared by the loopback benchmarks (sourced): a work directory removed on
# exit, processes stopped by PID, ephemeral ports, an nginx origin serving
# a random file of SIZE_MIB MiB at $WORK/nginx/www/file.
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
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# start_origin SIZE_MIB: random file, nginx on an ephemeral port; sets NPORT.
start_origin() {
    mkdir -p "$WORK/nginx/www" "$WORK/out"
    chmod 755 "$WORK" "$WORK/nginx" "$WORK/nginx/www"
    head -c $(($1 * 1024 * 1024)) /dev/urandom > "$WORK/nginx/www/file"
    NPORT=$(free_port)
    cat > "$WORK/nginx/nginx.conf" <<CONF
daemon on; pid $WORK/nginx/nginx.pid; error_log $WORK/nginx/error.log;
worker_processes 1;
events { worker_connections 4096; }
http { access_log off; sendfile on; keepalive_requests 1000000;
  server { listen 127.0.0.1:$NPORT; root $WORK/nginx/www; } }
CONF
    nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf"
}
