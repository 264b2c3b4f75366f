package firewall

import (
	"context"
	"errors"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/v6reg/v6reg/internal/netns"
)

// deltaCase is a base state, a delta, and the state the delta must leave.
func deltaCase() (base State, d Delta, after State) {
	base = bigState(20)
	base.PeerSets["@old"] = []netip.Prefix{pfx("2001:db8:c::/64")}
	base.Containers[3].Ingress = append(base.Containers[3].Ingress, Rule{Peer: "@old", Proto: UDP, Ports: ports(53)})

	changed := base.Containers[5]
	changed.Ingress = []Rule{{Peer: "@new", Proto: TCP, Ports: []PortRange{{7000, 7002}}}}
	added := boundContainer(100)
	added.Egress = append(added.Egress, Rule{Peer: "@new", Proto: Any})
	d = Delta{
		Upsert: []Container{changed, added, base.Containers[6]}, // [6] unchanged
		Remove: []string{base.Containers[2].ID, "no such container", base.Containers[2].ID},
		PeerSets: map[string][]netip.Prefix{
			"@new":     {pfx("2001:db8:d::/64"), pfx("198.51.100.0/24")},
			"@traefik": {pfx("2001:db8:a::/64"), pfx("2001:db8:e::/64")}, // grows
			"@mon":     nil,                                              // shrinks to nothing
		},
		RemovePeerSets: []string{"@unused-never-there"},
	}

	after = base
	after.PeerSets = map[string][]netip.Prefix{}
	for k, v := range base.PeerSets {
		after.PeerSets[k] = v
	}
	for k, v := range d.PeerSets {
		after.PeerSets[k] = v
	}
	after.Containers = nil
	for i, c := range base.Containers {
		switch i {
		case 2:
			continue
		case 5:
			c = changed
		}
		after.Containers = append(after.Containers, c)
	}
	after.Containers = append(after.Containers, added)
	return base, d, after
}

