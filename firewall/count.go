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
