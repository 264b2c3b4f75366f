// Package firewall programs v6reg's nftables tables (`inet v6reg`, and
// `bridge v6reg` for what a container's bridge port may send): default
// deny on every path a container has (its /80, link-local and IPv4
// addresses, multicast, the node's own addresses), per-container ingress
// and egress policy held in hash maps of peer list ids, shared peer lists
// of both families, drop counters per container. It knows nothing about
// Docker, Nomad or Consul: callers hand it a State.
//
// Layout (see DESIGN.md, "The firewall", and README.md, "Every path a
// container has"): a forward base chain sends packets to or from the
// prefix to chain "filter", everything else from or to the containers'
// bridge (State.Bridge) to "from_link" and "to_link" (IPv4 egress by the
// same rules, no IPv4 ingress, link-local for ND and MLD only); anything
// else is left to the node's other tables. Per-container policy
// lives in hash maps keyed on address . proto . port (in_port_list,
// eg_port_list), address . proto (in_proto_list, eg_proto_list: all
// ports), address (in_icmp_list, eg_icmp_list: echo requests; in_any_list,
// eg_any_list: any protocol). A map gives the id of a peer list (the peers
// of the container's rules with that key); the rule then looks
// id . peer address up in the one interval set "lists", which holds the
// prefixes of every peer list in use. A miss falls through to the next map;
// what is left is counted per container (sets in_drop, eg_drop with
// per-element counters) and dropped. So the per-packet cost is a fixed
// number of lookups, and one container's change is a handful of data
// element additions or removals, whose commit cost does not grow with the
// number of containers. The id passes through the packet mark, which each
// rule restores before it ends.
//
// A second table, `bridge v6reg`, binds each container's address to its
// bridge port (Container.Port): a frame with that source address entering
// the bridge through another port is dropped before the bridge switches or
// routes it, whatever its MAC.
//
// Bridged traffic between two containers crosses the inet forward hook only
// with br_netfilter and net.bridge.bridge-nf-call-ip6tables=1, see
// EnableBridgeNetfilter. Traffic from the node itself (its own address, a
// health check from the gateway) leaves through the output hook, not
// forward, so it is not filtered here; its replies are established.
package firewall

import (
	"bytes"
	"fmt"
	"math"
	"net"
	"net/netip"
	"slices"
	"strings"
)

// Proto is the protocol of a Rule.
type Proto uint8

// Protocols a Rule can name. ICMP means echo requests only (ICMPv6, and
// ICMP for IPv4 egress); the errors IPv6 needs (RFC 4890) pass when they
// belong to a flow that conntrack knows.
const (
	Any  Proto = 0
	TCP  Proto = 6
	UDP  Proto = 17
	ICMP Proto = 58
)

func (p Proto) String() string {
	switch p {
	case Any:
		return "any"
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	case ICMP:
		return "icmp"
	}
	return fmt.Sprintf("proto(%d)", uint8(p))
}

// PeerAny is the Rule.Peer that matches every address.
const PeerAny = "any"

// MaxRulePorts bounds how many ports one rule's ranges may cover: ranges
// are expanded into hash map elements (constant per-packet and per-change
// cost); a wider opening should use all ports (empty Ports).
const MaxRulePorts = 1024

// State is the desired content of the table.
type State struct {
	Prefix     netip.Prefix // the node prefix; only traffic to or from it is filtered
	Gateway    netip.Addr   // the bridge's address in Prefix
	Containers []Container
	// PeerSets are named prefix lists shared by every rule that names
	// them ("@traefik", "service:pg", ...). A literal prefix in a policy is
	// registered by the caller as a peer set of its own (e.g. named after
	// the prefix).
	PeerSets map[string][]netip.Prefix
	// NodePorts are the services of the node itself (on the gateway
	// address or any other node address) that every container may reach,
	// e.g. {Proto: UDP, Ports: 53} for a resolver on the gateway. Anything
	// else a container sends to the node is dropped and counted as the
	// container's egress drop; replies to the node's own connections,
	// the ICMPv6 errors and neighbour discovery always pass. Peer must be
	// empty or PeerAny: a node service is open to all containers or to
	// none. TCP/UDP without Ports means all ports; ICMP means echo
	// requests (ICMPv6 and ICMP); Any means everything. They apply to
	// every address family and source a container can use to reach the
	// node: its /80 address, its link-local address and its IPv4 address.
	NodePorts []Rule
	// Bridge is the name of the containers' bridge on the node (Docker's
	// com.docker.network.bridge.name). Every packet that enters from it
	// or leaves to it and is not IPv6 from or to Prefix is filtered too:
	// IPv4 (egress only, by Container.Addr4 and the egress rules; no IPv4
	// ingress, no IPv4 between containers), link-local and multicast
	// IPv6 (neighbour discovery and MLD only). Empty: only traffic from
	// or to Prefix is filtered, and the paths above are left open; the
	// agent always sets it.
	Bridge string
}

