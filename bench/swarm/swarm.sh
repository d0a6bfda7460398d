#!/usr/bin/env bash
# Swarm benchmark: N emulated hosts on one machine with shaped links.
#
#   bench/swarm/swarm.sh [options]          (as root; not part of the test suite)
#     --n N               clients (default 5)
#     --modes LIST        comma list of native,bittorrent,dfly,dfly-decentral (default native,bittorrent,dfly)
#     --runs R            runs per mode (default 1), modes interleaved per run
#     --size-mib M        file size (default 50), random bytes in tmpfs
#     --origin-mbit R     origin (and supernode host) upload/download (default 100)
#     --client-mbit R     client upload/download (default 10)
#     --hetero            every third client at half speed (up and down)
#     --late              every second client starts --late-delay s later (default 10)
#     --build DIR         dfly binaries (default <repo>/build; built if missing)
#     --out FILE          append TSV rows here (header written if FILE is new); default stdout
#     --details DIR       keep per-client lines and small logs of every run here
#     --sn-args "ARGS"    extra supernode flags (e.g. "--seed-upload-slots 16"), dfly mode
#     --dfly-log-level L  supernode and dfdaemon log level (default warn); with --details,
#                         logs other than warn are kept whole (capped at 20 MB per run)
#     --tag T             label the rows "MODE+T" (variants: other flags, rates)
#     --timeout S         per-run limit (default 12 x T_min + 60, at most 1800)
#     --cleanup-stale     only remove namespaces left by a killed swarm.sh, then exit
#
# Topology: one network namespace per host (origin, supernode host, clients
# c1..cN), each with a veth to a bridge in a switch namespace; addresses in
# 198.18.0.0/15.  A host's upload is shaped by tbf on its end of the veth, its
# download by tbf on the bridge's end: burst max(16 KiB, 4 ms x rate), latency
# 100 ms.  Everything created is removed on exit, failure and Ctrl-C; processes
# are killed by PID after checking they are still ours (inside one of our
# namespaces or a direct child of this script).  Global sysctls changed
# (neigh gc_thresh1/2/3) are restored on exit.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

N=5 MODES=native,bittorrent,dfly RUNS=1 SIZE_MIB=50 ORIGIN_MBIT=100 CLIENT_MBIT=10
HETERO=0 LATE=0 LATE_DELAY=10 BUILD=$ROOT/build OUT= DETAILS= TIMEOUT= CLEAN_ONLY=0 SN_ARGS= TAG= DFLY_LOG=warn
while [ $# -gt 0 ]; do
    case $1 in
    --n) N=$2; shift ;;
    --modes) MODES=$2; shift ;;
    --runs) RUNS=$2; shift ;;
    --size-mib) SIZE_MIB=$2; shift ;;
    --origin-mbit) ORIGIN_MBIT=$2; shift ;;
    --client-mbit) CLIENT_MBIT=$2; shift ;;
    --hetero) HETERO=1 ;;
    --late) LATE=1 ;;
    --late-delay) LATE_DELAY=$2; shift ;;
    --build) BUILD=$2; shift ;;
    --out) OUT=$2; shift ;;
    --details) DETAILS=$2; shift ;;
    --timeout) TIMEOUT=$2; shift ;;
    --sn-args) SN_ARGS=$2; shift ;;
    --tag) TAG=$2; shift ;;
    --dfly-log-level) DFLY_LOG=$2; shift ;;
    --cleanup-stale) CLEAN_ONLY=1 ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed 's/^# \{0,1\}//;$d'; exit 0 ;;
    *) echo "swarm: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
[ "$(id -u)" = 0 ] || { echo "swarm: run as root" >&2; exit 1; }
case $N in ''|*[!0-9]*) echo "swarm: --n must be a number" >&2; exit 2 ;; esac
[ "$N" -ge 1 ] && [ "$N" -le 240 ] || { echo "swarm: 1 <= N <= 240" >&2; exit 2; }
BUILD=$(cd "$BUILD" 2>/dev/null && pwd || echo "$BUILD")
log() { echo "swarm: $*" >&2; }

PFX=dfsb$$            # every namespace this run creates starts with "$PFX-"
SW=$PFX-sw
NSLIST=()             # namespaces created, removed on exit
PIDS=()               # every process started (ip netns exec execs: $! is the program)
SYSCTL_SAVE=()        # "path value" restored on exit
WORK=

