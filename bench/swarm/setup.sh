#!/usr/bin/env bash
# Installs what the swarm benchmark needs besides dfly's own dependencies
# (scripts/install-deps.sh): aria2 + opentracker (BitTorrent mode), gnuplot (chart).
# Debian 12, as root.  Idempotent.  Never leaves a service running: policy-rc.d
# keeps package scripts from starting opentracker, and the service is stopped if
# a service manager started it anyway.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
[ "$(id -u)" = 0 ] || { echo "setup: run as root" >&2; exit 1; }

bash "$ROOT/scripts/install-deps.sh"

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
missing=()
for p in aria2 opentracker gnuplot-nox iproute2 procps python3 curl; do
    installed "$p" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then echo "setup: all present"; exit 0; fi
echo "setup: installing ${missing[*]}"

policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod 755 "$policy"; created_policy=1
fi
cleanup() { if [ "$created_policy" = 1 ]; then rm -f "$policy"; fi; }
trap cleanup EXIT
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet opentracker 2>/dev/null; then
    systemctl stop opentracker || true
    systemctl disable opentracker >/dev/null 2>&1 || true
fi
echo "setup: done"