// Container is one address on the prefix and its policy.
type Container struct {
	ID   string // owner id, stored as the comment of every element it owns
	Addr netip.Addr
	// MAC is the container's interface MAC on the bridge (Docker:
	// NetworkSettings.Networks[net].MacAddress), optional. When set, a
	// packet from Addr is dropped (and counted as spoofed) unless its
	// frame came from this MAC, so another container on the same bridge
	// cannot send from Addr.
	MAC net.HardwareAddr
	// Port is the ifindex of the container's port on the bridge (the
	// host side of its veth, in the Firewall's namespace), optional; 0
	// means unknown, and only the MAC check applies. When set, a frame
	// with source address Addr that enters a bridge through any other
	// port is dropped (and counted as spoofed) before the bridge switches
	// or routes it, so another container cannot send from Addr even with
	// Addr's MAC.
	Port int
	// Addr4 is the container's IPv4 address on the bridge (Docker's
	// NAT'd IPv4 subnet), optional. IPv4 is egress only: packets from
	// Addr4 leave the node where an egress rule's peer set holds an IPv4
	// prefix that covers the destination (PeerAny: everywhere), nothing
	// reaches Addr4 but replies, and a frame from the container's port
	// with another IPv4 source is dropped. Without Addr4 (or without
	// State.Bridge) the container has no IPv4 egress at all.
	Addr4   netip.Addr
	Ingress []Rule // who may connect to Addr
	Egress  []Rule // where Addr (and Addr4) may connect to
	// Closed: the container's bridge port (Port, required) drops every
	// frame that enters it, of any protocol, before the bridge learns its
	// source MAC (set port_closed of table bridge v6reg; each drop counts
	// as the container's egress drop in Counters). It is for a container
	// that may not have its address or MAC (another container's, outside
	// the prefix): left out of the table, its port would be open to any
	// frame it forges, another's MAC included. A closed container holds
	// nothing else: Addr, Addr4, MAC, Ingress and Egress stay empty.
	Closed bool
}

// Rule opens Proto/Ports from (ingress) or to (egress) Peer.
type Rule struct {
	Peer  string // a key of State.PeerSets, or PeerAny
	Proto Proto
	Ports []PortRange // TCP/UDP only; empty means all ports
}

// PortRange is an inclusive port range; a single port has First == Last.
type PortRange struct{ First, Last uint16 }

