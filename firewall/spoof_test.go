package firewall

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/v6reg/v6reg/internal/ethframe"
	"github.com/v6reg/v6reg/internal/netns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TestMACAntiSpoofing proves that a container cannot send from another
// container's address on the same bridge once both have their MAC in the
// State: C1 forges C2's address (with its own MAC, as a container can) on
// a routed flow and on a bridged one; both are dropped and counted, while
// C2's real packets pass.
func TestMACAntiSpoofing(t *testing.T) {
	e := newEnv(t)
	tp := e.tp
	mac := func(ns *netns.NS) net.HardwareAddr {
		l, err := ns.Handle().LinkByName("eth0")
		if err != nil {
			t.Fatal(err)
		}
		return l.Attrs().HardwareAddr
	}
	c1mac, c2mac := mac(tp.C1), mac(tp.C2)
	const port = 7000
	inRx := listenUDP(t, tp.ClientIn, tp.InAddr, port)
	strayRx := listenUDP(t, tp.C2, tp.Stray, port)

	udpAny := []Rule{{Peer: PeerAny, Proto: UDP}}
	s := State{Prefix: tp.Prefix, Gateway: tp.Gateway, PeerSets: map[string][]netip.Prefix{},
		Containers: []Container{
			{ID: "c1", Addr: tp.C1Addr, MAC: c1mac, Egress: udpAny},
			{ID: "c2", Addr: tp.C2Addr, MAC: c2mac, Egress: udpAny},
			// Stray sits on C2's interface: a second container address
			// there, so that C1 -> Stray is bridged traffic.
			{ID: "c2b", Addr: tp.Stray, MAC: c2mac, Ingress: udpAny},
		}}

	forged := func(dst netip.Addr, tag string) error { return sendRawUDP(tp.C1, tp.C2Addr, dst, port, tag) }
	// Positive controls without the table: a forged packet gets through.
	must(t, forged(tp.InAddr, "ctl-routed"))
	inRx.want(t, "ctl-routed", true)
	must(t, forged(tp.Stray, "ctl-bridged"))
	strayRx.want(t, "ctl-bridged", true)

	e.apply(t, s)
	before, err := e.fw.SpoofDrops(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	must(t, forged(tp.InAddr, "forged-routed"))
	must(t, forged(tp.Stray, "forged-bridged"))
	must(t, sendRawUDP(tp.C2, tp.C2Addr, tp.InAddr, port, "real-c2"))
	must(t, sendRawUDP(tp.C1, tp.C1Addr, tp.Stray, port, "real-c1-bridged"))
	inRx.want(t, "real-c2", true)
	strayRx.want(t, "real-c1-bridged", true)
	inRx.want(t, "forged-routed", false)
	strayRx.want(t, "forged-bridged", false)
	after, err := e.fw.SpoofDrops(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if got := after.Packets - before.Packets; got != 2 {
		t.Errorf("spoof drops: got %d more packets, want 2 (the two forged ones)", got)
	}

	// Without C2's MAC in the State the forgery is not caught (the
	// address is C2's, so the other checks pass): the MAC is what makes
	// the difference, and the agent must pass it.
	s.Containers[1].MAC = nil
	e.apply(t, s)
	must(t, forged(tp.InAddr, "forged-nomac"))
	inRx.want(t, "forged-nomac", true)
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// udpRx collects the payloads a UDP socket receives.
type udpRx struct{ got chan string }

func listenUDP(t *testing.T, ns *netns.NS, a netip.Addr, port int) *udpRx {
	t.Helper()
	var pc net.PacketConn
	must(t, ns.Run(func() (err error) {
		pc, err = net.ListenPacket("udp6", net.JoinHostPort(a.String(), strconv.Itoa(port)))
		return err
	}))
	t.Cleanup(func() { pc.Close() })
	rx := &udpRx{got: make(chan string, 64)}
	go func() {
		buf := make([]byte, 256)
		for {
			n, _, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			rx.got <- string(buf[:n])
		}
	}()
	return rx
}

// want waits for payload tag (arrive) or makes sure it does not arrive.
func (rx *udpRx) want(t *testing.T, tag string, arrive bool) {
	t.Helper()
	wait := okWait
	if !arrive {
		wait = dropWait
	}
	deadline := time.After(wait)
	for {
		select {
		case g := <-rx.got:
			if g == tag {
				if !arrive {
					t.Errorf("%s: arrived, want dropped", tag)
				}
				return
			}
		case <-deadline:
			if arrive {
				t.Errorf("%s: did not arrive within %v", tag, wait)
			}
			return
		}
	}
}

// sendRawUDP sends one UDP datagram from ns with any source address,
// through a raw socket that writes the IPv6 header itself.
func sendRawUDP(ns *netns.NS, src, dst netip.Addr, port int, payload string) error {
	pkt := make([]byte, 48+len(payload))
	pkt[0] = 0x60
	binary.BigEndian.PutUint16(pkt[4:], uint16(8+len(payload)))
	pkt[6], pkt[7] = unix.IPPROTO_UDP, 64
	copy(pkt[8:24], src.AsSlice())
	copy(pkt[24:40], dst.AsSlice())
	u := pkt[40:]
	binary.BigEndian.PutUint16(u[0:], 40000)
	binary.BigEndian.PutUint16(u[2:], uint16(port))
	binary.BigEndian.PutUint16(u[4:], uint16(8+len(payload)))
	copy(u[8:], payload)
	binary.BigEndian.PutUint16(u[6:], udpChecksum(src, dst, u))
	return ns.Run(func() error {
		fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_RAW, unix.IPPROTO_RAW)
		if err != nil {
			return fmt.Errorf("raw socket: %w", err)
		}
		defer unix.Close(fd)
		if err := unix.Sendto(fd, pkt, 0, &unix.SockaddrInet6{Addr: dst.As16()}); err != nil {
			return fmt.Errorf("raw send %s -> %s: %w", src, dst, err)
		}
		return nil
	})
}

func udpChecksum(src, dst netip.Addr, u []byte) uint16 {
	var sum uint32
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(binary.BigEndian.Uint16(b[i:]))
		}
		if len(b)%2 == 1 {
			sum += uint32(b[len(b)-1]) << 8
		}
	}
	add(src.AsSlice())
	add(dst.AsSlice())
	sum += uint32(len(u)) + unix.IPPROTO_UDP
	add(u)
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	c := ^uint16(sum)
	if c == 0 {
		c = 0xffff
	}
	return c
}

