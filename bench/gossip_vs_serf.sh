#!/usr/bin/env bash
# Our gossip node against real `serf agent`s on loopback: time for a user
# event to reach every member, time for every member to mark a SIGKILLed
# node failed (N = 10 and 30 of each), CPU and RSS per node at the largest
# N.  Details and method: bench/gossip_vs_serf.py.  Results: docs/BENCHMARKS.md.
#
#   bench/gossip_vs_serf.sh [BUILD_DIR] [--ns "10 30"] [--rounds 5] [--event-rounds K] [--idle 20] [--burst 25]
#
# Needs Debian's serf and python3-msgpack (Serf's RPC is msgpack), and the
# build's tests/gossip_driver.  Every process is stopped by PID on exit.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${1:-$ROOT/build}
shift || true
[ -x "$BIN/tests/gossip_driver" ] || { echo "no $BIN/tests/gossip_driver: build first"; exit 1; }
/usr/bin/python3 -c 'import msgpack' 2>/dev/null || { echo "needs python3-msgpack (apt-get install python3-msgpack)"; exit 1; }
exec /usr/bin/python3 "$ROOT/bench/gossip_vs_serf.py" --driver "$BIN/tests/gossip_driver" "$@"
