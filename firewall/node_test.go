package firewall

import (
	"context"
	"net/netip"
	"os/exec"
	"testing"

	"github.com/v6reg/v6reg/internal/netns"
)

// TestNodeServices proves that a container reaches the node itself (a
// listener on the gateway address in the node namespace) only where
// State.NodePorts allows it, that such drops count as the container's
// egress drops, and that what must keep working does: the node's replies
// to its own connections, neighbour discovery with the gateway, the
// node's traffic to itself, and anti-spoofing on this path.
func TestNodeServices(t *testing.T) {
	e := newEnv(t)
	tp := e.tp
	ctx := context.Background()
	tp.Node.ServeTCP(t, tp.Gateway, 9999)
	tp.Node.ServeTCP(t, tp.Gateway, 9998)

	// Positive control without the table.
	pass(t, "no table: c1 -> gateway:9999", tp.C1.DialTCP(tp.C1Addr, tp.Gateway, 9999, okWait))

	s := e.state()
	e.apply(t, s)
	before := egressDrops(t, e.fw, "c1")
	drop(t, "c1 -> gateway:9999 (no node ports)", tp.C1.DialTCP(tp.C1Addr, tp.Gateway, 9999, dropWait))
	drop(t, "c1 ping gateway (no node ports)", tp.C1.Ping(tp.Gateway, dropWait))
	if got := egressDrops(t, e.fw, "c1") - before; got < 2 {
		t.Errorf("c1 egress drops: got %d more packets, want >= 2 (the SYN and the echo request to the node)", got)
	}
	// The node's traffic to itself, from the gateway address over lo.
	pass(t, "node -> gateway:9999 (itself)", tp.Node.DialTCP(tp.Gateway, tp.Gateway, 9999, okWait))
	// The node's own connection to a container: the replies come back
	// through input and pass as established, whatever NodePorts says.
	c, err := tp.Node.ConnectTCP(tp.Gateway, tp.C1Addr, 8080, okWait)
	if err != nil {
		t.Fatalf("node -> c1:8080: %v", err)
	}
	if err := echo(c); err != nil {
		t.Errorf("echo on node -> c1:8080: %v", err)
	}
	c.Close()
	// Neighbour discovery between c1 and the gateway: forget both
	// neighbour entries, then a flow through the gateway needs NS/NA
	// from c1's global address to the node (and back) to pass input.
	flushNeigh(t, tp.C1, "eth0")
	flushNeigh(t, tp.Node, tp.Bridge)
	pass(t, "c1 -> client-in:443 after a neighbour flush", tp.C1.DialTCP(tp.C1Addr, tp.InAddr, 443, okWait))

	s.NodePorts = []Rule{{Proto: TCP, Ports: ports(9999)}, {Peer: PeerAny, Proto: ICMP}}
	restores := e.fw.Restores()
	if ch := e.apply(t, s); ch.ChainsUpdated != 1 || ch.ChainsRewritten != 0 || ch.ElemsAdded+ch.ElemsRemoved != 0 {
		t.Errorf("node ports change: got %+v, want only chain node updated", ch)
	}
	if e.fw.Restores() != restores {
		t.Errorf("a node ports change counted as a restore")
	}
	pass(t, "c1 -> gateway:9999 (node port)", tp.C1.DialTCP(tp.C1Addr, tp.Gateway, 9999, okWait))
	pass(t, "c2 -> gateway:9999 (node port)", tp.C2.DialTCP(tp.C2Addr, tp.Gateway, 9999, okWait))
	pass(t, "c1 ping gateway (node icmp)", tp.C1.Ping(tp.Gateway, okWait))
	drop(t, "c1 -> gateway:9998 (not a node port)", tp.C1.DialTCP(tp.C1Addr, tp.Gateway, 9998, dropWait))
	// Anti-spoofing on this path: c1 sends from an address it does not
	// own (added last: with two addresses, c1's ping above could pick it).
	spoof := netip.MustParseAddr("2001:db8:1:2:3::dead")
	must(t, tp.C1.Addr("eth0", netip.PrefixFrom(spoof, 80)))
	sp0, err := e.fw.SpoofDrops(ctx)
	must(t, err)
	drop(t, "c1 from spoofed -> gateway:9999", tp.C1.DialTCP(spoof, tp.Gateway, 9999, dropWait))
	sp1, err := e.fw.SpoofDrops(ctx)
	must(t, err)
	if sp1.Packets == sp0.Packets {
		t.Errorf("spoof drops: unchanged at %d packets, want the spoofed SYN counted", sp1.Packets)
	}

	// Closing the port again closes it.
	s.NodePorts = nil
	e.apply(t, s)
	drop(t, "c1 -> gateway:9999 (node port removed)", tp.C1.DialTCP(tp.C1Addr, tp.Gateway, 9999, dropWait))
}

func egressDrops(t *testing.T, fw *Firewall, id string) uint64 {
	t.Helper()
	cs, err := fw.Counters(context.Background())
	must(t, err)
	return cs[id].EgressDropped.Packets
}

// flushNeigh drops the neighbour entries of dev in ns (test setup only).
func flushNeigh(t *testing.T, ns *netns.NS, dev string) {
	t.Helper()
	if out, err := exec.Command("ip", "-n", ns.Name, "-6", "neigh", "flush", "dev", dev).CombinedOutput(); err != nil {
		t.Fatalf("neigh flush %s in %s: %v\n%s", dev, ns.Name, err, out)
	}
}
