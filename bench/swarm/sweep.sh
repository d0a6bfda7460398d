#!/usr/bin/env bash
# Sweep the swarm benchmark over N for each mode, then chart it.
#
#   bench/swarm/sweep.sh [--ns "1 5 10 20 40 80"] [--modes native,bittorrent,dfly]
#                        [--runs R] [--out DIR] [--build DIR] [--hetero] [--late]
#                        [any other swarm.sh option, passed through]
#
# One topology and one file per N (swarm.sh builds both); the modes run on it
# in turn.  Rows go to DIR/results.tsv, per-client lines to DIR/details/, the
# chart to DIR/swarm.png and DIR/swarm.svg.  Default DIR: bench/swarm/results.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
NS="1 5 10 20 40 80" OUTDIR=$HERE/results PASS=()
while [ $# -gt 0 ]; do
    case $1 in
    --ns) NS=$2; shift ;;
    --out) OUTDIR=$2; shift ;;
    --hetero|--late) PASS+=("$1") ;;
    *) PASS+=("$1" "$2"); shift ;;
    esac
    shift
done
mkdir -p "$OUTDIR/details"
for n in $NS; do
    echo "sweep: N=$n" >&2
    # a failed N (e.g. timeout of one mode) is recorded and the sweep goes on
    bash "$HERE/swarm.sh" --n "$n" --out "$OUTDIR/results.tsv" --details "$OUTDIR/details" "${PASS[@]}" ||
        echo "sweep: N=$n failed (rc $?)" >&2
done
bash "$HERE/chart.sh" "$OUTDIR/results.tsv" "$OUTDIR/swarm"