// TestPortAntiSpoofing proves that a container cannot send from another
// container's address even with that container's MAC, once both have
// their bridge port in the State: C1 takes C2's MAC on its eth0 (as a
// container with NET_ADMIN can; NET_RAW alone can write any source MAC)
// and sends from C2's address. The frame enters the bridge through C1's
// port, so chain prerouting of table bridge v6reg drops and counts it;
// C2's own packets pass. With C2's port left 0 in the State the same
// forgery passes (the MAC check alone cannot tell them apart), so the
// test fails if the bridge table stops working. C1's MAC is not in the
// State, so that the port's own MAC check (TestPortMACAntiSpoofing) does
// not take these frames first.
func TestPortAntiSpoofing(t *testing.T) {
	e := newEnv(t)
	tp := e.tp
	link := func(ns *netns.NS, name string) (net.HardwareAddr, int) {
		l, err := ns.Handle().LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		return l.Attrs().HardwareAddr, l.Attrs().Index
	}
	c2mac, _ := link(tp.C2, "eth0")
	_, vc1 := link(tp.Node, "vc1")
	_, vc2 := link(tp.Node, "vc2")
	const port = 7001
	inRx := listenUDP(t, tp.ClientIn, tp.InAddr, port)

	udpAny := []Rule{{Peer: PeerAny, Proto: UDP}}
	s := State{Prefix: tp.Prefix, Gateway: tp.Gateway, PeerSets: map[string][]netip.Prefix{},
		Containers: []Container{
			{ID: "c1", Addr: tp.C1Addr, Port: vc1, Egress: udpAny},
			{ID: "c2", Addr: tp.C2Addr, MAC: c2mac, Port: vc2, Egress: udpAny},
		}}
	e.apply(t, s)
	spoofed := func() uint64 {
		t.Helper()
		c, err := e.fw.SpoofDrops(context.Background())
		must(t, err)
		return c.Packets
	}
	portSpoofed := func() uint64 {
		t.Helper()
		c, err := e.fw.PortSpoofDrops(context.Background())
		must(t, err)
		return c.Packets
	}
	before, brBefore := spoofed(), portSpoofed()

	// The bound port does not get in the way of the real senders.
	must(t, sendRawUDP(tp.C1, tp.C1Addr, tp.InAddr, port, "real-c1"))
	inRx.want(t, "real-c1", true)

	// C1 becomes C2 on the link: same MAC, C2's address.
	must(t, tp.C1.Handle().LinkSetHardwareAddr(mustLink(t, tp.C1, "eth0"), c2mac))
	forged := func(tag string) error { return sendRawUDP(tp.C1, tp.C2Addr, tp.InAddr, port, tag) }
	must(t, forged("forged-mac-and-addr"))
	inRx.want(t, "forged-mac-and-addr", false)
	must(t, sendRawUDP(tp.C2, tp.C2Addr, tp.InAddr, port, "real-c2"))
	inRx.want(t, "real-c2", true)
	if got := spoofed() - before; got != 1 {
		t.Errorf("spoof drops: got %d more packets, want 1 (the forged one)", got)
	}
	if got := portSpoofed() - brBefore; got != 1 {
		t.Errorf("drops of chain bridge v6reg prerouting: got %d more, want 1", got)
	}
	// The split the metrics read: the same counters, each chain once.
	byPort, bySource, err := e.fw.SpoofDropsByCheck(context.Background())
	must(t, err)
	if all := spoofed(); byPort.Packets != portSpoofed() || byPort.Packets+bySource.Packets != all || byPort.Packets == 0 {
		t.Errorf("SpoofDropsByCheck: bridge port %d + source %d; want PortSpoofDrops %d (> 0) and a sum of SpoofDrops %d", byPort.Packets, bySource.Packets, portSpoofed(), all)
	}

	// Positive control: without C2's port only the MAC check is left,
	// and the forged MAC passes it.
	s.Containers[1].Port = 0
	e.apply(t, s)
	must(t, forged("forged-no-port"))
	inRx.want(t, "forged-no-port", true)
}

