package firewall

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"golang.org/x/sys/unix"
)

// plan is the difference between the live tables and the desired ones.
// Set and chain names are qualified (see tableOf).
type plan struct {
	createTable   bool // inet v6reg
	createBridge  bool // bridge v6reg
	addSets       []setSpec
	addChains     []chainSpec // created empty, filled with their rules later
	rewriteChains []chainSpec // exist with other rules: flushed and refilled
	delElems      map[string][]elem
	addElems      map[string][]elem
	delChains     []string
	delSets       []string
	// revoke are the addresses whose established flows the change may
	// no longer allow (see revoke.go); not part of the batch.
	revoke map[netip.Addr]bool
}

func (p plan) empty() bool {
	return !p.createTable && !p.createBridge && len(p.addSets) == 0 && len(p.addChains) == 0 && len(p.rewriteChains) == 0 &&
		len(p.delElems) == 0 && len(p.addElems) == 0 && len(p.delChains) == 0 && len(p.delSets) == 0
}

func (p plan) changes() Changes {
	c := Changes{TableCreated: p.createTable, BridgeTableCreated: p.createBridge, SetsAdded: len(p.addSets), SetsRemoved: len(p.delSets),
		ChainsAdded: len(p.addChains), ChainsRemoved: len(p.delChains), ChainsRewritten: len(p.rewriteChains)}
	for _, es := range p.addElems {
		c.ElemsAdded += len(es)
	}
	for _, es := range p.delElems {
		c.ElemsRemoved += len(es)
	}
	return c
}