// TestDeltaThenApplyEqualSendsNothing: a delta leaves the table exactly
// as Apply of the resulting State would: Apply of that State on the same
// instance, and on a new instance that reads the whole table, send
// nothing. Then a delta that removes a peer set no longer named.
func TestDeltaThenApplyEqualSendsNothing(t *testing.T) {
	ns := netns.New(t, "delta")
	fw := newFirewall(t, ns)
	fw.noRevoke = true
	ctx := context.Background()
	if _, err := fw.ApplyDelta(ctx, Delta{Remove: []string{"x"}}); !errors.Is(err, ErrNoState) {
		t.Fatalf("ApplyDelta before Apply: got %v, want ErrNoState", err)
	}
	base, d, after := deltaCase()
	if _, err := fw.Apply(ctx, base); err != nil {
		t.Fatal(err)
	}
	ch, err := fw.ApplyDelta(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	if ch.Batches != 1 || ch.ElemsAdded == 0 || ch.ElemsRemoved == 0 || ch.ChainsAdded+ch.ChainsRemoved+ch.ChainsRewritten != 0 {
		t.Errorf("delta: got %+v, want elements added and removed in one batch, no chain touched", ch)
	}
	sameModel(t, fw.m, after)
	if ch, err := fw.ApplyDelta(ctx, d); err != nil || !ch.Empty() {
		t.Errorf("the same delta again: got %+v, %v, want nothing sent", ch, err)
	}
	sameModel(t, fw.m, after)
	if ch, err := fw.Apply(ctx, after); err != nil || !ch.Empty() {
		t.Errorf("Apply of the state the delta left, same instance: got %+v, %v, want nothing sent", ch, err)
	}
	if ch, err := newFirewall(t, ns).Apply(ctx, after); err != nil || !ch.Empty() {
		t.Errorf("Apply of the state the delta left, new instance (reads the table): got %+v, %v, want nothing sent", ch, err)
	}

	// @old is named by container 3 only: removing it fails until 3 goes
	// in the same delta.
	if _, err := fw.ApplyDelta(ctx, Delta{RemovePeerSets: []string{"@old"}}); err == nil || !strings.Contains(err.Error(), "still named") {
		t.Errorf("removing a peer set still named: got %v, want an error", err)
	}
	d2 := Delta{Remove: []string{base.Containers[3].ID}, RemovePeerSets: []string{"@old"}}
	if _, err := fw.ApplyDelta(ctx, d2); err != nil {
		t.Fatal(err)
	}
	after2 := after
	after2.Containers = slices.DeleteFunc(slices.Clone(after.Containers), func(c Container) bool { return c.ID == base.Containers[3].ID })
	after2.PeerSets = map[string][]netip.Prefix{}
	for k, v := range after.PeerSets {
		if k != "@old" {
			after2.PeerSets[k] = v
		}
	}
	sameModel(t, fw.m, after2)
	if ch, err := newFirewall(t, ns).Apply(ctx, after2); err != nil || !ch.Empty() {
		t.Errorf("after removing a container and its peer set, new instance: got %+v, %v, want nothing sent", ch, err)
	}
	if ch, err := fw.Apply(ctx, after2); err != nil || !ch.Empty() {
		t.Errorf("after removing a container and its peer set, same instance: got %+v, %v, want nothing sent", ch, err)
	}
}

// TestDeltaInvalid: a delta that would make an invalid state is refused
// whole, and changes neither the table nor the state later changes and
// the repair start from.
func TestDeltaInvalid(t *testing.T) {
	ns := netns.New(t, "delta")
	fw := newFirewall(t, ns)
	ctx := context.Background()
	base := bigState(5)
	if _, err := fw.Apply(ctx, base); err != nil {
		t.Fatal(err)
	}
	outside := benchContainer(50)
	outside.Addr = addr("2001:db8:ffff::1")
	taken := benchContainer(51)
	taken.Addr = base.Containers[1].Addr
	unknownPeer := benchContainer(52)
	unknownPeer.Ingress = []Rule{{Peer: "@nope", Proto: TCP, Ports: ports(1)}}
	twice := benchContainer(53)
	for _, c := range []struct {
		name string
		d    Delta
		want string
	}{
		{"address outside the prefix", Delta{Upsert: []Container{outside}}, "outside prefix"},
		{"address of another container", Delta{Upsert: []Container{taken}}, "is container"},
		{"two upserts, one address", Delta{Upsert: []Container{benchContainer(54), func() Container { c := benchContainer(55); c.Addr = benchContainer(54).Addr; return c }()}}, "also container"},
		{"unknown peer", Delta{Upsert: []Container{unknownPeer}}, `"@nope" is not in State.PeerSets`},
		{"peer set removed while named", Delta{RemovePeerSets: []string{"@mon"}}, "still named"},
		{"upserted and removed", Delta{Upsert: []Container{twice}, Remove: []string{twice.ID}}, "both upserted and removed"},
		{"upserted twice", Delta{Upsert: []Container{twice, twice}}, "upserted twice"},
		{"peer set set and removed", Delta{PeerSets: map[string][]netip.Prefix{"@x": nil}, RemovePeerSets: []string{"@x"}}, "both set and removed"},
		{"bad peer set", Delta{PeerSets: map[string][]netip.Prefix{"@x": {{}}}}, "not an IPv6 or IPv4 prefix"},
		{"reserved peer set name", Delta{PeerSets: map[string][]netip.Prefix{PeerAny: nil}}, "reserved"},
	} {
		// Each with a valid part, which must not be applied either.
		c.d.Upsert = append(c.d.Upsert, benchContainer(99))
		ch, err := fw.ApplyDelta(ctx, c.d)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want an error containing %q", c.name, err, c.want)
		}
		if !ch.Empty() {
			t.Errorf("%s: sent %+v", c.name, ch)
		}
		if ch, err := fw.Apply(ctx, base); err != nil || !ch.Empty() {
			t.Errorf("%s: Apply of the state before: got %+v, %v, want nothing sent", c.name, ch, err)
		}
	}
	// An address may move between containers when its owner leaves or
	// changes address in the same delta.
	moved := benchContainer(60)
	moved.Addr = base.Containers[1].Addr
	renumbered := base.Containers[2]
	renumbered.Addr = benchContainer(61).Addr
	took := benchContainer(62)
	took.Addr = base.Containers[2].Addr
	if _, err := fw.ApplyDelta(ctx, Delta{Upsert: []Container{moved, renumbered, took}, Remove: []string{base.Containers[1].ID}}); err != nil {
		t.Errorf("addresses moving within one delta: %v", err)
	}
}

