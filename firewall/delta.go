package firewall

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Delta is a change to some containers and peer sets of the state last
// applied. ApplyDelta(d) makes the table what Apply(s') would, where s'
// is that state with:
//   - every container whose ID is in Remove taken out (an ID that is not
//     there is ignored, so a removal can be repeated);
//   - every container of Upsert put in, replacing the container with its
//     ID if there is one (an upsert equal to what is there sends nothing);
//   - every peer set of PeerSets added or replaced (nil or empty: a set
//     with no prefixes, which matches nothing);
//   - every peer set named in RemovePeerSets taken out (absent: ignored).
//
// Prefix, Gateway, Bridge and NodePorts are the state's own: a change of
// those goes through Apply.
type Delta struct {
	Upsert         []Container
	Remove         []string // container IDs
	PeerSets       map[string][]netip.Prefix
	RemovePeerSets []string
}

// Empty reports whether d changes nothing.
func (d Delta) Empty() bool {
	return len(d.Upsert) == 0 && len(d.Remove) == 0 && len(d.PeerSets) == 0 && len(d.RemovePeerSets) == 0
}

// ErrNoState is returned by ApplyDelta before Apply accepted a State:
// there is nothing to apply a delta to.
var ErrNoState = errors.New("firewall: ApplyDelta before any Apply; call Apply with the full State first")

// ApplyDelta applies a change to a few containers or peer sets to the
// state last given to Apply (or to ApplyDelta), with a cost that does not
// grow with the number of containers: only the containers and peer sets
// it names are validated, compiled and compared (a peer set that loses
// prefixes also marks the containers naming it for revocation). It is the per-event
// entry point; Apply(State) stays the full resync, and the two mix freely:
// Apply after ApplyDelta diffs against the state the deltas left, so an
// Apply of the same containers and peer sets sends nothing.
//
// The result must be a valid State, as Apply checks it: every upserted
// container valid with its rules naming existing peer sets (this delta's
// or earlier ones), no address owned by two containers, no peer set
// removed while a container still names it, no ID both upserted and
// removed, no peer set both set and removed. If not, ApplyDelta returns
// the reasons and changes nothing: neither the table nor the state that
// later deltas and Watch start from.
//
// Otherwise the new state becomes what Watch repairs to (even when sending
// fails, like Apply), and the change is sent as one netlink batch, so one
// container's change is atomic. If the table is not known to be as the
// last commit left it (someone else committed to nftables since, or an
// earlier send failed), ApplyDelta reads and diffs the whole table, as
// Apply does. After a commit that takes something away (a container
// removed or changed, a peer set that lost prefixes) the established
// flows the new state denies are cut, as after Apply (revoke.go).
//
// ApplyDelta copies what it keeps: the caller may reuse d afterwards.
// It holds the same lock as Apply and the repair of Watch: there is one
// writer.
func (f *Firewall) ApplyDelta(ctx context.Context, d Delta) (Changes, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return Changes{}, err
	}
	if f.m == nil {
		return Changes{}, ErrNoState
	}
	if d.Empty() {
		return Changes{}, nil
	}
	g0, gerr := f.gen.read()
	known := f.live && gerr == nil && g0 == f.liveGen
	p, err := f.m.applyDelta(d, f.comp, known)
	if err != nil {
		return Changes{}, err
	}
	if known {
		return f.commit(p, g0, gerr, true, nil)
	}
	return f.full(nil, g0, gerr, p.revoke, nil)
}

