package agent

import "github.com/v6reg/v6reg/peers"

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
	api := peers.API(a.o.Consul)
	if o.API != nil {
		api = o.API
	}
	return peers.NewWatches(peers.Options{
		API: api, IDPrefix: a.o.IDPrefix, Log: a.log.With("source", "consul"),
		Trigger: a.consulTrigger,
		OnError: func() { m.Errors.WithLabelValues("consul").Inc() },
		OnIgnored: func(n map[string]int) {
			for r, c := range n {
				m.PeerEntriesIgnored.WithLabelValues(r).Set(float64(c))
			}
		},
		Connections: o.Connections, Open: o.Open,
		MaxAddrs: func() int {
			a.opMu.RLock()
			defer a.opMu.RUnlock()
			return a.operator.Limits.OrDefault().PeerSetAddresses
		},
		OnBounds: func(dedicated, shared, truncated int) {
			m.PeerWatches.WithLabelValues("dedicated").Set(float64(dedicated))
			m.PeerWatches.WithLabelValues("shared").Set(float64(shared))
			m.PeerSetsTruncated.Set(float64(truncated))
		},
	})
}
