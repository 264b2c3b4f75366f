# v6reg: see README.md. Every target runs as root on a Debian machine.
SHELL        := /bin/bash
GO           ?= go
export GOTOOLCHAIN := local
VERSION      ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT       ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS      := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT)
BIN          := bin/v6reg
CACHE        ?= /var/cache/v6reg
TEST_TIMEOUT ?= 18m
GOLANGCI     := github.com/golangci/golangci-lint/v2/cmd/golangci-lint@v2.15.0

.PHONY: all build test test-docker28 test-docker29 test-faults test-unit deps consul lint fuzz bench demo demo-clean rpm clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/v6reg

## deps: Debian packages and the Consul build the root tests need (idempotent).
deps:
	integration/scripts/deps.sh

consul:
	integration/scripts/build-consul.sh

## test: everything: unit, root/netns, and integration against real dockerd
## (Debian's 20.10) and Consul; then the integration tests that depend on the
## engine once more on Docker Engine 28 (built by deps, cached), in its
## default configuration (ip6tables on). The fault suite stays on 20.10.
ENGINE_TESTS ?= ^(TestEndToEnd|TestBypassMatrix|TestDockerDefersToV6reg|TestAgentRestartLeavesNoOrphan|TestIPAMWithDockerd|TestIPAMDockerdLiveRestore|TestIPAMEngineIdentity|TestTraefikRoutesToContainer)$$
test: deps
	V6REG_CONSUL_BIN=$$(integration/scripts/build-consul.sh) \
	$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) ./...
	$(MAKE) --no-print-directory test-docker28

## test-docker28: the engine-dependent integration tests on Docker Engine 28.
test-docker28:
	V6REG_CONSUL_BIN=$$(integration/scripts/build-consul.sh) \
	V6REG_DOCKERD=$$(integration/scripts/build-docker.sh)/dockerd \
	$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) -run '$(ENGINE_TESTS)' ./integration/

## test-docker29: the same tests on Docker 29 (github.com/moby/moby/v2
## v2.0.0-beta.24 and runc v1.5.3, built once: about 4-5 minutes), with its
## iptables backend, then with its nftables backend and bridge-accept-fwmark.
## Not part of `make test` (CI's time budget); about 5 minutes once built.
ENGINE29_NFT_TESTS ?= ^(TestEndToEnd|TestDockerDefersToV6reg)$$
test-docker29:
	V6REG_CONSUL_BIN=$$(integration/scripts/build-consul.sh) \
	V6REG_DOCKERD=$$(integration/scripts/build-docker.sh 29)/dockerd \
	$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) -run '$(ENGINE_TESTS)' ./integration/
	V6REG_CONSUL_BIN=$$(integration/scripts/build-consul.sh) \
	V6REG_DOCKERD=$$(integration/scripts/build-docker.sh 29)/dockerd \
	V6REG_DOCKERD_ARGS="--firewall-backend=nftables --bridge-accept-fwmark=0x10000000/0x10000000" \
	$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) -run '$(ENGINE29_NFT_TESTS)' ./integration/

## test-faults: the fault suite (issue 8) at the issue's sizes, slow cases
## included (~28 min on 2 cores); rewrites integration/FAULTS.md. Smaller
## runs while working on a case: V6REG_FAULT_BURST (200), V6REG_FAULT_SOAK
## (2000), V6REG_FAULT_CONSUL_SECONDS (60), V6REG_FAULT_HOSTILE_ROUNDS (15),
## V6REG_FAULT_NOMAD_LATE_SECONDS (45: how late Nomad comes up in case 13).
test-faults: deps
	V6REG_FAULTS=1 V6REG_CONSUL_BIN=$$(integration/scripts/build-consul.sh) \
	$(GO) test -race -count=1 -timeout 60m -run '^TestFault' -v ./integration/

## test-unit: the tests that need neither root nor daemons.
test-unit:
	V6REG_SKIP_ROOT=1 $(GO) test -race -count=1 ./...

## fuzz: every fuzz target for a short while (FUZZTIME=30s for longer).
FUZZTIME ?= 10s
fuzz:
	@for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz'); do \
	    echo "== $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	  done; \
	done

lint:
	test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...
	$(GO) run $(GOLANGCI) run ./...

## bench: every benchmark (firewall, data path, IPAM, policies) and the end-to-end
## measurements with real dockerd and Consul; writes BENCHMARKS.md (raw output in
## bench.out). About 19 minutes on 2 cores; BENCH_TOTAL=30m gives the end-to-end part more.
bench: deps
	V6REG_CONSUL_BIN=$$(integration/scripts/build-consul.sh) \
	$(GO) run ./integration/cmd/benchreport -out BENCHMARKS.md -raw bench.out -total $(or $(BENCH_TOTAL),19m)

## demo: the agent with real dockerd and Consul in a namespace topology.
demo: build
	V6REG_DEPS_DOCKER28=0 integration/scripts/deps.sh
	V6REG_CONSUL_BIN=$$(integration/scripts/build-consul.sh) $(GO) run ./integration/cmd/demo

demo-clean:
	$(GO) run ./integration/cmd/demo -clean

## rpm: the RPM into $(RPM_DIR): v6reg-VERSION-1.ARCH.rpm, and v6reg.rpm linking
## to it (a stable name for scripts). Version from git (packaging/rpm-version.sh).
## RPM_VERSION=1.2.3 overrides the version (it must not contain '-').
## nfpm comes from the Go module proxy: v2.45.2 is the newest whose
## dependencies all resolve there (v2.46+ need go.digitalxero.dev modules).
NFPM        := github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.45.2
RPM_DIR     ?= bin
RPM_VERSION ?=
rpm: build
	@set -euo pipefail; \
	ver='$(RPM_VERSION)'; [ -n "$$ver" ] || ver=$$(packaging/rpm-version.sh); \
	case $$ver in *-*) echo "rpm: version $$ver contains '-'; RPM forbids it" >&2; exit 1;; esac; \
	arch=$$($(GO) env GOARCH); \
	mkdir -p $(RPM_DIR); rm -f $(RPM_DIR)/v6reg-*.rpm $(RPM_DIR)/v6reg.rpm; \
	V6REG_RPM_VERSION=$$ver V6REG_ARCH=$$arch V6REG_BIN=$(BIN) \
	  $(GO) run $(NFPM) package -f packaging/nfpm.yaml -p rpm -t $(RPM_DIR)/; \
	pkg=$$(cd $(RPM_DIR) && ls v6reg-*.rpm); \
	ln -sfn $$pkg $(RPM_DIR)/v6reg.rpm; \
	echo "$(RPM_DIR)/$$pkg ($(RPM_DIR)/v6reg.rpm)"

clean:
	rm -rf bin bench.out
