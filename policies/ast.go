// Package policies implements the v6reg policy language that developers write
// in Nomad job meta (or Docker labels): parsing with positioned errors, a
// canonical printer, Nomad-style meta merging, operator bounds per namespace,
// and resolution of peers into the prefixes and named references the firewall
// and the Consul registration need. It does no I/O; the grammar is in
// README.md.
package policies

import (
	"net/netip"
	"strconv"
	"strings"
)

// Direction says whether a rule set is ingress (peers after "from") or
// egress (peers after "to").
type Direction uint8

// The directions of a rule set.
const (
	Ingress Direction = iota + 1
	Egress
)

func (d Direction) String() string {
	switch d {
	case Ingress:
		return "ingress"
	case Egress:
		return "egress"
	}
	return "direction(" + strconv.Itoa(int(d)) + ")"
}

// keyword is the word that introduces peers in rules of this direction.
func (d Direction) keyword() string {
	if d == Egress {
		return "to"
	}
	return "from"
}

// Proto is the protocol of a rule.
type Proto uint8

// The protocols a rule can name.
const (
	TCP Proto = iota + 1
	UDP
	// ICMP means ICMPv6 echo request (ping) and nothing else: the ICMPv6
	// types IPv6 needs to work are always allowed by the firewall.
	ICMP
	// Any is every protocol, every port.
	Any
)

var protoNames = map[Proto]string{TCP: "tcp", UDP: "udp", ICMP: "icmp", Any: "any"}

func (p Proto) String() string {
	if s, ok := protoNames[p]; ok {
		return s
	}
	return "proto(" + strconv.Itoa(int(p)) + ")"
}

// hasPorts reports whether rules of this protocol may name ports.
func (p Proto) hasPorts() bool { return p == TCP || p == UDP }

// PortRange is an inclusive range of ports; a single port has From == To.
type PortRange struct {
	From, To uint16
}

func (r PortRange) String() string {
	if r.From == r.To {
		return strconv.Itoa(int(r.From))
	}
	return strconv.Itoa(int(r.From)) + "-" + strconv.Itoa(int(r.To))
}

// Contains reports whether every port of s is in r.
func (r PortRange) Contains(s PortRange) bool { return r.From <= s.From && s.To <= r.To }

// AllPorts is what a tcp or udp rule without ports means.
var AllPorts = PortRange{From: 1, To: 65535}

// isAllPorts says whether ps is exactly AllPorts (a rule written without ports).
func isAllPorts(ps []PortRange) bool { return len(ps) == 1 && ps[0] == AllPorts }

// PeerKind says what a peer names.
type PeerKind uint8

const (
	// PeerPrefix is a literal IPv6 prefix (an address is a /128).
	PeerPrefix PeerKind = iota + 1
	// PeerSet is "@name": a prefix list the operator defines.
	PeerSet
	// PeerService is "service:NAME": every instance of a Consul service
	// registered by a container of the same namespace; "service:NS/NAME"
	// names one of namespace NS (Peer.Namespace).
	PeerService
	// PeerJob is "job:NAME": every container of a Nomad job in the same
	// namespace.
	PeerJob
	// PeerAny is "any": every address.
	PeerAny
)

// Peer is one element of the peer list of a rule.
type Peer struct {
	Kind   PeerKind
	Prefix netip.Prefix // for PeerPrefix
	Name   string       // for PeerSet (without '@'), PeerService, PeerJob
	// Namespace is NS of service:NS/NAME; empty for service:NAME.
	Namespace string
	// Col is the 1-based column of the peer in the meta value, so that
	// errors found after parsing (unknown @name, out of bounds) point at it.
	// It is not part of the peer's meaning.
	Col int
}

func (p Peer) String() string {
	switch p.Kind {
	case PeerPrefix:
		if p.Prefix.IsSingleIP() {
			return p.Prefix.Addr().String()
		}
		return p.Prefix.String()
	case PeerSet:
		return "@" + p.Name
	case PeerService:
		if p.Namespace != "" {
			return "service:" + p.Namespace + "/" + p.Name
		}
		return "service:" + p.Name
	case PeerJob:
		return "job:" + p.Name
	case PeerAny:
		return "any"
	}
	return "peer(" + strconv.Itoa(int(p.Kind)) + ")"
}

// Rule is one parsed rule: "PROTO[/PORTS] from|to PEER[, PEER...]".
type Rule struct {
	Proto Proto
	// Ports is sorted, merged and never empty for tcp and udp (no ports
	// written means AllPorts); it is nil for icmp and any.
	Ports []PortRange
	Dir   Direction
	Peers []Peer
	// Col and PortsCol are 1-based columns of the rule and of its ports in
	// the meta value (PortsCol is 0 when no ports were written).
	Col, PortsCol int
}

// String prints the rule in canonical form; the result parses back to an
// equal rule (columns aside).
func (r Rule) String() string {
	var b strings.Builder
	b.WriteString(r.Proto.String())
	if r.Proto.hasPorts() && !isAllPorts(r.Ports) {
		for i, pr := range r.Ports {
			if i == 0 {
				b.WriteByte('/')
			} else {
				b.WriteByte(',')
			}
			b.WriteString(pr.String())
		}
	}
	b.WriteByte(' ')
	b.WriteString(r.Dir.keyword())
	for i, p := range r.Peers {
		if i == 0 {
			b.WriteByte(' ')
		} else {
			b.WriteString(", ")
		}
		b.WriteString(p.String())
	}
	return b.String()
}

// FormatRules prints rules in canonical form, separated by "; ".
func FormatRules(rules []Rule) string {
	s := make([]string, len(rules))
	for i, r := range rules {
		s[i] = r.String()
	}
	return strings.Join(s, "; ")
}

// CheckKind is the kind of health check a service gets.
type CheckKind uint8

// The kinds of health check, as written in the services field.
const (
	CheckTCP CheckKind = iota + 1
	CheckHTTP
	CheckHTTPS
)

var checkNames = map[CheckKind]string{CheckTCP: "tcp", CheckHTTP: "http", CheckHTTPS: "https"}

func (c CheckKind) String() string {
	if s, ok := checkNames[c]; ok {
		return s
	}
	return "check(" + strconv.Itoa(int(c)) + ")"
}

// Service is one parsed entry of v6reg_services: "name:port[:kind[path]]".
type Service struct {
	Name  string
	Port  uint16
	Check CheckKind
	// Path is what an http(s) check asks for ("" is "/"). The check
	// follows no redirect: the path must answer 2xx itself.
	Path string
	Col  int // 1-based column of the entry in the meta value
}

// CheckPath is the path an http(s) check asks for.
func (s Service) CheckPath() string {
	if s.Path == "" {
		return "/"
	}
	return s.Path
}

// String prints the entry in canonical form (the check kind always written,
// the path when it is not "/").
func (s Service) String() string {
	out := s.Name + ":" + strconv.Itoa(int(s.Port)) + ":" + s.Check.String()
	if s.Path != "" && s.Path != "/" {
		out += s.Path
	}
	return out
}

// FormatServices prints entries in canonical form, separated by ", ".
func FormatServices(svcs []Service) string {
	s := make([]string, len(svcs))
	for i, v := range svcs {
		s[i] = v.String()
	}
	return strings.Join(s, ", ")
}
