#!/usr/bin/env bash
# One emulated client host, run inside its network namespace by swarm.sh:
#   client.sh MODE DIR DELAY_S
# Writes DIR/start (epoch seconds) right before the download starts and
# DIR/end ("epoch rc") when it is complete.  Environment (from swarm.sh):
# SW_URL, SW_TMO, SW_BUILD, SW_SN, SW_TORRENT, SW_HOOK, SW_HARNESS_PID.
set -u
mode=$1 dir=$2 delay=$3
[ "$delay" = 0 ] || sleep "$delay"
echo "$EPOCHREALTIME" >"$dir/start"
case $mode in
native)
    curl -sS --max-time "$SW_TMO" -o "$dir/out" "$SW_URL" 2>"$dir/client.log"
    rc=$?
    echo "$EPOCHREALTIME $rc" >"$dir/end"
    ;;
dfly|dfly-decentral)
    # Handed to the dfdaemon of this host (same --home: <home>/dfdaemon.sock);
    # in dfly-decentral mode that daemon runs in gossip mode and ignores --node.
    "$SW_BUILD/dfget" -u "$SW_URL" -o "$dir/out" --home "$dir/home" --node "$SW_SN" \
        --timeout "${SW_TMO}s" --json >"$dir/dfget.json" 2>"$dir/client.log"
    rc=$?
    echo "$EPOCHREALTIME $rc" >"$dir/end"
    ;;
bittorrent)
    # aria2c stays in the swarm and seeds until swarm.sh stops it (after every
    # client is done); the hook records the completion time before seeding.
    export DONE_FILE=$dir/end
    exec aria2c --dir="$dir" --enable-dht=false --enable-dht6=false --bt-enable-lpd=false \
        --enable-peer-exchange=true --seed-ratio=0.0 --seed-time=600 --file-allocation=none \
        --disable-ipv6=true --listen-port=6881 --allow-overwrite=true --auto-file-renaming=false \
        --bt-save-metadata=false --on-bt-download-complete="$SW_HOOK" \
        --stop="$SW_TMO" --stop-with-process="$SW_HARNESS_PID" \
        --console-log-level=error --summary-interval=0 --log="$dir/aria2.log" --log-level=notice \
        "$SW_TORRENT" >"$dir/client.log" 2>&1
    ;;
*)
    echo "client.sh: unknown mode $mode" >&2
    echo "$EPOCHREALTIME 2" >"$dir/end"
    ;;
esac
