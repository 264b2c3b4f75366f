package netns

import (
	"net/netip"
	"testing"
)

// Topology is the standard test network for the firewall:
//
//	ClientIn  (2001:db8:a::2) ──┐
//	ClientOut (2001:db8:b::2) ──┼── Router ── Node ── bridge "br0" (Gateway) ─┬─ C1
//	                            │  2001:db8:ff::1  ::2                        └─ C2 (+ Stray)
//
// The node prefix (a /80) is routed by Router to Node, and by Node onto the
// bridge. C1 and C2 are "containers": their eth0 is a veth into the bridge,
// with an address from the prefix and a default route via Gateway. C2 also
// holds Stray, an address of the prefix that no container owns in a
// firewall State, to prove that unowned addresses are dropped.
//
// IPv4 runs beside it, as on a Docker node's bridge (dual-stack egress):
// the bridge has Gateway4 in 192.0.2.0/24, C1 and C2 have C1Addr4 and
// C2Addr4 with a default route through it, the node reaches the router
// over 198.51.100.0/24, and ClientIn and ClientOut have In4 and Out4
// (203.0.113.2, 198.18.0.2). The router routes 192.0.2.0/24 to the node
// (no NAT here: the firewall's decision is the same before a NAT).
type Topology struct {
	Router, Node, C1, C2, ClientIn, ClientOut *NS

	Prefix    netip.Prefix // the node's /80
	Gateway   netip.Addr   // on Node's bridge
	C1Addr    netip.Addr
	C2Addr    netip.Addr
	Stray     netip.Addr // in Prefix, on C2, owned by no container
	InAddr    netip.Addr // ClientIn's address, inside InPrefix
	OutAddr   netip.Addr // ClientOut's address, inside OutPrefix
	InPrefix  netip.Prefix
	OutPrefix netip.Prefix
	NodeUp    netip.Addr // Node's address on the router link

	Gateway4 netip.Addr // Node's IPv4 address on the bridge
	C1Addr4  netip.Addr
	C2Addr4  netip.Addr
	In4      netip.Addr // ClientIn's IPv4 address
	Out4     netip.Addr // ClientOut's IPv4 address
	NodeUp4  netip.Addr // Node's IPv4 address on the router link

	Bridge     string // bridge name in Node
	RouterNode string // Router's interface towards Node (to lower its MTU)
}

