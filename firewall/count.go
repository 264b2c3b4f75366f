package firewall

import (
	"net/netip"
	"strings"
)

// ElementCount is what one container adds to the table, in set and map
// elements, counted by the same compiler that Apply uses: callers bound
// the table by it (the agent's per-container and per-node limits) instead
// of guessing at the layout.
type ElementCount struct {
	// Own are the container's own elements: its addresses, their
	// bindings and counters, and one map element per (direction, protocol,
	// port) key of its rules.
	Own int
	// Lists are the elements of each peer list its rules name (sets
	// "lists" and "lists4": one per disjoint address range of the list's
	// peers), by the list's identity. A list is in the table once however
	// many containers name it, so a node's total counts each key once.
	Lists map[string]int
}

// Total is the container's elements as if it were alone in the table.
func (e ElementCount) Total() int {
	n := e.Own
	for _, l := range e.Lists {
		n += l
	}
	return n
}

// CountElements counts the elements c compiles to, with peerSets giving
// the prefixes of each peer set its rules name (State.PeerSets). c need
// not be valid: a rule naming an unknown set counts its list as empty.
func CountElements(c Container, peerSets func(name string) []netip.Prefix) ElementCount {
	cp := newCompiler()
	comp := cp.container(c)
	out := ElementCount{Own: len(comp.elems), Lists: make(map[string]int, len(comp.lists))}
	for _, pl := range comp.lists {
		out.Lists[strings.Join(pl.peers, "\x00")] = len(listElems(pl, peerSets))
	}
	return out
}

// ElementCounter counts like CountElements for a node's containers pass
// after pass: it keeps each container's compilation (by ID, until the
// container changes), so counting an unchanged container again costs a
// comparison instead of a compile, and it counts each peer list once per
// pass (StartPass) however many containers name it. Not safe for
// concurrent use.
type ElementCounter struct {
	cp    *compiler
	byID  map[string]*compiled
	seen  map[string]bool
	lists map[string]int // this pass's list counts, by identity
}

// NewElementCounter is an empty counter.
func NewElementCounter() *ElementCounter {
	return &ElementCounter{cp: newCompiler(), byID: map[string]*compiled{}, seen: map[string]bool{}, lists: map[string]int{}}
}

// StartPass starts counting a new state: peer sets may have changed since
// the last pass, and the containers not counted in the last pass are
// forgotten.
func (ec *ElementCounter) StartPass() {
	for id := range ec.byID {
		if !ec.seen[id] {
			delete(ec.byID, id)
		}
	}
	clear(ec.seen)
	clear(ec.lists)
}

// Count is CountElements(c, peerSets), with peerSets the same for every
// call of a pass.
func (ec *ElementCounter) Count(c Container, peerSets func(name string) []netip.Prefix) ElementCount {
	comp, ok := ec.byID[c.ID]
	if !ok || !SameContainer(&comp.c, &c) {
		comp = ec.cp.container(c)
		ec.byID[c.ID] = comp
	}
	ec.seen[c.ID] = true
	out := ElementCount{Own: len(comp.elems), Lists: make(map[string]int, len(comp.lists))}
	for _, pl := range comp.lists {
		id := strings.Join(pl.peers, "\x00")
		n, ok := ec.lists[id]
		if !ok {
			n = len(listElems(pl, peerSets))
			ec.lists[id] = n
		}
		out.Lists[id] = n
	}
	return out
}
