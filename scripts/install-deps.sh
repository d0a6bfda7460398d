#!/usr/bin/env bash
# Installs the build and test dependencies of dfly on Debian 12.
# Idempotent: does nothing (not even `apt-get update`) when everything is there.
# Never leaves nginx or dockerd running as a service: the tests start their own.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

BUILD_PKGS=(build-essential cmake pkg-config clang libevent-dev libcurl4-openssl-dev libssl-dev
            libmsgpack-dev zlib1g-dev libyaml-dev libjansson-dev libcmocka-dev libc-ares-dev)
# docker-registry, skopeo, containerd (ctr), openssl and apache2-utils (htpasswd -B): the
# registry-mirror tests (they run their own containerd; the packaged service is not needed).
# podman: pulls through a registries.conf mirror entry (its own root and vfs storage).
# docker.io: a private dockerd with registry-mirrors (the test starts its own; the packaged
# service is never started: see policy-rc.d below).
# serf (0.9.4, Debian 12): the gossip interop test against a real Serf agent.
# dnsmasq-base (the binary only, no service): the gossip DNS discovery test's DNS server.
TEST_PKGS=(curl python3 iproute2 procps docker-registry skopeo containerd openssl apache2-utils serf
           podman docker.io dnsmasq-base)

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
else
    SUDO=
fi

missing=()
for p in "${BUILD_PKGS[@]}" "${TEST_PKGS[@]}"; do
    installed "$p" || missing+=("$p")
done
# nginx: any of nginx-light / nginx / nginx-core / nginx-full providing the binary will do.
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
    missing+=(__nginx__)
fi

if [ ${#missing[@]} -eq 0 ]; then
    echo "install-deps: all dependencies present"
    exit 0
fi
echo "install-deps: missing: ${missing[*]}"

# Keep package scripts from starting services (nginx, docker) while installing.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod 755 "$policy"
    created_policy=1
fi
cleanup() { if [ "$created_policy" = 1 ]; then $SUDO rm -f "$policy"; fi; }
trap cleanup EXIT

$SUDO apt-get update -q
pkgs=()
for p in "${missing[@]}"; do
    if [ "$p" = __nginx__ ]; then
        if apt-cache show nginx-light >/dev/null 2>&1; then pkgs+=(nginx-light); else pkgs+=(nginx); fi
    else
        pkgs+=("$p")
    fi
done
$SUDO apt-get install -y -q --no-install-recommends "${pkgs[@]}"

# If a service manager started nginx anyway, stop only that service (by its pid file).
if [ -s /run/nginx.pid ] && command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet nginx 2>/dev/null; then
    $SUDO systemctl stop nginx || true
    $SUDO systemctl disable nginx >/dev/null 2>&1 || true
fi
echo "install-deps: done"
