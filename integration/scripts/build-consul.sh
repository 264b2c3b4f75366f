#!/usr/bin/env bash
# Builds a Consul binary from the Go module proxy (no release downloads are
# reachable here) and caches it, so a second run on the same machine is free.
# Recipe: DESIGN.md "What was found to build here".
set -euo pipefail
version="${CONSUL_VERSION:-1.20.6}"
cache="${V6REG_CACHE:-/var/cache/v6reg}"
out="$cache/consul-$version/consul"
if [ -x "$out" ] && "$out" version >/dev/null 2>&1; then
  echo "$out"; exit 0
fi
mkdir -p "$cache/consul-$version"
work=$(mktemp -d)
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
export GOFLAGS=-mod=mod GOTOOLCHAIN=local
dir=$(cd "$work" && go mod download -json "github.com/hashicorp/consul@v$version" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
cp -r "$dir" "$work/src"
chmod -R u+w "$work/src"
cd "$work/src"
# Drop the replace block that points at ./api, ./sdk, ... : those submodules
# then resolve to the versions go.mod requires, from the proxy.
awk 'BEGIN{skip=0} /^replace \(/{skip=1; next} skip && /^\)/{skip=0; next} !skip' go.mod > go.mod.new
mv go.mod.new go.mod
sed -i '/^replace .* => \.\//d' go.mod
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$out.tmp" . >&2
mv "$out.tmp" "$out"
echo "$out"
