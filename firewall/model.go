package firewall

import (
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
	prefix    netip.Prefix
	gateway   netip.Addr
	bridge    string
	nodePorts []Rule // a copy; a change starts a new model (it rewrites chain "node")
	epoch     uint64

	conts    map[string]*compiled // by container ID
	order    []*compiled          // as in the last State: most lookups are positional
	addrs    map[netip.Addr]*compiled
	ports    map[int]*compiled // bridge ports (Container.Port), bound or closed
	peers    map[string]peerEntry
	peerRefs map[string]int // peer set -> containers naming it
	// peerUsers are those containers: a peer set that loses prefixes
	// judges their flows only, not every container's.
	peerUsers map[string]map[*compiled]bool
	listRef   map[listID]int // peer list -> containers naming it
	lists     map[listID]listEntry

	want content
}

type peerEntry struct {
	prefixes []netip.Prefix // a copy, to detect changes
}

// listEntry is a peer list in use and its elements in sets "lists" and
// "lists4".
type listEntry struct {
	pl    peerList
	elems []setElem
}

// newModel is an empty model for the table-wide fields of s (prefix,
// gateway, node ports); update adds the containers.
func newModel(s State) *model {
	m := &model{prefix: s.Prefix, gateway: s.Gateway, bridge: s.Bridge, nodePorts: cloneRules(s.NodePorts),
		conts: map[string]*compiled{}, addrs: map[netip.Addr]*compiled{}, ports: map[int]*compiled{},
		peers: map[string]peerEntry{}, peerRefs: map[string]int{}, peerUsers: map[string]map[*compiled]bool{}, listRef: map[listID]int{}, lists: map[listID]listEntry{},
		want: content{sets: map[string]setSpec{}, elems: map[string]map[string]elem{}, chains: map[string]chainSpec{}},
	}
	for _, ss := range staticSets {
		m.want.sets[ss.name] = ss
		m.want.elems[ss.name] = map[string]elem{}
	}
	for _, ch := range baseChains(s.Prefix, s.NodePorts, s.Bridge) {
		m.want.chains[ch.name] = ch
	}
	return m
}

