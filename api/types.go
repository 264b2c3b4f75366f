// Package api is the agent's local status API: the answers of
// `v6reg status` and `v6reg explain` (the types, shared by the agent and
// the command) and the server on the root-only unix socket.
package api

import "time"

// Snapshot is what the status API serves: the desired and applied state
// per container, as of the last reconcile.
type Snapshot struct {
	Node        string    `json:"node"`
	Prefix      string    `json:"prefix"`
	At          time.Time `json:"at"`
	FirewallErr string    `json:"firewall_error,omitempty"`
	// BridgeNetfilterErr says why traffic between containers on the
	// bridge bypasses the firewall (br_netfilter missing or off and not
	// restorable); the agent is unhealthy while it is set.
	BridgeNetfilterErr string `json:"bridge_netfilter_error,omitempty"`
	ConsulErr          string `json:"consul_error,omitempty"`
	// HealthErr says why the services' health is unknown: Consul did not
	// answer the status API's question about its checks.
	HealthErr string `json:"health_error,omitempty"`
	Nomad     string `json:"nomad"`
	// StateErr says the persisted last known policies (KnownFile) could
	// not be read (corrupt) or written.
	StateErr string `json:"state_error,omitempty"`
	// Spoofed are the node's anti-spoofing drops (kernel counters, since
	// the tables were created); nil where the firewall does not count them.
	Spoofed    *SpoofState      `json:"spoofed,omitempty"`
	Containers []ContainerState `json:"containers"`
	// PeerSetsCut are the service:/job: peer sets in use that Consul's
	// last answer cut to limits.peer_set_addresses, in peer order.
	PeerSetsCut []PeerSetCut `json:"peer_sets_cut,omitempty"`
}

// PeerSetCut is a service:/job: peer set with more v6reg registrations in
// Consul than limits.peer_set_addresses: the firewall holds the Kept
// registered first (lowest Consul create index) and denies the others.
type PeerSetCut struct {
	Peer          string `json:"peer"`          // service:NAMESPACE/NAME or job:NAMESPACE/JOB
	Registrations int    `json:"registrations"` // addresses v6reg registered in Consul
	Kept          int    `json:"kept"`          // in the firewall's set
	Limit         int    `json:"limit"`         // limits.peer_set_addresses that cut it
	// Containers are the IDs of the containers whose rules use the peer
	// (status only).
	Containers []string `json:"containers,omitempty"`
}

// SpoofState splits the anti-spoofing drops by check: frames at a
// container's bridge port with another MAC or another container's address,
// and packets whose prefix source no container owns or came from the
// wrong link or MAC.
type SpoofState struct {
	BridgePortPackets uint64 `json:"bridge_port_packets"`
	SourcePackets     uint64 `json:"source_packets"`
}

// ContainerState is one container in the status API.
type ContainerState struct {
	ID        string         `json:"id"`
	Name      string         `json:"name"`
	Address   string         `json:"address,omitempty"`
	Source    string         `json:"source"`
	Namespace string         `json:"namespace,omitempty"`
	Job       string         `json:"job,omitempty"`
	Group     string         `json:"group,omitempty"`
	Task      string         `json:"task,omitempty"`
	AllocID   string         `json:"alloc_id,omitempty"`
	Stopping  bool           `json:"stopping,omitempty"`
	Closed    bool           `json:"closed"`
	Reason    string         `json:"reason,omitempty"`
	Errors    []string       `json:"errors,omitempty"`
	Ingress   []RuleState    `json:"ingress,omitempty"`
	Egress    []RuleState    `json:"egress,omitempty"`
	Services  []ServiceState `json:"services,omitempty"`
	Drops     *DropState     `json:"drops,omitempty"`
}

// RuleState is one resolved rule of a container.
type RuleState struct {
	Rule     string   `json:"rule"`
	Prefixes []string `json:"prefixes,omitempty"`
	Services []string `json:"services,omitempty"`
	Jobs     []string `json:"jobs,omitempty"`
}

// ServiceState is one Consul registration of a container.
type ServiceState struct {
	ID    string   `json:"id"`
	Name  string   `json:"name"`
	Port  int      `json:"port"`
	Check string   `json:"check"` // the kind v6reg registered: http, https, tcp, critical (policy error), "" (none)
	Tags  []string `json:"tags,omitempty"`
	// Health is Consul's live view when the status API was asked: the
	// worst status of the service's checks (passing, warning, critical),
	// HealthUnknown when Consul did not answer or holds no check for it,
	// empty when the registration has no check or Consul is off.
	Health string `json:"health,omitempty"`
	// Output is that check's output (its notes when it has none, as for
	// the policy error check), cut to maxCheckOutput bytes.
	Output string `json:"output,omitempty"`
}

// HealthUnknown is a service's Health when Consul could not tell it.
const HealthUnknown = "unknown"

// DropState holds the kernel's drop counters of a container.
type DropState struct {
	IngressPackets uint64 `json:"ingress_packets"`
	EgressPackets  uint64 `json:"egress_packets"`
}

// ExplainQuery asks why a flow to or from a container passes or not.
type ExplainQuery struct {
	// Target is the container: its address, its (short) container ID, or
	// its (short) Nomad allocation ID.
	Target string `json:"target"`
	// Direction is "from" (ingress: PEER connects to the container) or "to"
	// (egress: the container connects to PEER); empty asks for the
	// container's rules only.
	Direction string `json:"direction,omitempty"`
	// Peer is an IPv6 address, or a peer as written in policies (@name,
	// service:NAME, job:NAME, any).
	Peer  string `json:"peer,omitempty"`
	Port  uint16 `json:"port,omitempty"`
	Proto string `json:"proto,omitempty"` // tcp, udp, icmp
}

// ExplainAnswer is the verdict and where it came from.
type ExplainAnswer struct {
	Container ContainerState `json:"container"`
	// Verdict is "allow" or "deny" for a flow, "" for a rules listing.
	Verdict string `json:"verdict,omitempty"`
	Rule    string `json:"rule,omitempty"`
	// Source says which meta key (or label) at which level holds the rule.
	Source string `json:"source,omitempty"`
	Reason string `json:"reason"`
	// IngressSource and EgressSource say where each direction's policy was
	// written.
	IngressSource string `json:"ingress_source,omitempty"`
	EgressSource  string `json:"egress_source,omitempty"`
	// PeerCut is set when the verdict hinges on a peer set cut to
	// limits.peer_set_addresses: the address is one of the peer's
	// registrations past the limit (deny), or the peer named is cut.
	PeerCut *PeerSetCut `json:"peer_cut,omitempty"`
}