// applyDelta is ApplyDelta's change to the model; see change for withPlan.
// On error the model is untouched.
func (m *model) applyDelta(d Delta, cp *compiler, withPlan bool) (plan, error) {
	var errs []string
	removed := map[string]bool{}
	for _, id := range d.Remove {
		removed[id] = true
	}
	peerGone := map[string]bool{}
	for _, name := range d.RemovePeerSets {
		peerGone[name] = true
		if _, ok := d.PeerSets[name]; ok {
			errs = append(errs, fmt.Sprintf("peer set %q is both set and removed", name))
		}
	}
	hasPeer := func(name string) bool {
		if _, ok := d.PeerSets[name]; ok {
			return true
		}
		_, ok := m.peers[name]
		return ok && !peerGone[name]
	}
	st := State{Prefix: m.prefix, Gateway: m.gateway}

	// Containers: the upserts that change something are fresh, and their
	// old versions gone, with the removed ones.
	var fresh, gone []*compiled
	upserted := map[string]bool{}
	for i := range d.Upsert {
		c := &d.Upsert[i]
		if upserted[c.ID] {
			errs = append(errs, fmt.Sprintf("container %d (%q): upserted twice", i, c.ID))
			continue
		}
		upserted[c.ID] = true
		if removed[c.ID] {
			errs = append(errs, fmt.Sprintf("container %d (%q): both upserted and removed", i, c.ID))
			continue
		}
		if e := st.validateContainerPeers(i, *c, hasPeer); len(e) > 0 {
			errs = append(errs, e...)
			continue
		}
		prev := m.conts[c.ID]
		if prev != nil && SameContainer(&prev.c, c) {
			continue
		}
		if prev != nil {
			gone = append(gone, prev)
		}
		fresh = append(fresh, cp.container(*c))
	}
	for id := range removed { // a set: an ID listed twice goes once
		if prev := m.conts[id]; prev != nil {
			gone = append(gone, prev)
		}
	}
	// Addresses: each owned by one container of the new state. An old
	// owner frees its address if it is gone (removed, or changed: its new
	// version is among the fresh).
	leaving := map[*compiled]bool{}
	for _, g := range gone {
		leaving[g] = true
	}
	claimed := map[netip.Addr]string{}
	claimedPort := map[int]string{}
	for _, nc := range fresh {
		for _, a := range []netip.Addr{nc.c.Addr, nc.c.Addr4} {
			if !a.IsValid() {
				continue
			}
			if other, ok := claimed[a]; ok {
				errs = append(errs, fmt.Sprintf("container %q: address %s is also container %q's", nc.c.ID, a, other))
			}
			claimed[a] = nc.c.ID
			if o := m.addrs[a]; o != nil && o.c.ID != nc.c.ID && !leaving[o] {
				errs = append(errs, fmt.Sprintf("container %q: address %s is container %q's", nc.c.ID, a, o.c.ID))
			}
		}
		// Bridge ports likewise: one container each, so a closed port is
		// never one another container is bound to.
		if p := nc.c.Port; p > 0 {
			if other, ok := claimedPort[p]; ok {
				errs = append(errs, fmt.Sprintf("container %q: bridge port %d is also container %q's", nc.c.ID, p, other))
			}
			claimedPort[p] = nc.c.ID
			if o := m.ports[p]; o != nil && o.c.ID != nc.c.ID && !leaving[o] {
				errs = append(errs, fmt.Sprintf("container %q: bridge port %d is container %q's", nc.c.ID, p, o.c.ID))
			}
		}
	}

	// Peer sets.
	var pcs []peerChange
	for name, ps := range d.PeerSets {
		old, had := m.peers[name]
		if had && slices.Equal(old.prefixes, ps) {
			continue
		}
		if e := validatePeerSet(name, ps); len(e) > 0 {
			errs = append(errs, e...)
			continue
		}
		pc := peerChange{name: name, new: &peerEntry{prefixes: slices.Clone(ps)}}
		if had {
			pc.old = &old
		}
		pcs = append(pcs, pc)
	}
	if len(peerGone) > 0 {
		refs := map[string]int{}
		for _, g := range gone {
			for _, pn := range g.peers {
				refs[pn]--
			}
		}
		for _, nc := range fresh {
			for _, pn := range nc.peers {
				refs[pn]++
			}
		}
		for _, name := range d.RemovePeerSets {
			old, had := m.peers[name]
			if !had {
				continue
			}
			if m.peerRefs[name]+refs[name] > 0 {
				errs = append(errs, fmt.Sprintf("peer set %q: still named by a container; remove or change those containers in the same delta", name))
				continue
			}
			pcs = append(pcs, peerChange{name: name, old: &old})
		}
	}
	if len(errs) > 0 {
		slices.Sort(errs)
		return plan{}, fmt.Errorf("invalid firewall delta: %s", strings.Join(errs, "; "))
	}

	// From here on the delta is valid: m.order loses the gone and gains
	// the fresh (the order is only a hint for Apply's positional lookup).
	for _, g := range gone {
		if g.pos < len(m.order) && m.order[g.pos] == g {
			last := m.order[len(m.order)-1]
			m.order[g.pos] = last
			last.pos = g.pos
			m.order[len(m.order)-1] = nil
			m.order = m.order[:len(m.order)-1]
		}
	}
	for _, nc := range fresh {
		nc.pos = len(m.order)
		m.order = append(m.order, nc)
	}
	prefixesOf := func(name string) []netip.Prefix {
		if ps, ok := d.PeerSets[name]; ok {
			return ps
		}
		return m.peers[name].prefixes
	}
	return m.change(fresh, gone, pcs, prefixesOf, withPlan, false), nil
}