// Validate reports every problem of s, each naming the container and rule.
func (s State) Validate() error {
	var errs []string
	if !s.Prefix.IsValid() || !s.Prefix.Addr().Is6() || s.Prefix.Addr().Is4In6() {
		errs = append(errs, fmt.Sprintf("prefix %q is not an IPv6 prefix: set State.Prefix to the node's /80", s.Prefix))
	}
	if s.Bridge != "" && (len(s.Bridge) >= 16 || strings.ContainsAny(s.Bridge, "/ \x00")) {
		errs = append(errs, fmt.Sprintf("bridge %q is not an interface name (at most 15 bytes, no '/', space or NUL)", s.Bridge))
	}
	if s.Gateway.IsValid() && !s.Prefix.Contains(s.Gateway) {
		errs = append(errs, fmt.Sprintf("gateway %s is outside prefix %s", s.Gateway, s.Prefix))
	}
	for name, ps := range s.PeerSets {
		errs = append(errs, validatePeerSet(name, ps)...)
	}
	for j, r := range s.NodePorts {
		rw := fmt.Sprintf("node port rule %d", j)
		if r.Peer != "" && r.Peer != PeerAny {
			errs = append(errs, fmt.Sprintf("%s: peer %q: node services are open to every container; leave the peer empty or use %q", rw, r.Peer, PeerAny))
		}
		errs = append(errs, validateProtoPorts(rw, r, 0)...)
	}
	seenAddr := map[netip.Addr]string{}
	seenID := map[string]bool{}
	seenPort := map[int]string{}
	for i, c := range s.Containers {
		where := func() string { return fmt.Sprintf("container %d (%q)", i, c.ID) }
		if c.ID != "" && seenID[c.ID] {
			errs = append(errs, where()+": duplicate ID")
		}
		seenID[c.ID] = true
		if c.Port > 0 {
			// One port per container: a closed port must never be one
			// that another container is bound to (and two containers
			// bound to one port would share its elements).
			if other, ok := seenPort[c.Port]; ok {
				errs = append(errs, fmt.Sprintf("%s: bridge port %d is also container %q's", where(), c.Port, other))
			}
			seenPort[c.Port] = c.ID
		}
		if c.Closed {
			errs = append(errs, s.validateContainer(i, c)...)
			continue
		}
		if other, ok := seenAddr[c.Addr]; ok {
			errs = append(errs, fmt.Sprintf("%s: address %s is also container %q's", where(), c.Addr, other))
		}
		seenAddr[c.Addr] = c.ID
		if c.Addr4.IsValid() {
			if other, ok := seenAddr[c.Addr4]; ok {
				errs = append(errs, fmt.Sprintf("%s: IPv4 address %s is also container %q's", where(), c.Addr4, other))
			}
			seenAddr[c.Addr4] = c.ID
		}
		errs = append(errs, s.validateContainer(i, c)...)
	}
	if len(errs) == 0 {
		return nil
	}
	slices.Sort(errs)
	return fmt.Errorf("invalid firewall state: %s", strings.Join(errs, "; "))
}

func validatePeerSet(name string, ps []netip.Prefix) []string {
	var errs []string
	if name == PeerAny || name == "" {
		errs = append(errs, fmt.Sprintf("peer set %q: the name is reserved; rename it", name))
	}
	for _, p := range ps {
		if !p.IsValid() || p.Addr().Is4In6() || p.Addr().Zone() != "" {
			errs = append(errs, fmt.Sprintf("peer set %q: %q is not an IPv6 or IPv4 prefix", name, p))
		}
	}
	return errs
}

// validateContainer checks what can be checked of one container alone
// (not duplicates), so Apply can validate only the containers that changed.
func (s *State) validateContainer(i int, c Container) []string {
	return s.validateContainerPeers(i, c, func(name string) bool { _, ok := s.PeerSets[name]; return ok })
}

// validateContainerPeers is validateContainer with the peer sets given by
// hasPeer (ApplyDelta's are the model's and the delta's). It runs for
// every container of a State that a new model is built from, so it builds
// no message unless there is an error.
func (s *State) validateContainerPeers(i int, c Container, hasPeer func(string) bool) []string {
	var errs []string
	where := func() string { return fmt.Sprintf("container %d (%q)", i, c.ID) }
	if c.ID == "" {
		errs = append(errs, where()+": empty ID; every container needs its owner id")
	}
	if c.Closed {
		if c.Port <= 0 || c.Port > math.MaxInt32 {
			errs = append(errs, fmt.Sprintf("%s: closed, but port %d is not an interface index; a closed container needs the ifindex of the host side of its veth", where(), c.Port))
		}
		if c.Addr.IsValid() || c.Addr4.IsValid() || c.MAC != nil || len(c.Ingress)+len(c.Egress) > 0 {
			errs = append(errs, where()+": closed, but has an address, MAC or rules; a closed container holds only its ID and Port")
		}
		return errs
	}
	if !s.Prefix.Contains(c.Addr) {
		errs = append(errs, fmt.Sprintf("%s: address %s is outside prefix %s", where(), c.Addr, s.Prefix))
	}
	if c.Addr == s.Gateway {
		errs = append(errs, fmt.Sprintf("%s: address %s is the gateway", where(), c.Addr))
	}
	if c.Addr4.IsValid() && (!c.Addr4.Is4() || c.Addr4.IsUnspecified() || c.Addr4.IsMulticast() || c.Addr4 == netip.AddrFrom4([4]byte{255, 255, 255, 255})) {
		errs = append(errs, fmt.Sprintf("%s: IPv4 address %s is not a unicast IPv4 address; pass the endpoint's IPAddress or leave it empty", where(), c.Addr4))
	}
	if c.MAC != nil && (len(c.MAC) != 6 || c.MAC[0]&1 != 0 || bytes.Equal(c.MAC, make([]byte, 6))) {
		errs = append(errs, fmt.Sprintf("%s: MAC %q is not a unicast Ethernet address; pass the endpoint's MacAddress or leave it empty", where(), c.MAC))
	}
	if c.Port < 0 || c.Port > math.MaxInt32 {
		errs = append(errs, fmt.Sprintf("%s: port %d is not an interface index; pass the ifindex of the host side of the container's veth, or 0 if unknown", where(), c.Port))
	}
	for _, d := range [...]struct {
		dir   string
		rules []Rule
	}{{"ingress", c.Ingress}, {"egress", c.Egress}} {
		for j, r := range d.rules {
			rw := func() string { return fmt.Sprintf("%s %s rule %d", where(), d.dir, j) }
			if r.Peer != PeerAny && !hasPeer(r.Peer) {
				errs = append(errs, fmt.Sprintf("%s: peer %q is not in State.PeerSets; add it (possibly empty) or use %q", rw(), r.Peer, PeerAny))
			}
			if !protoPortsOK(r, MaxRulePorts) {
				errs = append(errs, validateProtoPorts(rw(), r, MaxRulePorts)...)
			}
		}
	}
	return errs
}

