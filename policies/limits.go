package policies

import (
	"fmt"
	"strconv"
)

// Limits bound how much of the node one container, and all of them
// together, may take: firewall elements (every set and map element a
// container's rules compile to) and Consul-backed peers (service: and
// job: names, each one a watch on Consul). Whoever writes a job must not
// be able to blow up the table, the reconcile or Consul for the node's
// other tenants. A container over a per-container limit is refused like
// any other bad policy; one that would push the node over a node limit is
// closed too, while the containers already in force keep working.
type Limits struct {
	// ContainerElements bounds the firewall elements one container's
	// policy compiles to, its peer lists included (as if it were alone
	// on the node): a tcp port range counts one element per port, a peer
	// list one element per disjoint address range.
	ContainerElements int
	// ContainerPeers bounds the distinct service: and job: peers one
	// container's policy names.
	ContainerPeers int
	// ContainerServices bounds the services one container declares
	// (v6reg_services): each is a Consul registration and a health check
	// the node's agent runs, and the registrations of every container on
	// the node go through that agent one at a time.
	ContainerServices int
	// NodeElements bounds the firewall elements of the whole node (shared
	// peer lists counted once).
	NodeElements int
	// NodePeerSets bounds the distinct service: and job: peers all the
	// node's containers name together: each is a Consul watch.
	NodePeerSets int
	// PeerSetAddresses bounds the addresses taken from one Consul-backed
	// peer set. A larger set is cut to the registrations that came first
	// (lowest Consul create index), so a job registering thousands of
	// instances neither fills every node's table nor displaces the peers
	// that were there before it.
	PeerSetAddresses int
}

// DefaultLimits are generous for real jobs (a container with a few
// dozen rules and ports, services of a few thousand instances) and keep a
// node's table in the range where a change costs well under a
// millisecond (see BENCHMARKS.md).
func DefaultLimits() Limits {
	return Limits{
		ContainerElements: 4096,
		ContainerPeers:    32,
		ContainerServices: 32,
		NodeElements:      100000,
		NodePeerSets:      512,
		PeerSetAddresses:  2048,
	}
}

// LimitFields names each limit as the agent config writes it (block
// "limits"), for messages that tell the operator what to change.
const (
	FieldContainerElements = "limits.container_elements"
	FieldContainerPeers    = "limits.container_peers"
	FieldContainerServices = "limits.container_services"
	FieldNodeElements      = "limits.node_elements"
	FieldNodePeerSets      = "limits.node_peer_sets"
	FieldPeerSetAddresses  = "limits.peer_set_addresses"
)

// maxLimit keeps every limit where counts cannot overflow and the kernel
// can still hold the table.
const maxLimit = 10_000_000

// OrDefault is l with each unset (zero) limit at its default, so an
// Operator built without limits is bounded all the same.
func (l Limits) OrDefault() Limits {
	d := DefaultLimits()
	for _, f := range []struct{ v, def *int }{
		{&l.ContainerElements, &d.ContainerElements},
		{&l.ContainerPeers, &d.ContainerPeers},
		{&l.ContainerServices, &d.ContainerServices},
		{&l.NodeElements, &d.NodeElements},
		{&l.NodePeerSets, &d.NodePeerSets},
		{&l.PeerSetAddresses, &d.PeerSetAddresses},
	} {
		if *f.v == 0 {
			*f.v = *f.def
		}
	}
	return l
}

// Validate reports every limit outside 1..10,000,000 (zero stands for
// the default), and a node limit below its per-container limit (no
// container at that limit could ever run).
func (l Limits) Validate() []error {
	var errs []error
	l = l.OrDefault()
	for _, f := range []struct {
		name string
		v    int
	}{
		{FieldContainerElements, l.ContainerElements},
		{FieldContainerPeers, l.ContainerPeers},
		{FieldContainerServices, l.ContainerServices},
		{FieldNodeElements, l.NodeElements},
		{FieldNodePeerSets, l.NodePeerSets},
		{FieldPeerSetAddresses, l.PeerSetAddresses},
	} {
		if f.v < 1 || f.v > maxLimit {
			errs = append(errs, fmt.Errorf("%s: %d is out of range; use 1 to %d", f.name, f.v, maxLimit))
		}
	}
	if len(errs) > 0 {
		return errs
	}
	if l.NodeElements < l.ContainerElements {
		errs = append(errs, fmt.Errorf("%s: %d is below %s (%d); no container at that limit could run: raise it", FieldNodeElements, l.NodeElements, FieldContainerElements, l.ContainerElements))
	}
	if l.NodePeerSets < l.ContainerPeers {
		errs = append(errs, fmt.Errorf("%s: %d is below %s (%d); no container at that limit could run: raise it", FieldNodePeerSets, l.NodePeerSets, FieldContainerPeers, l.ContainerPeers))
	}
	return errs
}

// ContainerPeersError is the error of a policy naming more distinct
// service: and job: peers than the limit allows.
func (l Limits) ContainerPeersError(n int) *Error {
	return &Error{Level: LevelTask,
		Msg:  fmt.Sprintf("the policy names %d distinct service: and job: peers; the limit is %d per container (%s)", n, l.ContainerPeers, FieldContainerPeers),
		Hint: "name fewer services and jobs (one job: peer covers all its tasks), use an @set for fixed peers, or ask the operator to raise " + FieldContainerPeers,
	}
}

// ContainerServicesError is the error of a container declaring more
// services than the limit allows.
func (l Limits) ContainerServicesError(n int) *Error {
	return &Error{
		Msg:  fmt.Sprintf("%d services declared; the limit is %d per container (%s)", n, l.ContainerServices, FieldContainerServices),
		Hint: "declare fewer services (one service can front many paths through Traefik), or ask the operator to raise " + FieldContainerServices,
	}
}

// ContainerElementsError is the error of a policy compiling to more
// firewall elements than the limit allows. atLeast says the count leaves
// out Consul-backed peers (policy check cannot know their size).
func (l Limits) ContainerElementsError(n int, atLeast bool) *Error {
	count := strconv.Itoa(n)
	if atLeast {
		count = "at least " + count
	}
	return &Error{Level: LevelTask,
		Msg:  fmt.Sprintf("the policy compiles to %s firewall elements; the limit is %d per container (%s)", count, l.ContainerElements, FieldContainerElements),
		Hint: "every tcp/udp port a rule lists is one element (two in egress with IPv4) and every peer address range one more: open fewer ports (a rule without ports is one element), or ask the operator to raise " + FieldContainerElements,
	}
}
