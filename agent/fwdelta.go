package agent

import (
	"context"
	"net/netip"
	"slices"

	"github.com/v6reg/v6reg/firewall"
	"github.com/v6reg/v6reg/peers"
)

// DeltaApplier is a Firewall that also takes per-container changes
// (*firewall.Firewall does): the agent then sends it only the containers
// and peer sets a pass changed, and the full state on the periodic
// resync (and whenever a delta is refused).
type DeltaApplier interface {
	Firewall
	ApplyDelta(ctx context.Context, d firewall.Delta) (firewall.Changes, error)
}

// applyFirewall brings the firewall to next: by a delta from prev (the
// state last applied) when it can, else with the whole state.
// users index the containers by the Consul-backed peers they name (for
// the log of what a peer change touches).
func (a *Agent) applyFirewall(ctx context.Context, prev *firewall.State, next firewall.State, users map[peers.Key][]string, full bool) (firewall.Changes, error) {
	da, ok := a.o.Firewall.(DeltaApplier)
	if !ok || full || prev == nil || !sameTableWide(prev, &next) {
		return a.o.Firewall.Apply(ctx, next)
	}
	d := firewallDelta(prev, &next)
	if d.Empty() {
		return firewall.Changes{}, nil
	}
	for name := range d.PeerSets {
		if key, err := peers.ParseKey(name); err == nil && users != nil {
			a.log.Debug("peer set changed", "peer", name, "containers", len(users[key]))
		}
	}
	ch, err := da.ApplyDelta(ctx, d)
	if err != nil {
		// The delta was refused whole (nothing changed), or the table
		// is not known: the full state says what is wrong, or repairs.
		a.log.Warn("firewall delta failed; applying the whole state", "err", err)
		return a.o.Firewall.Apply(ctx, next)
	}
	return ch, nil
}

// sameTableWide reports whether two states share what only Apply changes.
func sameTableWide(a, b *firewall.State) bool {
	return a.Prefix == b.Prefix && a.Gateway == b.Gateway && a.Bridge == b.Bridge &&
		firewall.SameRules(a.NodePorts, b.NodePorts)
}

// firewallDelta is what turns prev into next (containers compared with
// firewall.SameContainer, which takes a memoized evaluation's rules, the
// same slices pass after pass, as equal at once).
func firewallDelta(prev, next *firewall.State) firewall.Delta {
	var d firewall.Delta
	old := make(map[string]*firewall.Container, len(prev.Containers))
	for i := range prev.Containers {
		old[prev.Containers[i].ID] = &prev.Containers[i]
	}
	seen := make(map[string]bool, len(next.Containers))
	for i := range next.Containers {
		c := &next.Containers[i]
		seen[c.ID] = true
		if o, ok := old[c.ID]; !ok || !firewall.SameContainer(o, c) {
			d.Upsert = append(d.Upsert, *c)
		}
	}
	for id := range old {
		if !seen[id] {
			d.Remove = append(d.Remove, id)
		}
	}
	for name, ps := range next.PeerSets {
		if o, ok := prev.PeerSets[name]; !ok || !slices.Equal(o, ps) {
			if d.PeerSets == nil {
				d.PeerSets = map[string][]netip.Prefix{}
			}
			d.PeerSets[name] = ps
		}
	}
	for name := range prev.PeerSets {
		if _, ok := next.PeerSets[name]; !ok {
			d.RemovePeerSets = append(d.RemovePeerSets, name)
		}
	}
	return d
}
