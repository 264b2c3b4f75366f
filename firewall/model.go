package firewall

import (
	"maps"
	"net/netip"
	"slices"
	"strings"
)

// model is the desired table as of the last Apply, broken down by
// container and peer set, so that the next Apply compiles, validates and
// diffs only what changed. When the ruleset generation shows that nobody
// else committed since our last commit, model.want is exactly the live
// table, and a change's plan is computed from the model alone.
type model struct {
	prefix  netip.Prefix
	gateway netip.Addr
	epoch   uint64

	conts    map[string]*compiled // by container ID
	order    []*compiled          // as in the last State: most lookups are positional
	addrs    map[netip.Addr]*compiled
	peers    map[string]peerEntry
	peerRefs map[string]int // peer set -> containers naming it
	chainRef map[string]int // peer chain -> containers jumping to it

	want content
}

type peerEntry struct {
	prefixes []netip.Prefix // a copy, to detect changes
	spec     setSpec
	elems    []elem
}

func newModel(prefix netip.Prefix, gateway netip.Addr) *model {
	m := &model{prefix: prefix, gateway: gateway,
		conts: map[string]*compiled{}, addrs: map[netip.Addr]*compiled{},
		peers: map[string]peerEntry{}, peerRefs: map[string]int{}, chainRef: map[string]int{},
		want: content{sets: map[string]setSpec{}, elems: map[string]map[string]elem{}, chains: map[string]chainSpec{}},
	}
	for _, ss := range staticSets {
		m.want.sets[ss.name] = ss
		m.want.elems[ss.name] = map[string]elem{}
	}
	for _, ch := range baseChains(prefix) {
		m.want.chains[ch.name] = ch
	}
	return m
}

