package peers

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Cut is a peer set in use with more v6reg registrations in Consul than
// limits.peer_set_addresses: the firewall holds the Kept registered first.
type Cut struct {
	Key Key
	// Registrations is how many addresses v6reg registered for the key
	// in Consul's last answer.
	Registrations int
	Kept          int
	// Limit is limits.peer_set_addresses when that answer was cut.
	Limit int
}

// Cuts lists the sets cut, in key order.
func (w *Watches) Cuts() []Cut {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]Cut, 0, len(w.truncated))
	for _, c := range w.truncated {
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b Cut) int { return strings.Compare(a.Key.String(), b.Key.String()) })
	return out
}

// Resolution is what a peer key resolves to in Consul.
type Resolution struct {
	// Addrs is the set as the firewall takes it: the first Limit
	// registered, sorted.
	Addrs []netip.Prefix
	// Over are v6reg's registrations past Limit, sorted: in Consul, but
	// not in the set (nil unless cut).
	Over []netip.Prefix
	// Limit is the limit applied (0: none).
	Limit int
	// Ignored counts, by reason, the entries that are not peers.
	Ignored map[string]int
}

// Cut says whether the set was cut to Limit, and how.
func (r Resolution) Cut(key Key) (Cut, bool) {
	return Cut{Key: key, Registrations: len(r.Addrs) + len(r.Over), Kept: len(r.Addrs), Limit: r.Limit}, len(r.Over) > 0
}

// Resolve answers, once, what a peer key (service:NAMESPACE/NAME or
// job:NAMESPACE/NAME) resolves to in Consul now, exactly as the agent's
// watches do: only v6reg's registrations, cut to limit
// (limits.peer_set_addresses; 0: no cut) the same way.
func Resolve(ctx context.Context, api API, idPrefix string, key Key, limit int) (Resolution, error) {
	q := queryOf(key)
	entries, _, err := api.HealthService(ctx, q.service, q.tag, 0)
	if err != nil {
		return Resolution{}, fmt.Errorf("consul query for %s: %w", key, err)
	}
	kept, over, ignored := q.prefixes(idPrefix, entries, limit)
	return Resolution{Addrs: kept, Over: over, Limit: limit, Ignored: ignored}, nil
}