// diff computes what turns live into want. live == nil means neither
// table exists; a table that is not present has no sets or chains in live.
// Output is sorted, so it is deterministic.
func diff(live *liveState, want content) plan {
	p := plan{delElems: map[string][]elem{}, addElems: map[string][]elem{}}
	if live == nil {
		live = &liveState{content: content{sets: map[string]setSpec{}, elems: map[string]map[string]elem{}, chains: map[string]chainSpec{}}}
	}
	p.createTable, p.createBridge = !live.present, !live.bridgePresent
	// Walk the maps unsorted (they hold every container's elements) and
	// sort only what changes, so a small change stays cheap at 10k.
	for _, name := range slices.Sorted(maps.Keys(want.sets)) {
		if _, ok := live.sets[name]; !ok {
			p.addSets = append(p.addSets, want.sets[name])
		} else if live.sameElems[name] {
			continue
		}
		have := live.elems[name]
		var add, del []elem
		for id, w := range want.elems[name] {
			if l, ok := have[id]; ok && w.same(l) {
				continue
			} else if ok {
				del = append(del, l)
			}
			add = append(add, w)
		}
		if len(have) != len(want.elems[name]) || len(add) > 0 {
			for id, l := range have {
				if _, ok := want.elems[name][id]; !ok {
					del = append(del, l)
				}
			}
		}
		if len(add) > 0 {
			slices.SortFunc(add, cmpElem)
			p.addElems[name] = add
		}
		if len(del) > 0 {
			slices.SortFunc(del, cmpElem)
			p.delElems[name] = del
		}
	}
	for _, name := range slices.Sorted(maps.Keys(want.chains)) {
		w := want.chains[name]
		l, ok := live.chains[name]
		switch {
		case !ok:
			p.addChains = append(p.addChains, w)
		case l.tag != w.tag || len(l.rules) != len(w.rules) || l.base != w.base:
			p.rewriteChains = append(p.rewriteChains, w)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(live.chains)) {
		if _, ok := want.chains[name]; !ok {
			p.delChains = append(p.delChains, name)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(live.sets)) {
		if _, ok := want.sets[name]; !ok {
			p.delSets = append(p.delSets, name)
			delete(p.delElems, name) // deleting the set removes its elements
		}
	}
	return p
}

// cmpElem orders elements by id (key, then an interval end after its
// start) without building the id string: sorting 80,000 elements by id()
// allocated two strings a comparison.
func cmpElem(a, b elem) int {
	if c := bytes.Compare(a.key, b.key); c != 0 {
		return c
	}
	switch {
	case a.end == b.end:
		return 0
	case b.end:
		return -1
	}
	return 1
}

// Batch limits: a batch is one sendmsg, bounded by the socket's send
// buffer (default 208 KiB; more is "message too long"), and every message
// is acknowledged, so few large messages also keep acks within the receive
// buffer (else ENOBUFS).
const (
	elemsPerMessage      = 256
	maxBatchBytesDefault = 150 << 10
	ruleBytes            = 600
)

type op struct {
	size int
	do   func(c *nftables.Conn) error
}

func (f *Firewall) send(p plan) (batches int, err error) {
	var ops []op
	add := func(size int, do func(c *nftables.Conn) error) { ops = append(ops, op{size, do}) }
	sets := map[string]*nftables.Set{}
	setOf := func(qname string) *nftables.Set {
		if s, ok := sets[qname]; ok {
			return s
		}
		t, name := tableOf(qname)
		return &nftables.Set{Table: t, Name: name}
	}
	if p.createTable {
		add(100, func(c *nftables.Conn) error { c.AddTable(table); return nil })
	}
	if p.createBridge {
		add(100, func(c *nftables.Conn) error { c.AddTable(bridgeTable); return nil })
	}
	for _, ss := range p.addSets {
		t, name := tableOf(ss.name)
		s := &nftables.Set{Table: t, Name: name, KeyType: ss.keyType, Concatenation: ss.concat,
			Interval: ss.interval, Counter: ss.counter, Comment: ss.comment}
		if ss.hostOrder {
			s.KeyByteOrder = binaryutil.NativeEndian
		}
		if ss.idMap {
			s.IsMap = true
			s.DataType = nftables.TypeMark
		}
		sets[ss.name] = s
		add(300, func(c *nftables.Conn) error {
			if err := c.AddSet(s, nil); err != nil {
				return fmt.Errorf("set %s: %w", ss.name, err)
			}
			return nil
		})
	}
	for _, cs := range p.addChains {
		add(200, func(c *nftables.Conn) error { c.AddChain(chainObj(cs)); return nil })
	}
	elemOps := func(m map[string][]elem, del bool) {
		for _, name := range slices.Sorted(maps.Keys(m)) {
			es := m[name]
			for i := 0; i < len(es); i += elemsPerMessage {
				chunk := es[i:min(i+elemsPerMessage, len(es))]
				size := 0
				for _, e := range chunk {
					size += 64 + len(e.key) + len(e.keyEnd) + len(e.data) + len(e.comment)
				}
				add(size, func(c *nftables.Conn) error {
					s := setOf(name)
					nes := make([]nftables.SetElement, len(chunk))
					for j, e := range chunk {
						nes[j] = nftables.SetElement{Key: e.key, KeyEnd: e.keyEnd, IntervalEnd: e.end, Val: e.data, Comment: e.comment}
					}
					if del {
						return c.SetDeleteElements(s, nes)
					}
					return c.SetAddElements(s, nes)
				})
			}
		}
	}
	elemOps(p.delElems, true)
	elemOps(p.addElems, false)
	for _, cs := range p.addChains {
		for _, r := range cs.rules {
			add(ruleBytes, func(c *nftables.Conn) error { c.AddRule(ruleObj(cs, r)); return nil })
		}
	}
	for _, cs := range p.rewriteChains {
		// Flush and refill in the same batch: the chain is never seen empty.
		add(ruleBytes*len(cs.rules)+100, func(c *nftables.Conn) error {
			ch := chainObj(cs)
			c.AddChain(ch) // no-op if it exists; restores a base chain's hook if it was a regular one
			c.FlushChain(ch)
			for _, r := range cs.rules {
				c.AddRule(ruleObj(cs, r))
			}
			return nil
		})
	}
	// A set to delete may be a verdict map of an older layout whose
	// elements jump to a chain to delete: flush it first, so the chain is
	// free. Rules naming the set were rewritten above.
	for _, name := range p.delSets {
		add(100, func(c *nftables.Conn) error { c.FlushSet(setOf(name)); return nil })
	}
	for _, qname := range p.delChains {
		add(100, func(c *nftables.Conn) error {
			t, name := tableOf(qname)
			ch := &nftables.Chain{Table: t, Name: name}
			c.FlushChain(ch)
			c.DelChain(ch)
			return nil
		})
	}
	for _, name := range p.delSets {
		add(100, func(c *nftables.Conn) error { c.DelSet(setOf(name)); return nil })
	}

	size := 0
	pending := false
	flush := func() error {
		if !pending {
			return nil
		}
		batches++
		pending, size = false, 0
		err := f.conn.Flush()
		if errors.Is(err, unix.EAFNOSUPPORT) {
			// The only family here that a kernel may lack is the bridge's.
			return fmt.Errorf("%w: the kernel has no nftables bridge family (CONFIG_NF_TABLES_BRIDGE) for table bridge %s, which binds each container's address to its bridge port; run a kernel built with it (distribution kernels build it, loaded on demand)", err, TableName)
		}
		return err
	}
	for _, o := range ops {
		if pending && size+o.size > maxBatchBytes {
			if err := flush(); err != nil {
				return batches, err
			}
		}
		if err := o.do(f.conn); err != nil {
			return batches, err
		}
		size += o.size
		pending = true
	}
	return batches, flush()
}

func chainObj(cs chainSpec) *nftables.Chain {
	t, name := tableOf(cs.name)
	ch := &nftables.Chain{Table: t, Name: name}
	if cs.base {
		accept := nftables.ChainPolicyAccept
		ch.Type = nftables.ChainTypeFilter
		ch.Hooknum = cs.hook
		ch.Priority = nftables.ChainPriorityFilter
		if cs.prio != nil {
			ch.Priority = cs.prio
		}
		ch.Policy = &accept
	}
	return ch
}

func ruleObj(cs chainSpec, r ruleSpec) *nftables.Rule {
	t, name := tableOf(cs.name)
	return &nftables.Rule{Table: t, Chain: &nftables.Chain{Table: t, Name: name},
		Exprs: r.exprs, UserData: ruleUserData(cs.tag)}
}

// maxBatchBytes is a variable so tests can force chunking.
var maxBatchBytes = maxBatchBytesDefault
