package firewall

import (
	"net"
	"net/netip"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/v6reg/v6reg/internal/netns"
	"golang.org/x/net/ipv6"
)

// TestEveryPathDenied proves default deny on the paths a container has
// besides its /80 address (link-local, IPv4, multicast, the node's other
// addresses, forged sources), each cell with its positive control: the
// same probe passes before the table exists, and what policy allows
// passes with it. c1 admits tcp/8080 from @in and may reach tcp/443 of
// @in (IPv6 and IPv4 prefixes); c2 admits nothing and may reach anything
// (egress any to any).
func TestEveryPathDenied(t *testing.T) {
	e := newEnv(t)
	tp := e.tp
	c1mac := mustLink(t, tp.C1, "eth0").Attrs().HardwareAddr
	c2mac := mustLink(t, tp.C2, "eth0").Attrs().HardwareAddr
	vc1, vc2 := mustLink(t, tp.Node, "vc1").Attrs().Index, mustLink(t, tp.Node, "vc2").Attrs().Index
	for _, ns := range []*netns.NS{tp.C1, tp.C2} {
		ns.ServeTCP(t, netip.IPv6Unspecified(), 7070) // dual-stack: link-local, IPv4, /80
	}
	tp.C1.ServeUDP(t, netip.IPv6Unspecified(), 6000)
	tp.Node.ServeTCP(t, netip.IPv6Unspecified(), 9999) // a node service: gateway, its link-local, IPv4
	tp.ClientIn.ServeTCP(t, tp.In4, 443)
	tp.ClientOut.ServeTCP(t, tp.Out4, 443)
	ll1, ll2 := linkLocalOf(t, tp.C1, "eth0"), linkLocalOf(t, tp.C2, "eth0")
	gwLL := linkLocalOf(t, tp.Node, tp.Bridge)
	in4 := netip.PrefixFrom(tp.In4, 24).Masked()
	s := State{
		Prefix: tp.Prefix, Gateway: tp.Gateway, Bridge: tp.Bridge,
		PeerSets: map[string][]netip.Prefix{"@in": {tp.InPrefix, in4}},
		Containers: []Container{
			{ID: "c1", Addr: tp.C1Addr, Addr4: tp.C1Addr4, MAC: c1mac, Port: vc1,
				Ingress: []Rule{{Peer: "@in", Proto: TCP, Ports: ports(8080)}},
				Egress:  []Rule{{Peer: "@in", Proto: TCP, Ports: ports(443)}}},
			{ID: "c2", Addr: tp.C2Addr, Addr4: tp.C2Addr4, MAC: c2mac, Port: vc2,
				Egress: []Rule{{Peer: PeerAny, Proto: Any}}},
		},
	}
	// A numeric zone: Go caches the interface names of the namespace it
	// first looked them up in, and every namespace here has an eth0.
	zoned := func(from *netns.NS, link string, a netip.Addr) netip.Addr {
		return a.WithZone(strconv.Itoa(mustLink(t, from, link).Attrs().Index))
	}
	type cell struct {
		what  string
		probe func(time.Duration) error
	}
	denied := []cell{
		{"c2 -> c1 link-local tcp/7070", func(d time.Duration) error { return tp.C2.DialTCP(none, zoned(tp.C2, "eth0", ll1), 7070, d) }},
		{"c2 -> c1 IPv4 tcp/7070", func(d time.Duration) error { return tp.C2.DialTCP(none, tp.C1Addr4, 7070, d) }},
		{"c2 -> c1 /80 tcp/7070 (not in c1's ingress)", func(d time.Duration) error { return tp.C2.DialTCP(none, tp.C1Addr, 7070, d) }},
		{"client-out -> c1 IPv4 tcp/7070 (no IPv4 ingress)", func(d time.Duration) error { return tp.ClientOut.DialTCP(none, tp.C1Addr4, 7070, d) }},
		{"client-in -> c1 IPv4 tcp/7070 (no IPv4 ingress, even from @in)", func(d time.Duration) error { return tp.ClientIn.DialTCP(none, tp.C1Addr4, 7070, d) }},
		{"c1 -> node gateway link-local tcp/9999", func(d time.Duration) error { return tp.C1.DialTCP(none, zoned(tp.C1, "eth0", gwLL), 9999, d) }},
		{"c1 -> node IPv4 gateway tcp/9999", func(d time.Duration) error { return tp.C1.DialTCP(none, tp.Gateway4, 9999, d) }},
		{"c1 -> node uplink IPv4 tcp/9999", func(d time.Duration) error { return tp.C1.DialTCP(none, tp.NodeUp4, 9999, d) }},
		{"c1 -> client-out IPv4 tcp/443 (not in c1's egress)", func(d time.Duration) error { return tp.C1.DialTCP(none, tp.Out4, 443, d) }},
		{"c2 -> c1 link-local udp/6000", func(d time.Duration) error { return tp.C2.EchoUDP(zoned(tp.C2, "eth0", ll1), 6000, d) }},
	}
	allowed := []cell{
		{"client-in -> c1 /80 tcp/8080", func(d time.Duration) error { return tp.ClientIn.DialTCP(none, tp.C1Addr, 8080, d) }},
		{"c1 -> client-in IPv4 tcp/443 (@in's IPv4 prefix)", func(d time.Duration) error { return tp.C1.DialTCP(none, tp.In4, 443, d) }},
		{"c1 -> client-in /80 tcp/443", func(d time.Duration) error { return tp.C1.DialTCP(none, tp.InAddr, 443, d) }},
		{"c2 -> client-out IPv4 tcp/443 (any is both families)", func(d time.Duration) error { return tp.C2.DialTCP(none, tp.Out4, 443, d) }},
		{"c2 -> client-out /80 tcp/443", func(d time.Duration) error { return tp.C2.DialTCP(tp.C2Addr, tp.OutAddr, 443, d) }},
	}
	// Positive controls: without the table every cell passes.
	for _, c := range append(denied, allowed...) {
		pass(t, "no table: "+c.what, c.probe(okWait))
	}
	// A forged source (client-in's address, which c1's rules admit) from
	// c2's port reaches c1 without the table.
	must(t, tp.C2.Addr("eth0", netip.PrefixFrom(tp.InAddr, 128)))
	forged := recvUDP(t, tp.C1, 6001)
	forge := func() int {
		t.Helper()
		before := forged()
		must(t, sendUDP(tp.C2, tp.InAddr, tp.C1Addr, 6001))
		time.Sleep(dropWait)
		return forged() - before
	}
	if n := forge(); n != 1 {
		t.Fatalf("no table: c2 forging %s -> c1 udp/6001: %d datagrams arrived, want 1; the forgery check below could not fail", tp.InAddr, n)
	}
	// All-nodes multicast from c2 reaches c1 without the table.
	mcast := recvUDP(t, tp.C1, 6002)
	all := zoned(tp.C2, "eth0", netip.MustParseAddr("ff02::1"))
	must(t, sendUDP(tp.C2, netip.Addr{}, all, 6002))
	waitCount(t, "no table: c2 -> ff02::1 udp/6002 at c1", mcast, 1)
	// Prefix multicast (site scope, from c2's /80 address) too.
	site := zoned(tp.C2, "eth0", netip.MustParseAddr("ff05::1:3"))
	siteRecv := recvUDPGroup(t, tp.C1, "eth0", site, 6003)
	must(t, sendUDP(tp.C2, tp.C2Addr, site, 6003))
	waitCount(t, "no table: c2 -> ff05::1:3 udp/6003 at c1", siteRecv, 1)

	e.apply(t, s)
	for _, c := range denied {
		drop(t, c.what, c.probe(dropWait))
	}
	for _, c := range allowed {
		pass(t, c.what, c.probe(okWait))
	}
	before := portSpoofCount(t, e)
	if n := forge(); n != 0 {
		t.Errorf("c2 forging %s -> c1 udp/6001: %d datagrams reached c1, want 0", tp.InAddr, n)
	}
	if after := portSpoofCount(t, e); after <= before {
		t.Errorf("c2's forged source was not counted at its bridge port (%d -> %d)", before, after)
	}
	m0, s0 := mcast(), siteRecv()
	must(t, sendUDP(tp.C2, netip.Addr{}, all, 6002))
	must(t, sendUDP(tp.C2, tp.C2Addr, site, 6003))
	time.Sleep(dropWait)
	if n := mcast() - m0; n != 0 {
		t.Errorf("c2 -> ff02::1 udp/6002 (c2's egress is any): %d reached c1, want 0", n)
	}
	if n := siteRecv() - s0; n != 0 {
		t.Errorf("c2 -> ff05::1:3 udp/6003 from its /80 address (c2's egress is any): %d reached c1, want 0", n)
	}

	// A node service opened by NodePorts is open on every address and
	// family a container reaches the node by, and only that port.
	s.NodePorts = []Rule{{Proto: TCP, Ports: ports(9999)}}
	e.apply(t, s)
	pass(t, "node_ports tcp/9999: c1 -> node IPv4 gateway", tp.C1.DialTCP(none, tp.Gateway4, 9999, okWait))
	pass(t, "node_ports tcp/9999: c1 -> node gateway link-local", tp.C1.DialTCP(none, zoned(tp.C1, "eth0", gwLL), 9999, okWait))
	pass(t, "node_ports tcp/9999: c1 -> node gateway", tp.C1.DialTCP(none, tp.Gateway, 9999, okWait))
	drop(t, "node_ports tcp/9999: c1 -> node IPv4 tcp/7071 (not opened: dropped, not refused)", tp.C1.DialTCP(none, tp.Gateway4, 7071, dropWait))
	drop(t, "node_ports tcp/9999: c2 -> c1 link-local tcp/7070 still", tp.C2.DialTCP(none, zoned(tp.C2, "eth0", ll1), 7070, dropWait))
	_ = ll2
}

