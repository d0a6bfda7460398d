#!/usr/bin/env bash
# The registry mirror on loopback: N skopeo clients pulling one image (random
# layers, 100 + 30 + 15 MiB by default) straight from a docker-registry
# against each through its own dfdaemon (fresh supernode and daemons every
# round), and the time to the first byte of the largest layer through a cold
# dfdaemon against the registry.  Prints every round, then medians (min-max)
# and the ratios dfly / direct for wall time and for the bytes the registry
# served.  The work is done by bench/mirror.py with the integration tests'
# harness (tests/integration/dflytest.py, mirrorlib.py), which stops every
# process it started by PID on exit, failure and Ctrl-C.
#
#   bench/mirror.sh [BUILD_DIR] [ROUNDS] [NS] [TTFB_ROUNDS] [LAYERS_MIB]
#   e.g. bench/mirror.sh build 3 "1 4 8" 5 "100 30 15"
#
# Needs docker-registry, skopeo and curl (scripts/install-deps.sh).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$(cd "${1:-$ROOT/build}" && pwd)
export DF_BIN_DIR=$BIN DF_SOURCE_DIR=$ROOT
exec python3 "$ROOT/bench/mirror.py" --rounds "${2:-3}" --ns "${3:-1 4 8}" \
    --ttfb-rounds "${4:-5}" --layers-mib "${5:-100 30 15}"
