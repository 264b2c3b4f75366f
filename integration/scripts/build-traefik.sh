#!/usr/bin/env bash
# Builds a Traefik binary from the Go module proxy (no release downloads are
# reachable here) and caches it, so a second run on the same machine is free.
# Recipe: DESIGN.md "What was found to build here".
set -euo pipefail
version="${TRAEFIK_VERSION:-3.6.12}"
cache="${V6REG_CACHE:-/var/cache/v6reg}"
out="$cache/traefik-$version/traefik"
if [ -x "$out" ] && "$out" version >/dev/null 2>&1; then
  echo "$out"; exit 0
fi
mkdir -p "$cache/traefik-$version"
work=$(mktemp -d)
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
export GOFLAGS=-mod=mod GOTOOLCHAIN=local
dir=$(cd "$work" && go mod download -json "github.com/traefik/traefik/v3@v$version" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
cp -r "$dir" "$work/src"
chmod -R u+w "$work/src"
cd "$work/src"
# Traefik's replace directives point at forks on the proxy (kept): building
# from the module cache copy needs only go.sum to be completed (-mod=mod).
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$out.tmp" ./cmd/traefik >&2
mv "$out.tmp" "$out"
echo "$out"