// NewTopology builds the topology; everything is deleted in t.Cleanup.
func NewTopology(t testing.TB) *Topology {
	t.Helper()
	RequireRoot(t)
	tp := &Topology{
		Router: New(t, "rtr"), Node: New(t, "node"), C1: New(t, "c1"), C2: New(t, "c2"),
		ClientIn: New(t, "cin"), ClientOut: New(t, "cout"),
		Prefix:     netip.MustParsePrefix("2001:db8:1:2:3::/80"),
		Gateway:    netip.MustParseAddr("2001:db8:1:2:3::1"),
		C1Addr:     netip.MustParseAddr("2001:db8:1:2:3::c1"),
		C2Addr:     netip.MustParseAddr("2001:db8:1:2:3::c2"),
		Stray:      netip.MustParseAddr("2001:db8:1:2:3::99"),
		InAddr:     netip.MustParseAddr("2001:db8:a::2"),
		OutAddr:    netip.MustParseAddr("2001:db8:b::2"),
		InPrefix:   netip.MustParsePrefix("2001:db8:a::/64"),
		OutPrefix:  netip.MustParsePrefix("2001:db8:b::/64"),
		NodeUp:     netip.MustParseAddr("2001:db8:ff::2"),
		Gateway4:   netip.MustParseAddr("192.0.2.1"),
		C1Addr4:    netip.MustParseAddr("192.0.2.11"),
		C2Addr4:    netip.MustParseAddr("192.0.2.12"),
		In4:        netip.MustParseAddr("203.0.113.2"),
		Out4:       netip.MustParseAddr("198.18.0.2"),
		NodeUp4:    netip.MustParseAddr("198.51.100.2"),
		Bridge:     "br0",
		RouterNode: "r-node",
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("topology: %v", err)
		}
	}
	any6 := netip.MustParsePrefix("::/0")
	any4 := netip.MustParsePrefix("0.0.0.0/0")
	for _, ns := range []*NS{tp.Router, tp.Node} {
		must(ns.Sysctl("net.ipv6.conf.all.forwarding", "1"))
		must(ns.Sysctl("net.ipv4.ip_forward", "1"))
	}
	// Router links.
	must(tp.Router.Veth("r-node", tp.Node, "up0"))
	must(tp.Router.Addr("r-node", netip.MustParsePrefix("2001:db8:ff::1/64")))
	must(tp.Node.Addr("up0", netip.MustParsePrefix("2001:db8:ff::2/64")))
	must(tp.Router.Route(tp.Prefix, tp.NodeUp, "r-node"))
	must(tp.Node.Route(any6, netip.MustParseAddr("2001:db8:ff::1"), "up0"))
	must(tp.Router.Addr("r-node", netip.MustParsePrefix("198.51.100.1/24")))
	must(tp.Node.Addr("up0", netip.PrefixFrom(tp.NodeUp4, 24)))
	must(tp.Router.Route(netip.MustParsePrefix("192.0.2.0/24"), tp.NodeUp4, "r-node"))
	must(tp.Node.Route(any4, netip.MustParseAddr("198.51.100.1"), "up0"))

	clients := []struct {
		ns          *NS
		rif         string
		addr, rtr   string
		clientAddr  netip.Addr
		addr4, rtr4 string
		clientAddr4 netip.Addr
	}{
		{tp.ClientIn, "r-cin", "2001:db8:a::1/64", "2001:db8:a::1", tp.InAddr, "203.0.113.1/24", "203.0.113.1", tp.In4},
		{tp.ClientOut, "r-cout", "2001:db8:b::1/64", "2001:db8:b::1", tp.OutAddr, "198.18.0.1/24", "198.18.0.1", tp.Out4},
	}
	for _, c := range clients {
		must(tp.Router.Veth(c.rif, c.ns, "eth0"))
		must(tp.Router.Addr(c.rif, netip.MustParsePrefix(c.addr)))
		must(c.ns.Addr("eth0", netip.PrefixFrom(c.clientAddr, 64)))
		must(c.ns.Route(any6, netip.MustParseAddr(c.rtr), "eth0"))
		must(tp.Router.Addr(c.rif, netip.MustParsePrefix(c.addr4)))
		must(c.ns.Addr("eth0", netip.PrefixFrom(c.clientAddr4, 24)))
		must(c.ns.Route(any4, netip.MustParseAddr(c.rtr4), "eth0"))
	}

	// The node's bridge and the two containers.
	must(tp.Node.Bridge(tp.Bridge))
	must(tp.Node.Addr(tp.Bridge, netip.PrefixFrom(tp.Gateway, 80)))
	must(tp.Node.Addr(tp.Bridge, netip.PrefixFrom(tp.Gateway4, 24)))
	for i, c := range []struct {
		ns    *NS
		addr  netip.Addr
		addr4 netip.Addr
	}{{tp.C1, tp.C1Addr, tp.C1Addr4}, {tp.C2, tp.C2Addr, tp.C2Addr4}} {
		host := []string{"vc1", "vc2"}[i]
		must(tp.Node.Veth(host, c.ns, "eth0"))
		must(tp.Node.SetMaster(host, tp.Bridge))
		must(c.ns.Addr("eth0", netip.PrefixFrom(c.addr, 80)))
		must(c.ns.Route(any6, tp.Gateway, "eth0"))
		must(c.ns.Addr("eth0", netip.PrefixFrom(c.addr4, 24)))
		must(c.ns.Route(any4, tp.Gateway4, "eth0"))
	}
	must(tp.C2.Addr("eth0", netip.PrefixFrom(tp.Stray, 80)))
	return tp
}
