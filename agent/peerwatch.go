package agent

import (
	"slices"

	"github.com/v6reg/v6reg/api"
	"github.com/v6reg/v6reg/peers"
)

// PeerWatchOptions give the peer watches their own Consul client and its
// connection budget (consul.watch_connections). Zero values: the agent's
// Consul client and peers.DefaultWatchConnections.
type PeerWatchOptions struct {
	API         peers.API
	Connections int
	// Open reports the connections the watch client holds open now.
	Open func() int64
}

// newPeerWatches builds the peer watches with Options.PeerWatch (their
// own Consul client and connection budget) and the limits, reporting
// them in the metrics.
func (a *Agent) newPeerWatches() *peers.Watches {
	o, m := a.o.PeerWatch, a.o.Metrics
	return peers.NewWatches(peers.Options{
		API: a.peerAPI(), IDPrefix: a.o.IDPrefix, Log: a.log.With("source", "consul"),
		Trigger: a.consulTrigger,
		OnError: func() { m.Errors.WithLabelValues("consul").Inc() },
		OnIgnored: func(n map[string]int) {
			for r, c := range n {
				m.PeerEntriesIgnored.WithLabelValues(r).Set(float64(c))
			}
		},
		Connections: o.Connections, Open: o.Open,
		MaxAddrs: a.peerSetAddresses,
		OnBounds: func(dedicated, shared, truncated int) {
			m.PeerWatches.WithLabelValues("dedicated").Set(float64(dedicated))
			m.PeerWatches.WithLabelValues("shared").Set(float64(shared))
			m.PeerSetsTruncated.Set(float64(truncated))
		},
	})
}

// peerAPI is the Consul client the peers are resolved with.
func (a *Agent) peerAPI() peers.API {
	if a.o.PeerWatch.API != nil {
		return a.o.PeerWatch.API
	}
	return a.o.Consul
}

// peerSetAddresses is limits.peer_set_addresses as configured now.
func (a *Agent) peerSetAddresses() int {
	a.opMu.RLock()
	defer a.opMu.RUnlock()
	return a.operator.Limits.OrDefault().PeerSetAddresses
}

// peerCut is the watches' cut of key, if Consul's last answer for it was
// cut.
func (a *Agent) peerCut(key peers.Key) (peers.Cut, bool) {
	if a.peers == nil {
		return peers.Cut{}, false
	}
	for _, c := range a.peers.Cuts() {
		if c.Key == key {
			return c, true
		}
	}
	return peers.Cut{}, false
}

// withPeerCuts lists on s (a copy the caller owns) the peer sets cut to
// limits.peer_set_addresses, as the watches hold them now (a cut changes
// with Consul's answers, not only at a reconcile), each with the
// containers that use it as of the last reconcile.
func (a *Agent) withPeerCuts(s *api.Snapshot) {
	if a.peers == nil {
		return
	}
	var users map[peers.Key][]string
	if d := a.lastDesired.Load(); d != nil {
		users = d.PeerUsers
	}
	s.PeerSetsCut = nil
	for _, c := range a.peers.Cuts() {
		s.PeerSetsCut = append(s.PeerSetsCut, apiCut(c, slices.Compact(slices.Sorted(slices.Values(users[c.Key])))))
	}
}

func apiCut(c peers.Cut, containers []string) api.PeerSetCut {
	return api.PeerSetCut{Peer: c.Key.String(), Registrations: c.Registrations, Kept: c.Kept, Limit: c.Limit, Containers: containers}
}