// update turns the model into s and returns the plan that turns the old
// model's table into the new one. It validates only the containers and
// peer sets that changed. ok is false, and the model untouched, when s is
// invalid (the caller runs State.Validate for the full report) or when s
// changes the prefix, gateway or node ports (the caller starts a new
// model).
// reuse, if not nil, offers compiled containers of an older model.
// withPlan false skips building the plan's element lists (the caller
// diffs m.want against the live table instead): the first build of a
// model at 10,000 containers spent a third of its time sorting them.
func (m *model) update(s State, cp *compiler, reuse map[string]*compiled, withPlan bool) (p plan, ok bool) {
	if s.Prefix != m.prefix || s.Gateway != m.gateway || s.Bridge != m.bridge ||
		len(s.NodePorts) != len(m.nodePorts) || !SameRules(s.NodePorts, m.nodePorts) {
		return plan{}, false
	}
	m.epoch++
	ep := m.epoch
	// A model built from nothing, without a plan, has nothing to delete:
	// its elements go straight into m.want.
	direct := !withPlan && len(m.conts) == 0 && len(m.lists) == 0

	// Containers: find each one's previous version, positionally first.
	order := make([]*compiled, len(s.Containers))
	var fresh, gone []*compiled // new versions; old versions to take out
	freshIDs := map[string]bool{}
	freshAddrs := map[netip.Addr]bool{}
	freshPorts := map[int]bool{}
	if len(m.conts) == 0 { // a new model: every container is fresh
		freshIDs = make(map[string]bool, len(s.Containers))
		freshAddrs = make(map[netip.Addr]bool, len(s.Containers))
		freshPorts = make(map[int]bool, len(s.Containers))
		m.conts = make(map[string]*compiled, len(s.Containers))
		m.addrs = make(map[netip.Addr]*compiled, len(s.Containers))
		m.ports = make(map[int]*compiled, len(s.Containers))
	}
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
			if SameContainer(&prev.c, c) {
				prev.kept = ep
				order[i] = prev
				continue
			}
			gone = append(gone, prev)
		}
		if len(s.validateContainer(i, *c)) > 0 || c.Addr.IsValid() && freshAddrs[c.Addr] || c.Addr4.IsValid() && freshAddrs[c.Addr4] ||
			c.Port > 0 && freshPorts[c.Port] {
			return plan{}, false
		}
		var nc *compiled
		if r := reuse[c.ID]; r != nil && SameContainer(&r.c, c) {
			nc = &compiled{c: r.c, elems: r.elems, lists: r.lists, peers: r.peers}
		} else {
			nc = cp.container(*c)
		}
		nc.seen, nc.kept = ep, ep
		freshIDs[c.ID] = true
		if c.Addr.IsValid() { // a closed container has none
			freshAddrs[c.Addr] = true
		}
		if c.Addr4.IsValid() {
			freshAddrs[c.Addr4] = true
		}
		if c.Port > 0 {
			freshPorts[c.Port] = true
		}
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
		for _, a := range []netip.Addr{nc.c.Addr, nc.c.Addr4} {
			if o := m.addrs[a]; a.IsValid() && o != nil && o.c.ID != nc.c.ID && o.kept == ep {
				return plan{}, false
			}
		}
		// So may a bridge port: a closed port is never one another
		// container is bound to.
		if o := m.ports[nc.c.Port]; nc.c.Port > 0 && o != nil && o.c.ID != nc.c.ID && o.kept == ep {
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
	var pcs []peerChange
	for name, ps := range s.PeerSets {
		old, had := m.peers[name]
		if had && slices.Equal(old.prefixes, ps) {
			continue
		}
		if len(validatePeerSet(name, ps)) > 0 {
			return plan{}, false
		}
		ne := &peerEntry{prefixes: slices.Clone(ps)}
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

	// From here on s is valid.
	for i, c := range order {
		c.pos = i
	}
	m.order = order
	return m.change(fresh, gone, pcs, func(name string) []netip.Prefix { return s.PeerSets[name] }, withPlan, direct), true
}

// peerChange is a peer set added (old nil), removed (new nil) or changed.
type peerChange struct {
	name string
	old  *peerEntry
	new  *peerEntry
}

// change takes the containers gone out of the model and puts the fresh
// ones in (both already validated, m.order already holding what the model
// will hold), applies the peer set changes, and returns the plan that
// turns the old model's table into the new one. prefixesOf gives every
// peer set's prefixes in the new state. Its cost is that of the change
// (a peer set that loses prefixes marks the containers naming it, found
// in peerUsers, for revocation).
func (m *model) change(fresh, gone []*compiled, pcs []peerChange, prefixesOf func(string) []netip.Prefix, withPlan, direct bool) (p plan) {
	p = plan{delElems: map[string][]elem{}, addElems: map[string][]elem{}}
	add := map[string]map[string]elem{} // set -> id -> elem
	del := map[string]map[string]elem{}
	put := func(mm map[string]map[string]elem, set string, e elem) {
		if mm[set] == nil {
			mm[set] = map[string]elem{}
		}
		mm[set][e.id()] = e
	}
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
	p.revoke = map[netip.Addr]bool{}
	for _, old := range gone {
		old.c.addAddrs(p.revoke)
	}
	listDelta := map[listID]int{}
	listSpecs := map[listID]peerList{}
	for _, old := range gone {
		for _, se := range old.elems {
			put(del, se.set, se.e)
		}
		for _, pl := range old.lists {
			listDelta[pl.id]--
		}
	}
	addElem := func(set string, e elem) {
		if direct {
			m.want.elems[set][e.id()] = e
			return
		}
		if d, ok := del[set][e.id()]; ok && d.same(e) && string(d.key) == string(e.key) {
			delete(del[set], e.id()) // unchanged: neither delete nor add
			return
		}
		put(add, set, e)
	}
	if direct {
		// Size the maps once: growing them to 20,000 elements rehashed
		// each several times.
		n := map[string]int{}
		for _, nc := range fresh {
			for _, se := range nc.elems {
				n[se.set]++
			}
		}
		for set, k := range n {
			if len(m.want.elems[set]) == 0 {
				m.want.elems[set] = make(map[string]elem, k)
			}
		}
	}
	for _, nc := range fresh {
		for _, se := range nc.elems {
			addElem(se.set, se.e)
		}
		for _, pl := range nc.lists {
			listDelta[pl.id]++
			listSpecs[pl.id] = pl
		}
	}
	// Peer lists: a list coming into use gets its elements in "lists", one
	// going out of use loses them, and a list in use whose peer sets
	// changed is recomputed (unchanged elements are neither deleted nor
	// added).
	changed := map[string]bool{}
	for _, pc := range pcs {
		changed[pc.name] = true
	}
	listNew := map[listID]listEntry{}
	for id, d := range listDelta {
		was := m.listRef[id]
		switch {
		case was == 0 && was+d > 0:
			le := listEntry{pl: listSpecs[id], elems: listElems(listSpecs[id], prefixesOf)}
			for _, se := range le.elems {
				addElem(se.set, se.e)
			}
			listNew[id] = le
		case was > 0 && was+d == 0:
			for _, se := range m.lists[id].elems {
				put(del, se.set, se.e)
			}
		}
	}
	if len(changed) > 0 {
		for id, le := range m.lists {
			if m.listRef[id]+listDelta[id] == 0 || !slices.ContainsFunc(le.pl.peers, func(p string) bool { return changed[p] }) {
				continue
			}
			for _, se := range le.elems {
				put(del, se.set, se.e)
			}
			nl := listEntry{pl: le.pl, elems: listElems(le.pl, prefixesOf)}
			for _, se := range nl.elems {
				addElem(se.set, se.e)
			}
			listNew[id] = nl
		}
	}

	// Commit to the model.
	for _, old := range gone {
		if m.conts[old.c.ID] == old {
			delete(m.conts, old.c.ID)
		}
		if old.c.Addr.IsValid() && m.addrs[old.c.Addr] == old {
			delete(m.addrs, old.c.Addr)
		}
		if old.c.Port > 0 && m.ports[old.c.Port] == old {
			delete(m.ports, old.c.Port)
		}
		if old.c.Addr4.IsValid() && m.addrs[old.c.Addr4] == old {
			delete(m.addrs, old.c.Addr4)
		}
		for _, pn := range old.peers {
			m.peerRefs[pn]--
			delete(m.peerUsers[pn], old)
			if len(m.peerUsers[pn]) == 0 {
				delete(m.peerUsers, pn)
			}
		}
	}
	for _, nc := range fresh {
		m.conts[nc.c.ID] = nc
		if nc.c.Addr.IsValid() {
			m.addrs[nc.c.Addr] = nc
		}
		if nc.c.Port > 0 {
			m.ports[nc.c.Port] = nc
		}
		if nc.c.Addr4.IsValid() {
			m.addrs[nc.c.Addr4] = nc
		}
		for _, pn := range nc.peers {
			m.peerRefs[pn]++
			if m.peerUsers[pn] == nil {
				m.peerUsers[pn] = map[*compiled]bool{}
			}
			m.peerUsers[pn][nc] = true
		}
	}
	for pn := range refs {
		if m.peerRefs[pn] == 0 {
			delete(m.peerRefs, pn)
		}
	}
	var shrunk []string
	for _, pc := range pcs {
		if pc.old != nil && (pc.new == nil || lost(pc.old.prefixes, pc.new.prefixes)) {
			shrunk = append(shrunk, pc.name)
		}
	}
	for _, pn := range shrunk {
		for c := range m.peerUsers[pn] {
			c.c.addAddrs(p.revoke)
		}
	}
	for _, pc := range pcs {
		if pc.new == nil {
			delete(m.peers, pc.name)
		} else {
			m.peers[pc.name] = *pc.new
		}
	}
	for id, d := range listDelta {
		if n := m.listRef[id] + d; n > 0 {
			m.listRef[id] = n
		} else {
			delete(m.listRef, id)
			delete(m.lists, id)
		}
	}
	for id, le := range listNew {
		m.lists[id] = le
	}
	for set, es := range del {
		for id, e := range es {
			delete(m.want.elems[set], id)
			if withPlan {
				p.delElems[set] = append(p.delElems[set], e)
			}
		}
	}
	for set, es := range add {
		for id, e := range es {
			m.want.elems[set][id] = e
			if withPlan {
				p.addElems[set] = append(p.addElems[set], e)
			}
		}
	}
	for _, es := range p.delElems {
		slices.SortFunc(es, cmpElem)
	}
	for _, es := range p.addElems {
		slices.SortFunc(es, cmpElem)
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
	return p
}