// linkLocalOf waits until ns's link has a usable (not tentative)
// link-local address and returns it.
func linkLocalOf(t *testing.T, ns *netns.NS, link string) netip.Addr {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		a, err := ns.LinkLocal(link)
		if err == nil {
			return a
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 5s: %v", err)
		}
	}
}

// recvUDP counts the datagrams that arrive at [::]:port in ns.
func recvUDP(t *testing.T, ns *netns.NS, port int) func() int {
	return recvUDPGroup(t, ns, "", netip.Addr{}, port)
}

// recvUDPGroup is recvUDP that also joins the multicast group on link.
func recvUDPGroup(t *testing.T, ns *netns.NS, link string, group netip.Addr, port int) func() int {
	t.Helper()
	var pc net.PacketConn
	must(t, ns.Run(func() (err error) {
		pc, err = net.ListenPacket("udp6", net.JoinHostPort("::", strconv.Itoa(port)))
		if err != nil || !group.IsValid() {
			return err
		}
		ifi, err := net.InterfaceByName(link)
		if err != nil {
			return err
		}
		return ipv6.NewPacketConn(pc).JoinGroup(ifi, &net.UDPAddr{IP: group.AsSlice()})
	}))
	t.Cleanup(func() { _ = pc.Close() })
	var n atomic.Int64
	go func() {
		buf := make([]byte, 2048)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
			n.Add(1)
		}
	}()
	return func() int { return int(n.Load()) }
}

// sendUDP sends one datagram from ns (source src if valid) to [dst]:port.
func sendUDP(ns *netns.NS, src, dst netip.Addr, port int) error {
	return ns.Run(func() error {
		laddr := &net.UDPAddr{}
		if src.IsValid() {
			laddr.IP = src.AsSlice()
		}
		pc, err := net.ListenUDP("udp6", laddr)
		if err != nil {
			return err
		}
		defer pc.Close()
		_, err = pc.WriteToUDPAddrPort([]byte("v6reg"), netip.AddrPortFrom(dst, uint16(port))) //nolint:gosec // G115: a port
		return err
	})
}

func waitCount(t *testing.T, what string, count func() int, want int) {
	t.Helper()
	for deadline := time.Now().Add(okWait); count() < want; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d arrived, want %d", what, count(), want)
		}
	}
}

func portSpoofCount(t *testing.T, e *env) uint64 {
	t.Helper()
	c, err := e.fw.PortSpoofDrops(t.Context())
	must(t, err)
	return c.Packets
}
