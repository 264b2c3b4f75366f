#!/usr/bin/env bash
# Traefik for the check that its Consul Catalog provider routes to the
# containers, built from the module proxy and cached; prints the path.
# Its replace block names forks on the proxy, so it is kept (dropping it
# fails: github.com/abbot/go-http-auth@v0.0.0-00010101000000-000000000000: 403).
exec "$(dirname "$0")/build-from-proxy.sh" traefik github.com/traefik/traefik/v3 "${TRAEFIK_VERSION:-3.6.12}" ./cmd/traefik keep
