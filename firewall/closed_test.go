package firewall

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/v6reg/v6reg/internal/ethframe"
)

// TestClosedPortSendsNothing proves that the port of a closed container
// (Container.Closed: say, it asked for another container's MAC or
// address) lets no frame in: C1, closed, sends frames from C2's MAC (a
// gratuitous ARP, which would move C2's forwarding entry to C1's port),
// an ARP claiming C2's IPv4 address, a router advertisement, a
// neighbour advertisement overriding the gateway, a DAD solicitation for
// C2's address, plain IPv6 and IPv4 unicast to C2 and a frame of no IP
// protocol. None reaches C2's packet socket, C2's MAC stays on C2's port,
// and every frame counts as C1's egress drop.
//
// Positive control first: with C1 left out of the State, as desired.Build
// did before closed ports, every one of them reaches C2 and the forged
// MAC moves C2's entry, so the checks can fail. The State has no Bridge,
// so that the inet table lets the control's plain IPv4 and link-local
// unicast through; the closed port's rule is in table bridge v6reg and
// runs before it either way. Last, C1 reopened with its own binding (a
// delta, as the agent sends when the conflict ends) talks to C2 again.
func TestClosedPortSendsNothing(t *testing.T) {
	e := newEnv(t)
	tp := e.tp
	ctx := context.Background()
	c1 := mustLink(t, tp.C1, "eth0")
	c2 := mustLink(t, tp.C2, "eth0")
	c1mac, c2mac := c1.Attrs().HardwareAddr, c2.Attrs().HardwareAddr
	vc1, vc2 := mustLink(t, tp.Node, "vc1").Attrs().Index, mustLink(t, tp.Node, "vc2").Attrs().Index
	ll1, ll2 := linkLocalOf(t, tp.C1, "eth0"), linkLocalOf(t, tp.C2, "eth0")
	c2bound := Container{ID: "c2", Addr: tp.C2Addr, Addr4: tp.C2Addr4, MAC: c2mac, Port: vc2}
	open := State{Prefix: tp.Prefix, Gateway: tp.Gateway, PeerSets: map[string][]netip.Prefix{},
		Containers: []Container{c2bound}}
	closed := open
	closed.Containers = []Container{{ID: "c1", Port: vc1, Closed: true}, c2bound}

	allNodes := netip.MustParseAddr("ff02::1")
	allMAC := net.HardwareAddr{0x33, 0x33, 0, 0, 0, 1}
	frames := []struct {
		what  string
		frame func(tail []byte) []byte
	}{
		{"ARP claiming c2's IPv4 address", func(tl []byte) []byte { return append(ethframe.GratuitousARP(c1mac, tp.C2Addr4.As4()), tl...) }},
		{"router advertisement", func(tl []byte) []byte {
			return ip6Frame(c1mac, allMAC, ll1, allNodes, 58, 255, icmp6(134, append(make([]byte, 12), tl...)))
		}},
		{"neighbour advertisement overriding the gateway", func(tl []byte) []byte {
			return ip6Frame(c1mac, allMAC, ll1, allNodes, 58, 255, icmp6(136, cat([]byte{0xa0, 0, 0, 0}, tp.Gateway.AsSlice(), tl)))
		}},
		{"DAD solicitation for c2's address", func(tl []byte) []byte {
			return ip6Frame(c1mac, allMAC, netip.IPv6Unspecified(), allNodes, 58, 255, icmp6(135, cat(make([]byte, 4), tp.C2Addr.AsSlice(), tl)))
		}},
		{"IPv6 link-local unicast to c2", func(tl []byte) []byte { return ip6Frame(c1mac, c2mac, ll1, ll2, 17, 64, udp(9, 9, tl)) }},
		{"IPv4 unicast to c2", func(tl []byte) []byte { return ip4Frame(c1mac, c2mac, tp.C1Addr4, tp.C2Addr4, udp(9, 9, tl)) }},
		{"a frame of no IP protocol", func(tl []byte) []byte { return cat(eth(c1mac, c2mac, 0x88b5), make([]byte, 32), tl) }},
		// Last: in the control it moves C2's MAC to C1's port, and the
		// bridge would then drop the unicast frames above (their
		// destination on the port they came from).
		{"gratuitous ARP from c2's MAC", func(tl []byte) []byte { return append(ethframe.GratuitousARP(c2mac, tp.C1Addr4.As4()), tl...) }},
	}
	marker := []byte("v6reg-closed-test")
	seen := watchFrames(t, tp.C2, c2.Attrs().Index, marker)
	send := func(base byte) {
		t.Helper()
		for i, f := range frames {
			must(t, tp.C1.SendFrame(c1.Attrs().Index, f.frame(cat(marker, []byte{base + byte(i)}))))
		}
	}
	// C2 talks: the bridge learns its MAC on its port.
	must(t, sendARP(tp.C2, c2.Attrs().Index, c2mac, tp.C2Addr4))
	wantFDB(t, tp.Node, c2mac, vc2, "after C2's own frame")

	// Positive control: C1 out of the State, its port unconstrained.
	e.apply(t, open)
	moves := tp.Node.WatchFDB(t, c2mac)
	send(0)
	deadline := time.Now().Add(okWait)
	for len(seen()) < len(frames) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	for i, f := range frames {
		if !seen()[byte(i)] {
			t.Errorf("control (C1 left out): %s did not reach c2; the check below could not fail", f.what)
		}
	}
	if got, err := moves(); err != nil {
		t.Error(err)
	} else if !slices.Contains(got, vc1) {
		t.Errorf("control (C1 left out): the frame from C2's MAC did not move it to C1's port %d (updates: ports %v); the check below could not fail", vc1, got)
	}
	if t.Failed() {
		return
	}
	must(t, sendARP(tp.C2, c2.Attrs().Index, c2mac, tp.C2Addr4))
	wantFDB(t, tp.Node, c2mac, vc2, "C2 talks again after the control")

	// C1 closed.
	e.apply(t, closed)
	dropped := func() uint64 {
		t.Helper()
		cs, err := e.fw.Counters(ctx)
		must(t, err)
		return cs["c1"].EgressDropped.Packets
	}
	before := dropped()
	moves = tp.Node.WatchFDB(t, c2mac)
	send(100)
	// Frames reach the bridge through the veth's backlog: wait until
	// they are counted, then a little longer for any that got through.
	for deadline := time.Now().Add(okWait); dropped()-before < uint64(len(frames)) && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(dropWait)
	got := seen()
	for i, f := range frames {
		if got[byte(100+i)] {
			t.Errorf("%s from closed C1's port reached c2", f.what)
		}
	}
	// C1's own kernel may send too (MLD, router solicitations): at least.
	if n := dropped() - before; n < uint64(len(frames)) {
		t.Errorf("c1's egress drops (port_closed): %d more, want at least %d (one per frame)", n, len(frames))
	}
	if ports, err := moves(); err != nil {
		t.Error(err)
	} else if slices.Contains(ports, vc1) {
		t.Errorf("a frame from closed C1's port with C2's MAC moved it to C1's port %d (forwarding table updates: ports %v)", vc1, ports)
	}
	wantFDB(t, tp.Node, c2mac, vc2, "after closed C1 sent frames from C2's MAC")

	// The conflict ends: C1 reopened, bound to its own address and MAC,
	// by a delta. Its own ARP reaches C2 and the bridge learns its MAC.
	if _, err := e.fw.ApplyDelta(ctx, Delta{Upsert: []Container{{ID: "c1", Addr: tp.C1Addr, Addr4: tp.C1Addr4, MAC: c1mac, Port: vc1}}}); err != nil {
		t.Fatal(err)
	}
	tail := cat(marker, []byte{200})
	must(t, tp.C1.SendFrame(c1.Attrs().Index, append(ethframe.GratuitousARP(c1mac, tp.C1Addr4.As4()), tail...)))
	for deadline := time.Now().Add(okWait); !seen()[200] && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	if !seen()[200] {
		t.Errorf("C1 reopened: its own ARP did not reach c2")
	}
	wantFDB(t, tp.Node, c1mac, vc1, "C1 reopened, after its own frame")
}