// update turns the model into s and returns the plan that turns the old
// model's table into the new one. It validates only the containers and
// peer sets that changed. ok is false, and the model untouched, when s is
// invalid (the caller runs State.Validate for the full report) or when s
// changes the prefix or gateway (the caller starts a new model).
// reuse, if not nil, offers compiled containers of an older model.
func (m *model) update(s State, cp *compiler, reuse map[string]*compiled) (p plan, ok bool) {
	if s.Prefix != m.prefix || s.Gateway != m.gateway {
		return plan{}, false
	}
	m.epoch++
	ep := m.epoch
	p = plan{delElems: map[string][]elem{}, addElems: map[string][]elem{}}
	add := map[string]map[string]elem{} // set -> id -> elem
	del := map[string]map[string]elem{}
	put := func(mm map[string]map[string]elem, set string, e elem) {
		if mm[set] == nil {
			mm[set] = map[string]elem{}
		}
		mm[set][e.id()] = e
	}

	// Containers: find each one's previous version, positionally first.
	order := make([]*compiled, len(s.Containers))
	var fresh, gone []*compiled // new versions; old versions to take out
	freshIDs := map[string]bool{}
	freshAddrs := map[netip.Addr]bool{}
	for i := range s.Containers {
		c := &s.Containers[i]
		var prev *compiled
		if i < len(m.order) && m.order[i].c.ID == c.ID {
			prev = m.order[i]
		} else {
			prev = m.conts[c.ID]
		}
		if freshIDs[c.ID] || prev != nil && prev.seen == ep {
			return plan{}, false // duplicate ID
		}
		if prev != nil {
			prev.seen = ep
			if sameContainer(&prev.c, c) {
				prev.kept = ep
				order[i] = prev
				continue
			}
			gone = append(gone, prev)
		}
		if len(s.validateContainer(i, *c)) > 0 || freshAddrs[c.Addr] {
			return plan{}, false
		}
		var nc *compiled
		if r := reuse[c.ID]; r != nil && sameContainer(&r.c, c) {
			nc = &compiled{c: r.c, elems: r.elems, chains: r.chains, peers: r.peers}
		} else {
			nc = cp.container(*c)
		}
		nc.seen, nc.kept = ep, ep
		freshIDs[c.ID] = true
		freshAddrs[c.Addr] = true
		fresh = append(fresh, nc)
		order[i] = nc
	}
	if len(s.Containers)-len(fresh)+len(gone) < len(m.conts) { // some IDs are gone
		for _, old := range m.order {
			if old.seen != ep {
				gone = append(gone, old)
			}
		}
	}
	// An address may move to a new container only if its old owner left
	// it in this same State.
	for _, nc := range fresh {
		if o := m.addrs[nc.c.Addr]; o != nil && o.c.ID != nc.c.ID && o.kept == ep {
			return plan{}, false
		}
	}

	// Peer sets.
	refs := map[string]int{}
	for _, old := range gone {
		for _, pn := range old.peers {
			refs[pn]--
		}
	}
	for _, nc := range fresh {
		for _, pn := range nc.peers {
			refs[pn]++
		}
	}
	type peerChange struct {
		name string
		old  *peerEntry
		new  *peerEntry
	}
	var pcs []peerChange
	for name, ps := range s.PeerSets {
		old, had := m.peers[name]
		if had && slices.Equal(old.prefixes, ps) {
			continue
		}
		if len(validatePeerSet(name, ps)) > 0 {
			return plan{}, false
		}
		spec, es := peerSetElems(name, ps)
		ne := &peerEntry{prefixes: slices.Clone(ps), spec: spec, elems: es}
		pc := peerChange{name: name, new: ne}
		if had {
			pc.old = &old
		}
		pcs = append(pcs, pc)
	}
	for name, old := range m.peers {
		if _, ok := s.PeerSets[name]; !ok {
			if m.peerRefs[name]+refs[name] > 0 {
				return plan{}, false // still named by a container
			}
			pcs = append(pcs, peerChange{name: name, old: &old})
		}
	}

	// From here on s is valid: compute the element and chain changes.
	chainDelta := map[string]int{}
	chainSpecs := map[string]chainSpec{}
	for _, old := range gone {
		for _, se := range old.elems {
			put(del, se.set, se.e)
		}
		for _, ch := range old.chains {
			chainDelta[ch.name]--
		}
	}
	addElem := func(set string, e elem) {
		if d, ok := del[set][e.id()]; ok && d.same(e) && string(d.key) == string(e.key) {
			delete(del[set], e.id()) // unchanged: neither delete nor add
			return
		}
		put(add, set, e)
	}
	for _, nc := range fresh {
		for _, se := range nc.elems {
			addElem(se.set, se.e)
		}
		for _, ch := range nc.chains {
			chainDelta[ch.name]++
			chainSpecs[ch.name] = ch
		}
	}
	for _, pc := range pcs {
		sn := peerSetName(pc.name)
		switch {
		case pc.new == nil:
			p.delSets = append(p.delSets, sn)
		case pc.old == nil:
			p.addSets = append(p.addSets, pc.new.spec)
		}
		if pc.old != nil && pc.new != nil {
			for _, e := range pc.old.elems {
				put(del, sn, e)
			}
		}
		if pc.new != nil {
			for _, e := range pc.new.elems {
				addElem(sn, e)
			}
		}
	}
	for name, d := range chainDelta {
		was := m.chainRef[name]
		switch {
		case was == 0 && was+d > 0:
			p.addChains = append(p.addChains, chainSpecs[name])
		case was > 0 && was+d == 0:
			p.delChains = append(p.delChains, name)
		}
	}

	// Commit to the model.
	for _, old := range gone {
		if m.conts[old.c.ID] == old {
			delete(m.conts, old.c.ID)
		}
		if m.addrs[old.c.Addr] == old {
			delete(m.addrs, old.c.Addr)
		}
		for _, pn := range old.peers {
			m.peerRefs[pn]--
		}
	}
	for _, nc := range fresh {
		m.conts[nc.c.ID] = nc
		m.addrs[nc.c.Addr] = nc
		for _, pn := range nc.peers {
			m.peerRefs[pn]++
		}
	}
	for pn := range refs {
		if m.peerRefs[pn] == 0 {
			delete(m.peerRefs, pn)
		}
	}
	m.order = order
	for _, pc := range pcs {
		sn := peerSetName(pc.name)
		if pc.new == nil {
			delete(m.peers, pc.name)
			delete(m.want.sets, sn)
			delete(m.want.elems, sn)
			delete(del, sn) // deleting the set removes its elements
			continue
		}
		m.peers[pc.name] = *pc.new
		m.want.sets[sn] = pc.new.spec
		if m.want.elems[sn] == nil {
			m.want.elems[sn] = map[string]elem{}
		}
	}
	for name, d := range chainDelta {
		n := m.chainRef[name] + d
		if n > 0 {
			m.chainRef[name] = n
			if _, ok := m.want.chains[name]; !ok {
				m.want.chains[name] = chainSpecs[name]
			}
		} else {
			delete(m.chainRef, name)
			delete(m.want.chains, name)
		}
	}
	byID := func(a, b elem) int { return strings.Compare(a.id(), b.id()) }
	for set, es := range del {
		for id, e := range es {
			delete(m.want.elems[set], id)
			p.delElems[set] = append(p.delElems[set], e)
		}
	}
	for set, es := range add {
		for id, e := range es {
			m.want.elems[set][id] = e
			p.addElems[set] = append(p.addElems[set], e)
		}
	}
	for _, es := range p.delElems {
		slices.SortFunc(es, byID)
	}
	for _, es := range p.addElems {
		slices.SortFunc(es, byID)
	}
	for set, es := range p.delElems {
		if len(es) == 0 {
			delete(p.delElems, set)
		}
	}
	slices.SortFunc(p.addSets, func(a, b setSpec) int { return strings.Compare(a.name, b.name) })
	slices.SortFunc(p.addChains, func(a, b chainSpec) int { return strings.Compare(a.name, b.name) })
	slices.Sort(p.delChains)
	slices.Sort(p.delSets)
	return p, true
}

// containerIDs lists the model's containers, for tests.
func (m *model) containerIDs() []string { return slices.Sorted(maps.Keys(m.conts)) }