# ------------------------------------------------------------------ processes
pstate() {  # PID -> state letter, empty if gone
    local s
    s=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    s=${s##*) }
    echo "${s%% *}"
}
alive() { local s; s=$(pstate "$1"); [ -n "$s" ] && [ "$s" != Z ]; }
ours() {  # PID still ours: inside one of our namespaces, or a direct child of this script
    local pid=$1 s ns
    s=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    s=${s##*) }; s=${s#* }
    [ "${s%% *}" = $$ ] && return 0
    ns=$(ip netns identify "$pid" 2>/dev/null) || return 1
    case $ns in "$PFX"-*) return 0 ;; esac
    return 1
}
descendants() {  # PID -> its descendants (bounded depth 6)
    local depth=${2:-0} c
    [ "$depth" -lt 6 ] || return 0
    for c in $(cat /proc/"$1"/task/*/children 2>/dev/null); do
        echo "$c"; descendants "$c" $((depth + 1))
    done
}
stop_pids() {  # PID... : TERM (with descendants), bounded wait, KILL, reap
    local p all=() i left
    for p in "$@"; do all+=("$p"); all+=($(descendants "$p")); done
    [ ${#all[@]} -gt 0 ] || return 0
    for p in "${all[@]}"; do ours "$p" && kill -TERM "$p" 2>/dev/null; done
    for i in $(seq 1 50); do
        left=0
        for p in "${all[@]}"; do alive "$p" && ours "$p" && { left=1; break; }; done
        [ "$left" = 0 ] && break
        sleep 0.1
    done
    for p in "${all[@]}"; do alive "$p" && ours "$p" && kill -KILL "$p" 2>/dev/null; done
    for p in "$@"; do
        # reap our direct children (never blocks: they are dead or killed by now)
        for i in $(seq 1 20); do alive "$p" || break; sleep 0.05; done
        alive "$p" || wait "$p" 2>/dev/null || true
    done
    return 0
}
sweep_ns() {  # NS: kill whatever still runs inside it
    local p pids
    pids=$(ip netns pids "$1" 2>/dev/null) || return 0
    [ -n "$pids" ] || return 0
    for p in $pids; do kill -KILL "$p" 2>/dev/null || true; done
}
start() {  # NS CMD... : start in NS in the background, remember the PID in LAST_PID
    local ns=$1; shift
    ip netns exec "$ns" "$@" &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

cleanup() {
    local rc=$? ns kv
    trap - EXIT INT TERM
    set +e
    [ ${#PIDS[@]} -gt 0 ] && stop_pids "${PIDS[@]}"
    for ns in "${NSLIST[@]}"; do sweep_ns "$ns"; done
    for ns in "${NSLIST[@]}"; do ip netns del "$ns" 2>/dev/null; done
    for kv in "${SYSCTL_SAVE[@]}"; do echo "${kv#* }" >"${kv%% *}"; done
    [ -n "$WORK" ] && rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ "$CLEAN_ONLY" = 1 ]; then
    for ns in $(ip netns list | awk '{print $1}' | grep '^dfsb[0-9]*-' || true); do
        owner=${ns%%-*}; owner=${owner#dfsb}
        if [ -d "/proc/$owner" ] && grep -q swarm.sh "/proc/$owner/cmdline" 2>/dev/null; then continue; fi
        sweep_ns "$ns"; ip netns del "$ns" && log "removed stale $ns"
    done
    exit 0
fi

set_sysctl() {  # PATH VALUE (global; restored on exit)
    SYSCTL_SAVE+=("$1 $(cat "$1")")
    echo "$2" >"$1"
}

# ------------------------------------------------------------------ binaries
if [[ ",$MODES," == *,dfly,* ]] && { [ ! -x "$BUILD/dfget" ] || [ ! -x "$BUILD/dfdaemon" ] || [ ! -x "$BUILD/supernode" ]; }; then
    log "building dfly into $BUILD"
    cmake -S "$ROOT" -B "$BUILD" >/dev/null && cmake --build "$BUILD" -j2 >/dev/null
fi
for m in ${MODES//,/ }; do
    case $m in
    native) command -v curl nginx >/dev/null || { log "needs curl and nginx"; exit 1; } ;;
    bittorrent) command -v aria2c opentracker >/dev/null || { log "needs aria2c and opentracker (bench/swarm/setup.sh)"; exit 1; } ;;
    dfly) for b in supernode dfdaemon dfget; do [ -x "$BUILD/$b" ] || { log "no $BUILD/$b"; exit 1; }; done ;;
    dfly-decentral) for b in dfdaemon dfget; do [ -x "$BUILD/$b" ] || { log "no $BUILD/$b"; exit 1; }; done ;;
    *) log "unknown mode $m"; exit 2 ;;
    esac
done

# ------------------------------------------------------------------ topology
WORK=$(mktemp -d /dev/shm/dfswarm.XXXXXX)
chmod 755 "$WORK"
F=$((SIZE_MIB * 1024 * 1024))
US=$((ORIGIN_MBIT * 1000000))
ORIGIN_IP=198.18.0.1 SN_IP=198.18.0.2
client_ip() { local k=$(($1 - 1)); echo "198.18.$((1 + k / 250)).$((k % 250 + 1))"; }
client_rate() {  # IDX -> bit/s (hetero: every third client at half speed)
    if [ "$HETERO" = 1 ] && [ $(($1 % 3)) = 0 ]; then echo $((CLIENT_MBIT * 500000)); else echo $((CLIENT_MBIT * 1000000)); fi
}
burst() { local b=$(($1 / 8 * 4 / 1000)); [ "$b" -ge 16384 ] || b=16384; echo "$b"; }

mkns() {
    ip netns add "$1"
    NSLIST+=("$1")
    ip -n "$1" link set lo up
    ip netns exec "$1" sh -c 'sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1' || true
}
add_host() {  # NS PORT IP UP_BPS DOWN_BPS
    local ns=$1 port=$2 ip=$3 up=$4 down=$5
    mkns "$ns"
    ip -n "$SW" link add "$port" type veth peer name eth0 netns "$ns"
    ip -n "$SW" link set "$port" master br0 up
    ip -n "$ns" addr add "$ip/15" dev eth0
    ip -n "$ns" link set eth0 up
    tc -n "$ns" qdisc replace dev eth0 root tbf rate "${up}bit" burst "$(burst "$up")" latency 100ms
    tc -n "$SW" qdisc replace dev "$port" root tbf rate "${down}bit" burst "$(burst "$down")" latency 100ms
}

g=$(( (N + 3) * (N + 3) * 2 )); [ "$g" -ge 4096 ] || g=4096
set_sysctl /proc/sys/net/ipv4/neigh/default/gc_thresh1 "$g"
set_sysctl /proc/sys/net/ipv4/neigh/default/gc_thresh2 $((g * 2))
set_sysctl /proc/sys/net/ipv4/neigh/default/gc_thresh3 $((g * 4))

log "topology: origin + supernode host + $N clients (prefix $PFX, work $WORK)"
mkns "$SW"
ip netns exec "$SW" sh -c 'for k in iptables ip6tables arptables; do sysctl -qw net.bridge.bridge-nf-call-$k=0; done'
ip -n "$SW" link add br0 type bridge stp_state 0 forward_delay 0
ip -n "$SW" link set br0 up
add_host "$PFX-o" h0 "$ORIGIN_IP" "$US" "$US"
add_host "$PFX-s" h1 "$SN_IP" "$US" "$US"
UC_SUM=0 DC_MIN=
for i in $(seq 1 "$N"); do
    r=$(client_rate "$i")
    add_host "$PFX-c$i" "c$i" "$(client_ip "$i")" "$r" "$r"
    UC_SUM=$((UC_SUM + r))
    if [ -z "$DC_MIN" ] || [ "$r" -lt "$DC_MIN" ]; then DC_MIN=$r; fi
done
TMIN=$(python3 "$HERE/swarmlib.py" tmin "$F" "$US" "$N" "$UC_SUM" "$DC_MIN")
if [ -z "$TIMEOUT" ]; then
    TIMEOUT=$(awk -v t="$TMIN" 'BEGIN { s = int(12 * t + 60); if (s > 1800) s = 1800; print s }')
fi

mkdir -p "$WORK/www"
head -c "$F" /dev/urandom >"$WORK/www/file.bin"
chmod 755 "$WORK/www"; chmod 644 "$WORK/www/file.bin"
WANT=$(sha256sum "$WORK/www/file.bin" | cut -d' ' -f1)
log "file $SIZE_MIB MiB sha256 ${WANT:0:16}..., T_min $TMIN s, run timeout $TIMEOUT s"

# ------------------------------------------------------------------ measurement
cpu_snap() { head -1 /proc/stat; }
cpu_pct() {  # "before" "after" -> busy% softirq% of the whole machine
    awk -v a="$1" -v b="$2" 'BEGIN {
        na = split(a, x); split(b, y); t = 0
        for (k = 2; k <= na; k++) { d[k] = y[k] - x[k]; if (k <= 9) t += d[k] }
        if (t <= 0) { print "- -"; exit }
        printf "%.1f %.1f\n", 100 * (t - d[5] - d[6]) / t, 100 * d[8] / t }'
}
child_cpu() {  # CHILD_CPU = CPU seconds (user+sys) of reaped children of this shell
    times >"$WORK/times.txt"   # in this shell: a $(...) subshell would have no children yet
    CHILD_CPU=$(awk 'NR == 2 { s = 0; for (k = 1; k <= 2; k++) { split($k, p, "m"); s += p[1] * 60 + p[2] } printf "%.2f\n", s }' \
        "$WORK/times.txt")
}
port_tx() {  # switch port -> bytes the attached host sent (= rx on the bridge side)
    ip netns exec "$SW" cat "/sys/class/net/$1/statistics/rx_bytes"
}
wait_http() {  # NS URL TRIES
    local i
    for i in $(seq 1 "$3"); do
        ip netns exec "$1" curl -s -o /dev/null --max-time 1 "$2" && return 0
        sleep 0.2
    done
    return 1
}

# ------------------------------------------------------------------ servers
nginx_start() {
    mkdir -p "$WORK/nginx/tmp"
    : >"$WORK/nginx/access.log"
    cat >"$WORK/nginx/nginx.conf" <<NGX
user root root;
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 8192;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log;
events { worker_connections 4096; }
http {
    default_type application/octet-stream;
    sendfile on;
    client_body_temp_path $WORK/nginx/tmp;
    proxy_temp_path $WORK/nginx/tmp;
    fastcgi_temp_path $WORK/nginx/tmp;
    uwsgi_temp_path $WORK/nginx/tmp;
    scgi_temp_path $WORK/nginx/tmp;
    log_format bytes "\$remote_addr\\t\$status\\t\$body_bytes_sent\\t\$http_range";
    access_log $WORK/nginx/access.log bytes;
    server { listen $ORIGIN_IP:80; root $WORK/www; }
}
NGX
    start "$PFX-o" nginx -p "$WORK/nginx/" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log"
    NGINX_PID=$LAST_PID
    # probed from the last client: also checks the path through the bridge
    wait_http "$PFX-c$N" "http://$ORIGIN_IP/" 50 || { log "nginx did not start"; cat "$WORK/nginx/error.log" >&2; return 1; }
    : >"$WORK/nginx/access.log"   # drop the probe (truncation is safe: nginx appends)
}
nginx_bytes() { awk -F'\t' '{ s += $3 } END { printf "%.0f\n", s }' "$WORK/nginx/access.log"; }

bt_start() {
    local ot=$WORK/ot i c
    mkdir -p "$ot"
    chmod 755 "$ot"
    INFOHASH=$(python3 "$HERE/swarmlib.py" mktorrent "$WORK/www/file.bin" "http://$ORIGIN_IP:6969/announce" \
        262144 "$WORK/file.torrent")
    chmod 644 "$WORK/file.torrent"
    echo "$INFOHASH" >"$ot/whitelist"
    chmod 644 "$ot/whitelist"
    cat >"$ot/opentracker.conf" <<OT
listen.tcp $ORIGIN_IP:6969
tracker.rootdir $ot
tracker.user nobody
access.whitelist whitelist
OT
    start "$PFX-o" opentracker -f "$ot/opentracker.conf"
    OT_PID=$LAST_PID
    cat >"$WORK/bt-hook.sh" <<'HOOK'
#!/bin/sh
d=$(date +%s.%N)
echo "$d 0" >"$DONE_FILE.tmp" && mv "$DONE_FILE.tmp" "$DONE_FILE"
HOOK
    chmod 755 "$WORK/bt-hook.sh"
    mkdir -p "$WORK/seed"
    start "$PFX-o" aria2c --dir="$WORK/www" --enable-dht=false --enable-dht6=false --bt-enable-lpd=false \
        --enable-peer-exchange=true --seed-ratio=0.0 --seed-time=600 --file-allocation=none \
        --bt-seed-unverified=true --check-integrity=false --disable-ipv6=true --listen-port=6881 \
        --enable-rpc=true --rpc-listen-port=6800 --rpc-listen-all=false \
        --stop="$((TIMEOUT + 120))" --stop-with-process=$$ --bt-save-metadata=false \
        --console-log-level=error --summary-interval=0 --log="$WORK/seed/aria2.log" --log-level=notice \
        "$WORK/file.torrent" >"$WORK/seed/console.log" 2>&1
    SEED_PID=$LAST_PID
    for i in $(seq 1 150); do
        c=$(ip netns exec "$PFX-o" python3 "$HERE/swarmlib.py" scrape "http://$ORIGIN_IP:6969/scrape" "$INFOHASH")
        [ "${c:-0}" -ge 1 ] && return 0
        alive "$OT_PID" || { log "opentracker exited"; return 1; }
        sleep 0.2
    done
    log "the seeder never registered with the tracker"
    return 1
}

sn_start() {
    mkdir -p "$WORK/sn"
    start "$PFX-s" "$BUILD/supernode" --listen "$SN_IP:8002" --data-dir "$WORK/sn" \
        --advertise-ip "$SN_IP" --log-level "$DFLY_LOG" $SN_ARGS 2>"$WORK/supernode.log"
    SN_PID=$LAST_PID
    wait_http "$PFX-s" "http://$SN_IP:8002/healthz" 100 || { log "supernode did not start"; tail "$WORK/supernode.log" >&2; return 1; }
}
wait_daemons() {  # every client's dfdaemon has its control socket
    local i
    for i in $(seq 1 "$N"); do
        for _ in $(seq 1 100); do [ -S "$WORK/c$i/home/dfdaemon.sock" ] && break; sleep 0.1; done
        [ -S "$WORK/c$i/home/dfdaemon.sock" ] || { log "dfdaemon c$i did not start"; tail "$WORK/c$i/dfdaemon.log" >&2; return 1; }
    done
}
daemons_start() {
    local i c
    DAEMON_PIDS=()
    for i in $(seq 1 "$N"); do
        c=$WORK/c$i
        mkdir -p "$c/home"
        start "$PFX-c$i" "$BUILD/dfdaemon" --home "$c/home" --node "$SN_IP:8002" \
            --advertise-ip "$(client_ip "$i")" --log-level "$DFLY_LOG" 2>"$c/dfdaemon.log"
        DAEMON_PIDS+=("$LAST_PID")
    done
    wait_daemons
}

# ------------------------------------------------------------------ one run
# Decentralized dfly: a gossip-mode dfdaemon on every client (no supernode),
# each joining the first two clients; the rendezvous owner of the task reads
# the origin (nginx, as in dfly mode).  The run starts once every daemon sees
# all N members alive (or after 30 s, logged).
mode_start_dfly_decentral() {
    local i c join
    DAEMON_PIDS=()
    join="$(client_ip 1):7946"
    [ "$N" -ge 2 ] && join="$join,$(client_ip 2):7946"
    for i in $(seq 1 "$N"); do
        c=$WORK/c$i
        mkdir -p "$c/home"
        start "$PFX-c$i" "$BUILD/dfdaemon" --home "$c/home" --mode gossip \
            --gossip-listen "$(client_ip "$i"):7946" --join "$join" --gossip-name "c$i" \
            --advertise-ip "$(client_ip "$i")" --log-level "$DFLY_LOG" 2>"$c/dfdaemon.log"
        DAEMON_PIDS+=("$LAST_PID")
    done
    wait_daemons
    local t0=$SECONDS alive
    while [ $((SECONDS - t0)) -lt 30 ]; do
        alive=0
        for i in $(seq 1 "$N"); do
            v=$(ip netns exec "$PFX-c$i" python3 "$HERE/swarmlib.py" metrics http://127.0.0.1:65001/metrics \
                'dfly_dfdaemon_gossip_members{state="alive"}' | awk '{ print int($NF) }')
            [ "${v:-0}" -ge "$N" ] && alive=$((alive + 1))
        done
        [ "$alive" = "$N" ] && { log "gossip: all $N daemons see $N members after $((SECONDS - t0)) s"; return 0; }
        sleep 0.5
    done
    log "gossip: membership not converged after 30 s ($alive/$N daemons see all); starting anyway"
}

run_one() {  # MODE RUN
    local mode=$1 run=$2 i c pids=() delay t0 cpu0 cpu1 pc0 pc1 w0 w1 done_n deadline now
    local origin_bytes=- seed_bytes=- peer_bytes=- wall0 wall1 ok tag rc
    tag="$mode${TAG:++$TAG}-n$N-r$run"
    child_cpu; pc0=$CHILD_CPU
    rm -rf "$WORK"/c[0-9]*
    for i in $(seq 1 "$N"); do mkdir -p "$WORK/c$i"; done
    case $mode in
    native) nginx_start ;;
    bittorrent) bt_start ;;
    dfly) nginx_start && sn_start && daemons_start ;;
    dfly-decentral) nginx_start && mode_start_dfly_decentral ;;
    esac
    export SW_URL="http://$ORIGIN_IP/file.bin" SW_TMO=$TIMEOUT SW_BUILD=$BUILD SW_SN="$SN_IP:8002" \
        SW_TORRENT="$WORK/file.torrent" SW_HOOK="$WORK/bt-hook.sh" SW_HARNESS_PID=$$
    w0=$(port_tx h0)
    cpu0=$(cpu_snap)
    wall0=$EPOCHREALTIME
    for i in $(seq 1 "$N"); do
        delay=0
        [ "$LATE" = 1 ] && [ $((i % 2)) = 0 ] && delay=$LATE_DELAY
        start "$PFX-c$i" bash "$HERE/client.sh" "$mode" "$WORK/c$i" "$delay"
        pids+=("$LAST_PID")
    done
    deadline=$(( ${wall0%.*} + TIMEOUT + LATE * LATE_DELAY ))
    for _ in $(seq 1 $(( (TIMEOUT + LATE * LATE_DELAY) * 4 + 40 ))); do
        done_n=0
        for i in $(seq 1 "$N"); do
            if [ -f "$WORK/c$i/end" ]; then done_n=$((done_n + 1))
            elif ! alive "${pids[$((i - 1))]}"; then done_n=$((done_n + 1)); fi   # died without finishing
        done
        [ "$done_n" = "$N" ] && break
        now=$EPOCHREALTIME
        [ "${now%.*}" -lt "$deadline" ] || { log "$tag: timeout after $TIMEOUT s"; break; }
        sleep 0.25
    done
    cpu1=$(cpu_snap)
    wall1=$EPOCHREALTIME
    w1=$(port_tx h0)
    # mode figures that need the processes alive
    case $mode in
    bittorrent) origin_bytes=$(ip netns exec "$PFX-o" python3 "$HERE/swarmlib.py" aria2-upload http://127.0.0.1:6800/jsonrpc) ;;
    dfly)
        ip netns exec "$PFX-s" python3 "$HERE/swarmlib.py" metrics "http://$SN_IP:8002/metrics" \
            dfly_supernode_origin_bytes_total,dfly_supernode_seed_bytes_served_total,dfly_supernode_pieces_scheduled_total,dfly_supernode_slow_reports_total,dfly_supernode_errors_total \
            >"$WORK/sn-metrics.txt" || true
        seed_bytes=$(awk '/^dfly_supernode_seed_bytes_served_total/ { printf "%.0f", $NF }' "$WORK/sn-metrics.txt")
        ;;
    esac
    stop_pids "${pids[@]}"
    case $mode in
    native) stop_pids "$NGINX_PID"; origin_bytes=$(nginx_bytes) ;;
    bittorrent) stop_pids "$SEED_PID" "$OT_PID" ;;
    dfly) stop_pids "${DAEMON_PIDS[@]}" "$SN_PID" "$NGINX_PID"; origin_bytes=$(nginx_bytes) ;;
    dfly-decentral) stop_pids "${DAEMON_PIDS[@]}" "$NGINX_PID"; origin_bytes=$(nginx_bytes) ;;
    esac
    child_cpu; pc1=$CHILD_CPU
    # per-client lines: idx secs sha rc from_peers from_supernode from_origin back_source
    : >"$WORK/clients.txt"
    for i in $(seq 1 "$N"); do
        c=$WORK/c$i
        local out=$c/out secs=- rcv=- extra="- - - -"
        [ "$mode" = bittorrent ] && out=$c/file.bin
        if [ -f "$c/end" ] && [ -f "$c/start" ]; then
            read -r t1 rcv <"$c/end"
            [ "$rcv" = 0 ] && secs=$(awk -v a="$(cat "$c/start")" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
        fi
        ok=bad
        [ -f "$out" ] && [ "$(sha256sum "$out" | cut -d' ' -f1)" = "$WANT" ] && ok=ok
        [ "$ok" = ok ] || secs=-
        if [[ $mode == dfly* ]] && [ -s "$c/dfget.json" ]; then
            extra=$(python3 -c 'import json,sys
j=json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
print(j.get("bytes_from_peers","-"),j.get("bytes_from_supernode","-"),j.get("bytes_from_origin","-"),str(j.get("back_source","-")).lower())' "$c/dfget.json" 2>/dev/null || echo "- - - -")
        fi
        echo "$i $secs $ok $rcv $(client_rate "$i") $extra" >>"$WORK/clients.txt"
        rm -f "$out"
    done
    if [[ $mode == dfly* ]]; then
        peer_bytes=$(awk '$6 ~ /^[0-9]+$/ { s += $6 } END { printf "%.0f", s }' "$WORK/clients.txt")
    fi
    read -r busy sirq <<<"$(cpu_pct "$cpu0" "$cpu1")"
    if [ -n "$DETAILS" ]; then
        mkdir -p "$DETAILS"
        { echo "# idx secs sha rc rate_bps from_peers from_supernode from_origin back_source"; cat "$WORK/clients.txt"; } >"$DETAILS/$tag.clients"
        [ "$mode" = dfly ] && cp "$WORK/sn-metrics.txt" "$DETAILS/$tag.metrics" 2>/dev/null
        for i in $(seq 1 "$N"); do
            for f in client.log dfdaemon.log; do
                [ -s "$WORK/c$i/$f" ] && { echo "== c$i $f"; tail -5 "$WORK/c$i/$f"; }
            done
        done >"$DETAILS/$tag.logs" 2>/dev/null
        [ "$mode" = dfly ] && tail -50 "$WORK/supernode.log" >"$DETAILS/$tag.supernode.log" 2>/dev/null
        if [[ $mode == dfly* ]] && [ "$DFLY_LOG" != warn ]; then
            { for i in $(seq 1 "$N"); do sed "s/^/c$i /" "$WORK/c$i/dfdaemon.log"; done
              if [ "$mode" = dfly ]; then sed 's/^/sn /' "$WORK/supernode.log"; fi; } 2>/dev/null |
                head -c 20000000 >"$DETAILS/$tag.fulllogs"
        fi
    fi
    python3 "$HERE/swarmlib.py" row mode="$mode${TAG:++$TAG}" n="$N" run="$run" file_bytes="$F" \
        origin_mbit="$ORIGIN_MBIT" client_mbit="$CLIENT_MBIT" hetero="$HETERO" late="$LATE" \
        t_min_s="$TMIN" origin_bytes="$origin_bytes" origin_wire_bytes=$((w1 - w0)) \
        seed_bytes="${seed_bytes:--}" peer_bytes="$peer_bytes" cpu_busy_pct="$busy" cpu_softirq_pct="$sirq" \
        proc_cpu_s="$(awk -v a="$pc0" -v b="$pc1" 'BEGIN { printf "%.1f", b - a }')" \
        wall_s="$(awk -v a="$wall0" -v b="$wall1" 'BEGIN { printf "%.1f", b - a }')" \
        CLIENTS="$WORK/clients.txt" >"$WORK/row.tsv"
    if [ -n "$OUT" ]; then
        [ -s "$OUT" ] || python3 "$HERE/swarmlib.py" row HEADER=1 >"$OUT"
        cat "$WORK/row.tsv" >>"$OUT"
    else
        cat "$WORK/row.tsv"
    fi
    log "$(cut -f1-3,10,13,14,17,18,19,20,25 "$WORK/row.tsv" | tr '\t' ' ')"
    rm -rf "$WORK"/c[0-9]* "$WORK/sn" "$WORK/seed" "$WORK/ot"
}

[ -n "$OUT" ] || python3 "$HERE/swarmlib.py" row HEADER=1
for run in $(seq 1 "$RUNS"); do
    for mode in ${MODES//,/ }; do
        log "run $run mode $mode N=$N"
        run_one "$mode" "$run"
    done
done