// TestDeltaClosedPorts: containers closed and reopened by deltas (as
// the agent sends them when a conflict starts or ends) leave the table as
// Apply of the resulting state would, and a closed port that is another
// container's is refused.
func TestDeltaClosedPorts(t *testing.T) {
	ns := netns.New(t, "delta")
	fw := newFirewall(t, ns)
	fw.noRevoke = true
	ctx := context.Background()
	base := bigStateOf(5, boundContainer)
	if _, err := fw.Apply(ctx, base); err != nil {
		t.Fatal(err)
	}
	check := func(what string, s State) {
		t.Helper()
		sameModel(t, fw.m, s)
		if ch, err := fw.Apply(ctx, s); err != nil || !ch.Empty() {
			t.Errorf("%s: Apply of the state the delta left, same instance: got %+v, %v, want nothing sent", what, ch, err)
		}
		if ch, err := newFirewall(t, ns).Apply(ctx, s); err != nil || !ch.Empty() {
			t.Errorf("%s: Apply of the state the delta left, new instance (reads the table): got %+v, %v, want nothing sent", what, ch, err)
		}
	}
	// A newcomer closed (it asked for container 1's address), and
	// container 2 closed (its MAC now conflicts).
	newcomer := Container{ID: "newcomer", Port: 2000, Closed: true}
	closed2 := Container{ID: base.Containers[2].ID, Port: base.Containers[2].Port, Closed: true}
	ch, err := fw.ApplyDelta(ctx, Delta{Upsert: []Container{newcomer, closed2}})
	if err != nil {
		t.Fatal(err)
	}
	if ch.Batches != 1 || ch.ElemsAdded != 2 {
		t.Errorf("closing two: got %+v, want two port_closed elements in one batch", ch)
	}
	closedState := base
	closedState.Containers = slices.Clone(base.Containers)
	closedState.Containers[2] = closed2
	closedState.Containers = append(closedState.Containers, newcomer)
	check("two closed", closedState)
	for _, e := range fw.m.want.elems[inBridge("port_mac_bound")] {
		if e.comment == closed2.ID {
			t.Errorf("closed container 2 still has its port in port_mac_bound")
		}
	}

	// Refused: a closed port that another container is bound to, and a
	// closed container with an address.
	for _, c := range []struct {
		name string
		d    Delta
		want string
	}{
		{"closed on another's port", Delta{Upsert: []Container{{ID: "x", Port: base.Containers[1].Port, Closed: true}}}, "bridge port"},
		{"closed with an address", Delta{Upsert: []Container{{ID: "x", Port: 2001, Closed: true, Addr: benchContainer(70).Addr}}}, "holds only its ID and Port"},
		{"closed without a port", Delta{Upsert: []Container{{ID: "x", Closed: true}}}, "not an interface index"},
	} {
		if ch, err := fw.ApplyDelta(ctx, c.d); err == nil || !strings.Contains(err.Error(), c.want) || !ch.Empty() {
			t.Errorf("%s: got %+v, %v, want an error containing %q and nothing sent", c.name, ch, err, c.want)
		}
	}
	check("after refused deltas", closedState)

	// The conflict ends: container 2 is itself again (its port bound),
	// the newcomer goes, and container 3's port is closed in the same
	// delta that removes container 3 (a port may change hands then).
	closed3 := Container{ID: "taker", Port: base.Containers[3].Port, Closed: true}
	if _, err := fw.ApplyDelta(ctx, Delta{Upsert: []Container{base.Containers[2], closed3}, Remove: []string{"newcomer", base.Containers[3].ID}}); err != nil {
		t.Fatal(err)
	}
	reopened := base
	reopened.Containers = slices.Clone(base.Containers)
	reopened.Containers[3] = closed3
	check("reopened", reopened)
	for _, e := range fw.m.want.elems[inBridge("port_closed")] {
		if e.comment != "taker" {
			t.Errorf("port_closed element of %q left after it reopened or went", e.comment)
		}
	}
}