func mustLink(t *testing.T, ns *netns.NS, name string) netlink.Link {
	t.Helper()
	l, err := ns.Handle().LinkByName(name)
	must(t, err)
	return l
}

// TestPortMACAntiSpoofing proves that a container cannot take another
// container's MAC on the bridge: C1 (its own MAC on its link, as a
// container with only NET_RAW) sends gratuitous ARP frames whose source
// MAC is C2's. With both ports bound the bridge still forwards C2's MAC
// to C2's port, and each frame is counted. Positive control: with C1's
// binding gone the same frame moves C2's MAC to C1's port, so the check
// below can fail.
func TestPortMACAntiSpoofing(t *testing.T) {
	e := newEnv(t)
	tp := e.tp
	c1 := mustLink(t, tp.C1, "eth0")
	c2 := mustLink(t, tp.C2, "eth0")
	c1mac, c2mac := c1.Attrs().HardwareAddr, c2.Attrs().HardwareAddr
	vc1, vc2 := mustLink(t, tp.Node, "vc1").Attrs().Index, mustLink(t, tp.Node, "vc2").Attrs().Index
	s := State{Prefix: tp.Prefix, Gateway: tp.Gateway, PeerSets: map[string][]netip.Prefix{},
		Containers: []Container{
			{ID: "c1", Addr: tp.C1Addr, Addr4: tp.C1Addr4, MAC: c1mac, Port: vc1},
			{ID: "c2", Addr: tp.C2Addr, Addr4: tp.C2Addr4, MAC: c2mac, Port: vc2},
		}}
	e.apply(t, s)
	portSpoofed := func() uint64 {
		t.Helper()
		c, err := e.fw.PortSpoofDrops(context.Background())
		must(t, err)
		return c.Packets
	}
	// C2 talks (its own MAC, from its own port): the bridge learns it.
	must(t, sendARP(tp.C2, c2.Attrs().Index, c2mac, tp.C2Addr4))
	wantFDB(t, tp.Node, c2mac, vc2, "after C2's own frame")
	// C1's own frames pass the check.
	before := portSpoofed()
	must(t, sendARP(tp.C1, c1.Attrs().Index, c1mac, tp.C1Addr4))
	wantFDB(t, tp.Node, c1mac, vc1, "after C1's own frame")
	if got := portSpoofed() - before; got != 0 {
		t.Errorf("C1's own frame was counted as spoofed (%d)", got)
	}

	// A moved entry lasts only until C2 talks again (here ~0.4 s later),
	// so the check watches the bridge's forwarding table notifications
	// rather than sampling the table.
	moves := tp.Node.WatchFDB(t, c2mac)
	const forgeries = 3
	for range forgeries {
		must(t, sendARP(tp.C1, c1.Attrs().Index, c2mac, tp.C1Addr4))
	}
	// The frames reach the bridge asynchronously (the veth's backlog):
	// wait until they are counted, or long enough for them to have been
	// learned if they were not dropped.
	for deadline := time.Now().Add(2 * time.Second); portSpoofed()-before < forgeries && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	if got := portSpoofed() - before; got != forgeries {
		t.Errorf("port spoof drops: got %d more, want %d (the forged frames)", got, forgeries)
	}
	if got, err := moves(); err != nil {
		t.Error(err)
	} else if slices.Contains(got, vc1) {
		t.Errorf("frames from C1 with C2's MAC moved it to C1's port %d (forwarding table updates for it: ports %v)", vc1, got)
	}
	wantFDB(t, tp.Node, c2mac, vc2, "after C1 sent frames from C2's MAC")

	// Positive control: without C1's binding the forgery moves C2's MAC.
	s.Containers[0].MAC = nil
	e.apply(t, s)
	moves = tp.Node.WatchFDB(t, c2mac)
	must(t, sendARP(tp.C1, c1.Attrs().Index, c2mac, tp.C1Addr4))
	got, err := moves()
	for deadline := time.Now().Add(2 * time.Second); err == nil && !slices.Contains(got, vc1) && time.Now().Before(deadline); got, err = moves() {
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Error(err)
	} else if !slices.Contains(got, vc1) {
		t.Errorf("control (C1 unbound, a frame from C2's MAC): the bridge did not move C2's MAC to C1's port %d (updates: ports %v); the check above cannot fail", vc1, got)
	}
}

// wantFDB waits (2 s at most: a frame reaches the bridge through the
// veth's backlog, not within the send) until the bridge of ns forwards
// mac to port, and fails the test if it does not. It passes at once when
// mac is already there: a caller checking that a frame did not move mac
// makes sure the frame was processed first.
func wantFDB(t *testing.T, ns *netns.NS, mac net.HardwareAddr, port int, when string) {
	t.Helper()
	var at int
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		var err error
		at, err = ns.FDBPort(mac)
		must(t, err)
		if at == port || time.Now().After(deadline) {
			break
		}
	}
	if at != port {
		t.Errorf("%s: the bridge forwards %s to port %d, want %d", when, mac, at, port)
	}
}

// sendARP has C (ns, its link ifindex) send a gratuitous ARP whose
// source MAC is src; the ARP payload announces addr's last 4 bytes (no
// one's IPv4 address: only the frame's source matters to the bridge).
// sendARP sends a gratuitous ARP for the IPv4 address addr from MAC src.
func sendARP(ns *netns.NS, ifindex int, src net.HardwareAddr, addr netip.Addr) error {
	return ns.SendFrame(ifindex, ethframe.GratuitousARP(src, addr.As4()))
}
