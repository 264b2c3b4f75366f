#!/usr/bin/env bash
# Consul for the integration tests and the demo (dev agent), built from the
# module proxy and cached; prints the binary's path.
exec "$(dirname "$0")/build-from-proxy.sh" consul github.com/hashicorp/consul "${CONSUL_VERSION:-1.20.6}" . drop