// TestDeltaRepair: the repair (Watch) restores the state the last delta
// left, not the last State given to Apply, whatever was changed outside:
// an element missing, an element with other data, an element added, the
// table flushed.
func TestDeltaRepair(t *testing.T) {
	ns := netns.New(t, "delta")
	fw := newFirewall(t, ns)
	fw.noRevoke = true
	ctx := context.Background()
	base, d, after := deltaCase()
	if _, err := fw.Apply(ctx, base); err != nil {
		t.Fatal(err)
	}
	if _, err := fw.ApplyDelta(ctx, d); err != nil {
		t.Fatal(err)
	}
	added := d.Upsert[1]
	other, err := nftables.New(nftables.WithNetNSFd(ns.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	a := added.Addr.AsSlice()
	inPort := &nftables.Set{Table: table, Name: "in_port_list", IsMap: true}
	stray := benchContainer(500).Addr.AsSlice()
	for _, c := range []struct {
		name string
		do   func()
	}{
		{"element missing", func() {
			_ = other.SetDeleteElements(&nftables.Set{Table: table, Name: "containers"}, []nftables.SetElement{{Key: a}})
		}},
		{"element with other data", func() {
			k := key(a, []byte{byte(TCP)}, port(8080))
			_ = other.SetDeleteElements(inPort, []nftables.SetElement{{Key: k}})
			other.Flush()
			_ = other.SetAddElements(inPort, []nftables.SetElement{{Key: k, Val: listID(12345).bytes(), Comment: added.ID}})
		}},
		{"element added", func() {
			_ = other.SetAddElements(&nftables.Set{Table: table, Name: "in_drop"}, []nftables.SetElement{{Key: stray, Comment: "intruder"}})
		}},
		{"element comment changed", func() {
			_ = other.SetDeleteElements(&nftables.Set{Table: table, Name: "eg_drop"}, []nftables.SetElement{{Key: a}})
			other.Flush()
			_ = other.SetAddElements(&nftables.Set{Table: table, Name: "eg_drop"}, []nftables.SetElement{{Key: a, Comment: "someone else"}})
		}},
		{"table flushed", func() { other.FlushTable(table) }},
	} {
		c.do()
		if err := other.Flush(); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		ch, err := fw.repair(ctx)
		if err != nil || ch.Empty() {
			t.Errorf("%s: repair: got %+v, %v, want a change sent", c.name, ch, err)
		}
		if ch, err := newFirewall(t, ns).Apply(ctx, after); err != nil || !ch.Empty() {
			t.Errorf("%s: after the repair, a new instance with the delta's state: got %+v, %v, want nothing sent", c.name, ch, err)
		}
		if ch, err := fw.repair(ctx); err != nil || !ch.Empty() {
			t.Errorf("%s: a second repair: got %+v, %v, want nothing sent", c.name, ch, err)
		}
	}
}

// TestDeltaPackets: a container added by a delta is reachable as its
// rules say and no more; a peer set changed by a delta opens and closes
// what names it; a container removed by a delta is not reachable, and its
// established flows are cut.
func TestDeltaPackets(t *testing.T) {
	e := newEnv(t)
	tp := e.tp
	ctx := context.Background()
	s := e.state()
	c1 := s.Containers[0]
	s.Containers = s.Containers[1:] // c2 only
	e.apply(t, s)
	drop(t, "before the delta: client-in -> c1:8080", tp.ClientIn.DialTCP(none, tp.C1Addr, 8080, dropWait))

	if _, err := e.fw.ApplyDelta(ctx, Delta{Upsert: []Container{c1}}); err != nil {
		t.Fatal(err)
	}
	pass(t, "c1 upserted: client-in -> c1:8080", tp.ClientIn.DialTCP(none, tp.C1Addr, 8080, okWait))
	pass(t, "c1 upserted: client-in -> c1:9005", tp.ClientIn.DialTCP(none, tp.C1Addr, 9005, okWait))
	drop(t, "c1 upserted: client-out -> c1:8080 (peer outside @in)", tp.ClientOut.DialTCP(none, tp.C1Addr, 8080, dropWait))
	drop(t, "c1 upserted: client-in -> c1:8081 (port not open)", tp.ClientIn.DialTCP(none, tp.C1Addr, 8081, dropWait))
	pass(t, "c1 upserted: c1 -> c2:5432 (egress service:pg, c2 ingress @c1)", tp.C1.DialTCP(tp.C1Addr, tp.C2Addr, 5432, okWait))
	pass(t, "c1 upserted: c1 -> client-in:443", tp.C1.DialTCP(tp.C1Addr, tp.InAddr, 443, okWait))
	drop(t, "c1 upserted: c1 -> client-out:443", tp.C1.DialTCP(tp.C1Addr, tp.OutAddr, 443, dropWait))

	// A peer set change alone: client-out joins @in.
	if _, err := e.fw.ApplyDelta(ctx, Delta{PeerSets: map[string][]netip.Prefix{"@in": {tp.InPrefix, netip.PrefixFrom(tp.OutAddr, 128)}}}); err != nil {
		t.Fatal(err)
	}
	pass(t, "client-out joined @in: client-out -> c1:8080", tp.ClientOut.DialTCP(none, tp.C1Addr, 8080, okWait))
	if _, err := e.fw.ApplyDelta(ctx, Delta{PeerSets: map[string][]netip.Prefix{"@in": {tp.InPrefix}}}); err != nil {
		t.Fatal(err)
	}
	drop(t, "client-out left @in: client-out -> c1:8080", tp.ClientOut.DialTCP(none, tp.C1Addr, 8080, dropWait))

	// Removal: new connections are dropped, the established one is cut.
	conn, err := tp.ClientIn.ConnectTCP(none, tp.C1Addr, 8080, okWait)
	if err != nil {
		t.Fatalf("client-in -> c1:8080: %v", err)
	}
	defer conn.Close()
	pass(t, "echo before the removal", echoes(conn, okWait))
	if _, err := e.fw.ApplyDelta(ctx, Delta{Remove: []string{c1.ID}}); err != nil {
		t.Fatal(err)
	}
	if last := lastEcho(conn, 500*time.Millisecond); last > 250*time.Millisecond {
		t.Errorf("c1 removed: its established flow still passed %v after the delta", last)
	}
	drop(t, "c1 removed: client-in -> c1:8080", tp.ClientIn.DialTCP(none, tp.C1Addr, 8080, dropWait))
	pass(t, "c1 removed: c2 still reachable, client-in -> c2:8081", tp.ClientIn.DialTCP(none, tp.C2Addr, 8081, okWait))
}

// lastEcho probes c every 10 ms for d and returns when, after the call,
// the last echo passed (-1: none).
func lastEcho(c net.Conn, d time.Duration) time.Duration {
	start := time.Now()
	var last time.Duration = -1
	for time.Since(start) < d {
		if echoes(c, 10*time.Millisecond) == nil {
			last = time.Since(start)
		}
	}
	return last
}

// sameModel checks that m, changed by deltas, holds what a model built
// from s holds: its reference counts too, which no diff of the table
// shows until they reach zero.
func sameModel(t *testing.T, m *model, s State) {
	t.Helper()
	w := newModel(s)
	if _, ok := w.update(s, newCompiler(), nil, false); !ok {
		t.Fatal("state rejected")
	}
	if !maps.Equal(m.peerRefs, w.peerRefs) {
		t.Errorf("peer set references: got %v, want %v", m.peerRefs, w.peerRefs)
	}
	for pn, n := range w.peerRefs {
		if len(m.peerUsers[pn]) != n {
			t.Errorf("peer set %s: %d users indexed, want %d", pn, len(m.peerUsers[pn]), n)
		}
		for c := range m.peerUsers[pn] {
			if m.conts[c.c.ID] != c {
				t.Errorf("peer set %s: user %q is not in the model", pn, c.c.ID)
			}
		}
	}
	if len(m.peerUsers) != len(w.peerRefs) {
		t.Errorf("peer users indexed for %d peer sets, want %d", len(m.peerUsers), len(w.peerRefs))
	}
	if !maps.Equal(m.listRef, w.listRef) {
		t.Errorf("peer list references: got %v, want %v", m.listRef, w.listRef)
	}
	if len(m.conts) != len(w.conts) || len(m.addrs) != len(w.addrs) || len(m.ports) != len(w.ports) || len(m.order) != len(w.order) || len(m.lists) != len(w.lists) || len(m.peers) != len(w.peers) {
		t.Errorf("model sizes: got %d containers, %d addresses, %d ports, %d in order, %d lists, %d peer sets; want %d, %d, %d, %d, %d, %d",
			len(m.conts), len(m.addrs), len(m.ports), len(m.order), len(m.lists), len(m.peers), len(w.conts), len(w.addrs), len(w.ports), len(w.order), len(w.lists), len(w.peers))
	}
	for p, c := range m.ports {
		if w.ports[p] == nil || w.ports[p].c.ID != c.c.ID {
			t.Errorf("bridge port %d: the model has it as %q's", p, c.c.ID)
		}
	}
	for i, c := range m.order {
		if c.pos != i || m.conts[c.c.ID] != c {
			t.Errorf("model order %d: %q at pos %d, in conts: %v", i, c.c.ID, c.pos, m.conts[c.c.ID] == c)
		}
	}
	for set, es := range w.want.elems {
		if len(m.want.elems[set]) != len(es) {
			t.Errorf("set %s: model wants %d elements, want %d", set, len(m.want.elems[set]), len(es))
		}
	}
}
