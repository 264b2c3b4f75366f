#!/usr/bin/env bash
# Builds a Go program from the Go module proxy (no release downloads are
# reachable here) and caches the binary, so a second run on the same
# machine is free. Prints the binary's path on stdout; build output goes to
# stderr. Recipe: DESIGN.md "What was found to build here".
#
#   build-from-proxy.sh NAME MODULE VERSION PACKAGE drop|keep
#
# drop removes the module's replace block (Consul's points at ./api, ./sdk
# and friends, which then resolve to the versions its go.mod requires);
# keep leaves it (Traefik's points at forks that are on the proxy).
set -euo pipefail
name=$1 module=$2 version=$3 pkg=$4 replaces=$5
cache="${V6REG_CACHE:-/var/cache/v6reg}"
out="$cache/$name-$version/$name"
if [ -x "$out" ] && "$out" version >/dev/null 2>&1; then
  echo "$out"; exit 0
fi
mkdir -p "$cache/$name-$version"
work=$(mktemp -d)
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
export GOFLAGS=-mod=mod GOTOOLCHAIN=local
dir=$(cd "$work" && go mod download -json "$module@v$version" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
cp -r "$dir" "$work/src"
chmod -R u+w "$work/src"
cd "$work/src"
if [ "$replaces" = drop ]; then
  awk 'BEGIN{skip=0} /^replace \(/{skip=1; next} skip && /^\)/{skip=0; next} !skip' go.mod > go.mod.new
  mv go.mod.new go.mod
  sed -i '/^replace .* => \.\//d' go.mod
fi
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$out.tmp" "$pkg" >&2
mv "$out.tmp" "$out"
echo "$out"
