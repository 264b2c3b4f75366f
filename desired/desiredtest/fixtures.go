// Package desiredtest holds the test values the desired-state builder's
// tests and the agent's share: a node prefix (that of the recorded Nomad
// fixtures), addresses and container IDs in it, and an operator
// configuration with real sets.
package desiredtest

import (
	"net/netip"
	"strings"

	"github.com/v6reg/v6reg/docker"
	"github.com/v6reg/v6reg/nomad"
	"github.com/v6reg/v6reg/peers"
	"github.com/v6reg/v6reg/policies"
)

// The node of the tests.
var (
	Prefix    = netip.MustParsePrefix("fd00:f1:0:0:1::/80")
	Gateway   = netip.MustParseAddr("fd00:f1::1:0:0:1")
	TraefikV6 = netip.MustParsePrefix("fd00:aa::/64")
	TraefikV4 = netip.MustParsePrefix("10.1.0.0/16")
)

// Allocations of the recorded Nomad fixtures.
const (
	AllocA = "e91ea7ef-bbc8-da92-3308-4473535245fc"
	AllocB = "c3cc5a34-9704-946d-259f-aa915569ff21"
)

// Addr is the n-th address of Prefix (fd00:f1::1:0:0:n).
func Addr(n int) netip.Addr {
	a := Prefix.Addr().As16()
	a[14], a[15] = byte(n>>8), byte(n) //nolint:gosec // G115: the low 16 bits on purpose
	return netip.AddrFrom16(a)
}

// CID is a 64-hex container ID that starts with tag (hex digits only).
func CID(tag string) string { return (tag + strings.Repeat("0", 64))[:64] }

// Operator is DefaultOperator with real addresses in @traefik (one IPv4
// prefix too, which the IPv6 table must not get) and a namespace "open"
// that may use any. Label-only containers may choose their namespace by
// label here; the operator's default (they cannot) is tested on its own.
func Operator() policies.Operator {
	op := policies.DefaultOperator()
	op.Peers["traefik"] = []netip.Prefix{TraefikV6, TraefikV4}
	op.Peers["ops"] = []netip.Prefix{netip.MustParsePrefix("fd00:0:0:ff::/64")}
	op.Namespaces["open"] = policies.Bounds{AllowAny: true, AllowInternet: true}
	op.LabelsChooseNamespace = true
	return op
}

// LabelContainer is a container started without Nomad.
func LabelContainer(tag, name string, n int, labels map[string]string) docker.Container {
	return docker.Container{ID: CID(tag), Name: name, Addr: Addr(n), Labels: labels}
}

// NomadContainer is task's container of allocation alloc.
func NomadContainer(tag, task, alloc string, n int) docker.Container {
	return docker.Container{ID: CID(tag), Name: task + "-" + alloc, Addr: Addr(n),
		Labels: map[string]string{docker.LabelNomadAlloc: alloc}, AllocID: alloc, Task: task}
}

// NoAlloc looks up no allocation; NoPeers knows no peer.
func NoAlloc(string) (nomad.Alloc, bool) { return nomad.Alloc{}, false }

// NoPeers knows no peer's addresses (Consul has not answered).
func NoPeers(peers.Key) ([]netip.Prefix, bool) { return nil, false }
