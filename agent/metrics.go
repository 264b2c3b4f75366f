package agent

import (
	"github.com/v6reg/v6reg/desired"
	"github.com/v6reg/v6reg/peers"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Metrics are the agent's Prometheus metrics, on a registry of their own
// (no global state, so tests can run several agents).
type Metrics struct {
	Registry         *prometheus.Registry
	Containers       prometheus.Gauge
	Closed           prometheus.Gauge
	PolicyErrors     prometheus.Gauge
	Leases           prometheus.Gauge
	HeldDown         prometheus.Gauge
	Registrations    prometheus.Gauge
	FirewallRules    prometheus.Gauge
	ReconcileSeconds prometheus.Histogram
	EventToApplied   prometheus.Histogram
	// EventToFirewall and EventToConsul: from a Docker event naming a
	// container to the output applying what it asked for.
	EventToFirewall, EventToConsul prometheus.Histogram
	// ResyncDrift counts what a periodic full resync found that the
	// incremental passes had missed, by source (docker, consul).
	ResyncDrift *prometheus.CounterVec
	Errors      *prometheus.CounterVec
	Drops       *prometheus.GaugeVec
	SpoofDrops  *prometheus.GaugeVec
	// BridgeNetfilterOK and BridgeNetfilterRestored: see keepBridgeNetfilter.
	BridgeNetfilterOK       prometheus.Gauge
	BridgeNetfilterRestored prometheus.Counter
	// PeerEntriesIgnored: see peerAddr.
	PeerEntriesIgnored *prometheus.GaugeVec
	// LimitRefusals, FirewallElements, PeerSetsTruncated: see limits.go;
	// PeerWatches, WatchConnections: see peerpool.go.
	LimitRefusals     *prometheus.GaugeVec
	FirewallElements  prometheus.Gauge
	PeerSetsTruncated prometheus.Gauge
	PeerWatches       *prometheus.GaugeVec
	WatchConnections  prometheus.Gauge
}

// NewMetrics registers every metric on a new registry.
func NewMetrics() *Metrics {
	m := &Metrics{
		Registry:      prometheus.NewRegistry(),
		Containers:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "v6reg_containers", Help: "Containers on the v6reg network that the agent manages."}),
		Closed:        prometheus.NewGauge(prometheus.GaugeOpts{Name: "v6reg_containers_closed", Help: "Managed containers kept closed (policy refused, allocation unknown, no address)."}),
		PolicyErrors:  prometheus.NewGauge(prometheus.GaugeOpts{Name: "v6reg_containers_policy_errors", Help: "Managed containers whose policy was refused."}),
		Leases:        prometheus.NewGauge(prometheus.GaugeOpts{Name: "v6reg_ipam_leases", Help: "Addresses leased to containers."}),
		HeldDown:      prometheus.NewGauge(prometheus.GaugeOpts{Name: "v6reg_ipam_held_down", Help: "Released addresses still in hold-down."}),
		Registrations: prometheus.NewGauge(prometheus.GaugeOpts{Name: "v6reg_consul_registrations", Help: "Consul services the agent wants registered."}),
		FirewallRules: prometheus.NewGauge(prometheus.GaugeOpts{Name: "v6reg_firewall_rules", Help: "Per-container firewall rules in the desired state (ingress and egress)."}),
		ReconcileSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "v6reg_reconcile_seconds", Help: "Duration of one reconcile.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14)}),
		EventToApplied: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "v6reg_event_to_applied_seconds", Help: "From the first event that asked for a reconcile to its changes applied.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14)}),
		EventToFirewall: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "v6reg_event_to_firewall_seconds", Help: "From a Docker event naming a container to the firewall holding what it asked for.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14)}),
		EventToConsul: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "v6reg_event_to_consul_seconds", Help: "From a Docker event naming a container to Consul holding its registrations.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14)}),
		ResyncDrift: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "v6reg_resync_drift_total",
			Help: "Differences the periodic full resync found between what the incremental passes kept and the source: source=docker (containers events had not brought), consul (registrations not as last written). Should stay 0."},
			[]string{"source"}),
		Errors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "v6reg_errors_total", Help: "Errors by kind: docker, nomad, consul, netlink, policy, state."}, []string{"kind"}),
		Drops: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "v6reg_dropped_packets", Help: "Packets dropped by default deny, per container and direction (kernel counter)."},
			[]string{"container", "direction"}),
		SpoofDrops: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "v6reg_spoofed_packets",
			Help: "Packets and frames dropped by anti-spoofing (kernel counters): check=bridge_port, a container's bridge port with another MAC or another container's address; check=source, a prefix source owned by no container, from the wrong link or from another MAC."},
			[]string{"check"}),
		BridgeNetfilterOK: prometheus.NewGauge(prometheus.GaugeOpts{Name: "v6reg_bridge_netfilter_ok",
			Help: "1 while bridged traffic between containers crosses the firewall (br_netfilter loaded, bridge-nf-call-ip6tables and -iptables on); 0: containers on the bridge reach each other past every rule."}),
		BridgeNetfilterRestored: prometheus.NewCounter(prometheus.CounterOpts{Name: "v6reg_bridge_netfilter_restored_total",
			Help: "Times a bridge-nf-call sysctl was found off and turned back on."}),
		PeerEntriesIgnored: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "v6reg_peer_entries_ignored",
			Help: "Consul catalog entries under a service: or job: peer in use that are not peers: reason=foreign (not a v6reg registration), outside_prefix (an address outside its node's prefix), namespace (another namespace's or job's)."},
			[]string{"reason"}),
		LimitRefusals: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "v6reg_limit_refusals",
			Help: "Containers closed by a size limit: limit=container_elements, container_peers (their policy is over a per-container limit), node_elements, node_peer_sets (the node is full)."},
			[]string{"limit"}),
		FirewallElements: prometheus.NewGauge(prometheus.GaugeOpts{Name: "v6reg_firewall_elements",
			Help: "Set and map elements the desired table holds for containers and their peer lists (what limits.node_elements bounds)."}),
		PeerSetsTruncated: prometheus.NewGauge(prometheus.GaugeOpts{Name: "v6reg_peer_sets_truncated",
			Help: "Consul-backed peer sets in use that have more peers than limits.peer_set_addresses and were cut to the oldest registrations."}),
		PeerWatches: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "v6reg_peer_watches",
			Help: "Consul-backed peer sets watched: mode=dedicated (a blocking query each), shared (refreshed when the catalog changes)."},
			[]string{"mode"}),
		WatchConnections: prometheus.NewGauge(prometheus.GaugeOpts{Name: "v6reg_consul_watch_connections",
			Help: "TCP connections the peer watches hold open to Consul (at most consul.watch_connections)."}),
	}
	for _, l := range desired.LimitNames {
		m.LimitRefusals.WithLabelValues(l)
	}
	for _, mode := range []string{"dedicated", "shared"} {
		m.PeerWatches.WithLabelValues(mode)
	}
	for _, r := range peers.IgnoredReasons {
		m.PeerEntriesIgnored.WithLabelValues(r)
	}
	for _, src := range []string{"docker", "consul"} {
		m.ResyncDrift.WithLabelValues(src)
	}
	for _, kind := range []string{"docker", "nomad", "consul", "netlink", "policy", "state"} {
		m.Errors.WithLabelValues(kind)
	}
	m.Registry.MustRegister(m.Containers, m.Closed, m.PolicyErrors, m.Leases, m.HeldDown, m.Registrations, m.FirewallRules,
		m.ReconcileSeconds, m.EventToApplied, m.EventToFirewall, m.EventToConsul, m.ResyncDrift, m.Errors, m.Drops, m.SpoofDrops, m.BridgeNetfilterOK, m.BridgeNetfilterRestored, m.PeerEntriesIgnored,
		m.LimitRefusals, m.FirewallElements, m.PeerSetsTruncated, m.PeerWatches, m.WatchConnections,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *Metrics) observe(d desired.Desired, ipam IPAM, policyErrs int) {
	closed, rules := 0, 0
	for _, w := range d.Workloads {
		if w.Closed {
			closed++
		}
	}
	for _, c := range d.Firewall.Containers {
		rules += len(c.Ingress) + len(c.Egress)
	}
	m.Containers.Set(float64(len(d.Workloads)))
	m.Closed.Set(float64(closed))
	m.PolicyErrors.Set(float64(policyErrs))
	m.Registrations.Set(float64(len(d.Registrations)))
	m.FirewallRules.Set(float64(rules))
	if ipam != nil {
		l, h := ipam.Counts()
		m.Leases.Set(float64(l))
		m.HeldDown.Set(float64(h))
	}
}
