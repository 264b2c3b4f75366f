#!/usr/bin/env bash
# Docker Engines for the integration suite, built from the Go module proxy
# and cached, as Consul and Traefik are: Debian has only 20.10, and no
# release download is reachable here. Prints the directory holding dockerd
# and docker-proxy on stdout; build output goes to stderr. Recipes:
# DESIGN.md "What was found to build here".
#
#   build-docker.sh [VERSION]     (default 28.5.2)
#
# 28.x is github.com/docker/docker (its module file is vendor.mod) and runs
# with Debian's containerd and runc (installed with docker.io). 29.x is the
# daemon module github.com/moby/moby/v2 (29 is v2.0.0-beta.24 there); it
# needs a runc newer than bookworm's 1.1.5, so runc v1.5.3 is built next
# to it (cgo, libseccomp-dev) and the harness makes it dockerd's default
# runtime.
set -euo pipefail
version=${1:-${DOCKER28_VERSION:-28.5.2}}
cache="${V6REG_CACHE:-/var/cache/v6reg}"
out="$cache/dockerd-$version"
if [ -x "$out/dockerd" ] && [ -x "$out/docker-proxy" ] && "$out/dockerd" --version >/dev/null 2>&1 &&
  { [ "${version#29}" = "$version" ] || [ -x "$out/runc" ]; }; then
  echo "$out"; exit 0
fi
mkdir -p "$out"
work=$(mktemp -d)
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
export GOFLAGS=-mod=mod GOTOOLCHAIN=local
case $version in
29*)
  # The daemon module's tag for 29, and the runc it needs.
  moby=${DOCKER29_MODULE_VERSION:-v2.0.0-beta.24}
  runc=${RUNC_VERSION:-v1.5.3}
  dir=$(cd "$work" && go mod download -json "github.com/moby/moby/v2@$moby" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  [ -n "$dir" ] || { echo "build-docker: github.com/moby/moby/v2@$moby not on the module proxy" >&2; exit 1; }
  cp -r "$dir" "$work/src"
  chmod -R u+w "$work/src"
  ldflags="-s -w -X github.com/moby/moby/v2/dockerversion.Version=$version -X github.com/moby/moby/v2/dockerversion.GitCommit=v6reg-proxy-build"
  (cd "$work/src" && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$out/dockerd.tmp" ./cmd/dockerd >&2)
  (cd "$work/src" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$out/docker-proxy.tmp" ./cmd/docker-proxy >&2)
  if [ ! -e /usr/include/seccomp.h ]; then
    [ "$(id -u)" = 0 ] || { echo "build-docker: runc needs libseccomp-dev: apt-get install libseccomp-dev" >&2; exit 1; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libseccomp-dev >&2
  fi
  rdir=$(cd "$work" && go mod download -json "github.com/opencontainers/runc@$runc" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  [ -n "$rdir" ] || { echo "build-docker: github.com/opencontainers/runc@$runc not on the module proxy" >&2; exit 1; }
  cp -r "$rdir" "$work/runc"
  chmod -R u+w "$work/runc"
  (cd "$work/runc" && CGO_ENABLED=1 go build -trimpath -tags seccomp -ldflags "-s -w -X main.version=${runc#v}" -o "$out/runc.tmp" . >&2)
  mv "$out/runc.tmp" "$out/runc"
  mv "$out/docker-proxy.tmp" "$out/docker-proxy"
  mv "$out/dockerd.tmp" "$out/dockerd"
  echo "$out"
  exit 0
  ;;
esac
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