// protoPortsOK is validateProtoPorts without the messages.
func protoPortsOK(r Rule, maxPorts int) bool {
	switch r.Proto {
	case TCP, UDP:
		n := 0
		for _, pr := range r.Ports {
			if pr.First == 0 || pr.Last < pr.First {
				return false
			}
			n += int(pr.Last-pr.First) + 1
		}
		return maxPorts == 0 || n <= maxPorts
	case ICMP, Any:
		return len(r.Ports) == 0
	}
	return false
}

// validateProtoPorts checks a rule's protocol and ports; maxPorts bounds
// the ports its ranges cover (0: no bound; node port ranges are not
// expanded into elements).
func validateProtoPorts(rw string, r Rule, maxPorts int) []string {
	var errs []string
	switch r.Proto {
	case TCP, UDP:
		n := 0
		for _, pr := range r.Ports {
			if pr.First == 0 || pr.Last < pr.First {
				errs = append(errs, fmt.Sprintf("%s: port range %d-%d is empty or starts at 0", rw, pr.First, pr.Last))
				continue
			}
			n += int(pr.Last-pr.First) + 1
		}
		if maxPorts > 0 && n > maxPorts {
			errs = append(errs, fmt.Sprintf("%s: ports cover %d ports, more than %d; open all ports instead", rw, n, maxPorts))
		}
	case ICMP, Any:
		if len(r.Ports) > 0 {
			errs = append(errs, fmt.Sprintf("%s: %s takes no ports", rw, r.Proto))
		}
	default:
		errs = append(errs, fmt.Sprintf("%s: unknown protocol %d", rw, r.Proto))
	}
	return errs
}

func cloneContainer(c Container) Container {
	c.MAC = bytes.Clone(c.MAC)
	c.Ingress = cloneRules(c.Ingress)
	c.Egress = cloneRules(c.Egress)
	return c
}

func cloneRules(rs []Rule) []Rule {
	if rs == nil {
		return nil
	}
	out := make([]Rule, len(rs))
	for i, r := range rs {
		out[i] = r
		out[i].Ports = slices.Clone(r.Ports)
	}
	return out
}

// SameContainer reports whether a and b compile to the same elements. It
// runs for every container on every Apply, so it is kept cheap; the agent
// compares states with it to build a Delta.
func SameContainer(a, b *Container) bool {
	return a.ID == b.ID && a.Closed == b.Closed && a.Addr == b.Addr && a.Addr4 == b.Addr4 && a.Port == b.Port && bytes.Equal(a.MAC, b.MAC) &&
		SameRules(a.Ingress, b.Ingress) && SameRules(a.Egress, b.Egress)
}

// SameRules reports whether two rule lists are equal. The same slice (a
// memoized evaluation's rules, pass after pass) is equal at once.
func SameRules(a, b []Rule) bool {
	if len(a) != len(b) {
		return false
	}
	if len(a) == 0 || &a[0] == &b[0] {
		return true
	}
	for i := range a {
		x, y := &a[i], &b[i]
		if x.Peer != y.Peer || x.Proto != y.Proto || !slices.Equal(x.Ports, y.Ports) {
			return false
		}
	}
	return true
}
