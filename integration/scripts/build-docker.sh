#!/usr/bin/env bash
# Docker Engine 28 (dockerd and docker-proxy) for the integration suite,
# built from the Go module proxy and cached, as Consul and Traefik are:
# Debian has only 20.10, and no release download is reachable here. It
# runs with Debian's containerd and runc (installed with docker.io).
# Prints the directory holding dockerd and docker-proxy on stdout; build
# output goes to stderr. Recipe: DESIGN.md "What was found to build here".
#
#   build-docker.sh [VERSION]     (default 28.5.2)
set -euo pipefail
version=${1:-${DOCKER28_VERSION:-28.5.2}}
cache="${V6REG_CACHE:-/var/cache/v6reg}"
out="$cache/dockerd-$version"
if [ -x "$out/dockerd" ] && [ -x "$out/docker-proxy" ] && "$out/dockerd" --version >/dev/null 2>&1; then
  echo "$out"; exit 0
fi
mkdir -p "$out"
work=$(mktemp -d)
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
export GOFLAGS=-mod=mod GOTOOLCHAIN=local
module=github.com/docker/docker
dir=$(cd "$work" && go mod download -json "$module@v$version+incompatible" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
[ -n "$dir" ] || { echo "build-docker: $module@v$version+incompatible not on the module proxy" >&2; exit 1; }
cp -r "$dir" "$work/src"
chmod -R u+w "$work/src"
cd "$work/src"
# The engine's repository keeps its module file as vendor.mod (it is not
# a Go module at this tag); with the vendor tree gone, Go resolves every
# dependency from the proxy at the versions vendor.mod pins.
mv vendor.mod go.mod
mv vendor.sum go.sum
rm -rf vendor
tags="exclude_graphdriver_btrfs exclude_graphdriver_devicemapper"
ldflags="-s -w -X github.com/docker/docker/dockerversion.Version=$version -X github.com/docker/docker/dockerversion.GitCommit=v6reg-proxy-build"
CGO_ENABLED=0 go build -trimpath -tags "$tags" -ldflags "$ldflags" -o "$out/dockerd.tmp" ./cmd/dockerd >&2
CGO_ENABLED=0 go build -trimpath -tags "$tags" -ldflags "-s -w" -o "$out/docker-proxy.tmp" ./cmd/docker-proxy >&2
mv "$out/docker-proxy.tmp" "$out/docker-proxy"
mv "$out/dockerd.tmp" "$out/dockerd"
echo "$out"
