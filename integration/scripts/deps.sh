#!/usr/bin/env bash
# Installs what `make test` and `make demo` need on a fresh Debian machine
# (root): dockerd, nft (read-only in tests), busybox-static for the test
# image, dig, and Consul, Traefik and Docker Engine 28 built from the Go
# module proxy (cached).
set -euo pipefail
need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v nft >/dev/null || need+=(nftables)
[ -x /bin/busybox ] || need+=(busybox-static)
command -v dig >/dev/null || need+=(dnsutils)
command -v rpm >/dev/null || need+=(rpm)
command -v ip >/dev/null || need+=(iproute2)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "deps: missing ${need[*]}; run as root (apt-get install ${need[*]})" >&2
    exit 1
  fi
  echo "deps: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi
# br_netfilter makes bridged container-to-container IPv6 cross the
# forward hook (see firewall/README.md); dockerd loads it too.
modprobe br_netfilter 2>/dev/null || true
"$(dirname "$0")/build-consul.sh" >/dev/null
# Traefik, for the check that its Consul Catalog provider routes to the
# container (about 6 minutes on 2 idle cores the first time, then cached).
"$(dirname "$0")/build-traefik.sh" >/dev/null
# Docker Engine 28 (dockerd, docker-proxy), for `make test`'s second run
# of the engine-dependent tests (about 6-10 minutes the first time, then
# cached); it runs with the containerd and runc of Debian's docker.io.
# `make demo` runs on Debian's 20.10 and skips it (V6REG_DEPS_DOCKER28=0).
if [ "${V6REG_DEPS_DOCKER28:-1}" != 0 ]; then
  "$(dirname "$0")/build-docker.sh" >/dev/null
fi
