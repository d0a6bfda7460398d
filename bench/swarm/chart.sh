#!/usr/bin/env bash
# Chart swarm benchmark results: mean (solid) and last client's (dashed)
# completion time vs N for every mode, the fluid bound T_min as a line.  Rows with the same (mode, N) are averaged.
#
#   bench/swarm/chart.sh RESULTS.tsv OUT_PREFIX [TITLE]   -> OUT_PREFIX.png, OUT_PREFIX.svg
set -euo pipefail
TSV=$1 PREFIX=$2
TITLE=${3:-"Swarm benchmark: completion time vs N (mean, last client)"}
command -v gnuplot >/dev/null || { echo "chart: needs gnuplot (bench/swarm/setup.sh)" >&2; exit 1; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
# per mode: "N mean_s max_s" averaged over runs; tmin: "N t_min_s"
awk -F'\t' -v d="$TMP" 'NR > 1 && $1 != "mode" {
        k = $1 SUBSEP $2; s[k] += $10; mx[k] += $13; c[k]++; m[$1] = 1; t[$2] = $9 }
    END {
        for (k in s) { split(k, p, SUBSEP); printf "%d %.3f %.3f\n", p[2], s[k] / c[k], mx[k] / c[k] >> (d "/" p[1] ".dat") }
        for (n in t) printf "%d %s\n", n, t[n] >> (d "/tmin.dat")
        for (x in m) print x > (d "/modes") }' "$TSV"
[ -s "$TMP/modes" ] || { echo "chart: no rows in $TSV" >&2; exit 1; }
for f in "$TMP"/*.dat; do sort -n -o "$f" "$f"; done
plot="'$TMP/tmin.dat' using 1:2 with lines lw 2 dt 2 lc rgb 'black' title 'fluid bound T_{min}'"
# tbf meters Ethernet frames: TCP goodput is 95.6 % of the set rate, so a perfect transfer needs T_min / 0.956
plot="$plot, '$TMP/tmin.dat' using 1:(\$2 / 0.956) with lines lw 1 dt 3 lc rgb 'gray40' title 'T_{min} / 0.956 (header overhead)'"
for mc in native:#1f77b4 bittorrent:#d62728 dfly:#2ca02c dfly-decentral:#9467bd; do
    mode=${mc%%:*} color=${mc#*:}
    [ -s "$TMP/$mode.dat" ] || continue
    plot="$plot, '$TMP/$mode.dat' using 1:2 with linespoints lw 2 pt 7 lc rgb '$color' title '$mode (mean)'"
    plot="$plot, '$TMP/$mode.dat' using 1:3 with linespoints lw 1 dt 2 pt 6 lc rgb '$color' title '$mode (last client)'"
done
for term in "pngcairo size 900,560 font 'sans,11'" "svg size 900,560 dynamic font 'sans,11'"; do
    ext=png; [[ $term == svg* ]] && ext=svg
    gnuplot <<GP
set terminal $term
set output '$PREFIX.$ext'
set title "$TITLE"
set xlabel 'N (clients)'
set ylabel 'completion time (s)'
set logscale x 2
set xrange [0.8:110]
set logscale y 2
set grid
set key top left
plot $plot
GP
done
echo "chart: $PREFIX.png $PREFIX.svg"
