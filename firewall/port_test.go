package firewall

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/v6reg/v6reg/internal/ethframe"
	"github.com/v6reg/v6reg/internal/netns"
	"golang.org/x/sys/unix"
)

// TestContainerPortSendsOnlyItsOwn sends, from c1's port with c1's own
// MAC (what NET_RAW allows any container), each kind of frame the bridge
// table must stop, and counts at c2 (a packet socket on its eth0) the
// frames that arrive: all of them without the table (the positive
// control), none with it, and each one counted as spoofed at the port.
func TestContainerPortSendsOnlyItsOwn(t *testing.T) {
	e := newEnv(t)
	tp := e.tp
	c1 := mustLink(t, tp.C1, "eth0")
	c2 := mustLink(t, tp.C2, "eth0")
	c1mac, c2mac := c1.Attrs().HardwareAddr, c2.Attrs().HardwareAddr
	vc1, vc2 := mustLink(t, tp.Node, "vc1").Attrs().Index, mustLink(t, tp.Node, "vc2").Attrs().Index
	ll1 := linkLocalOf(t, tp.C1, "eth0")
	s := State{Prefix: tp.Prefix, Gateway: tp.Gateway, Bridge: tp.Bridge, PeerSets: map[string][]netip.Prefix{},
		Containers: []Container{
			{ID: "c1", Addr: tp.C1Addr, Addr4: tp.C1Addr4, MAC: c1mac, Port: vc1},
			{ID: "c2", Addr: tp.C2Addr, Addr4: tp.C2Addr4, MAC: c2mac, Port: vc2},
		}}
	allNodes := netip.MustParseAddr("ff02::1")
	allMAC := net.HardwareAddr{0x33, 0x33, 0, 0, 0, 1}
	// Each frame carries tail (a marker and an index) inside its IP
	// payload: br_netfilter trims a frame to its IP length.
	frames := []struct {
		what  string
		frame func(tail []byte) []byte
	}{
		{"router advertisement", func(tl []byte) []byte {
			return ip6Frame(c1mac, allMAC, ll1, allNodes, 58, 255, icmp6(134, append(make([]byte, 12), tl...)))
		}},
		{"redirect", func(tl []byte) []byte {
			return ip6Frame(c1mac, c2mac, ll1, tp.C2Addr, 58, 255, icmp6(137, cat(make([]byte, 4), tp.InAddr.AsSlice(), tp.C1Addr.AsSlice(), tl)))
		}},
		{"neighbour advertisement for c2's address", func(tl []byte) []byte {
			return ip6Frame(c1mac, allMAC, tp.C1Addr, allNodes, 58, 255, icmp6(136, cat([]byte{0xa0, 0, 0, 0}, tp.C2Addr.AsSlice(), tl)))
		}},
		{"DAD solicitation for c2's address", func(tl []byte) []byte {
			return ip6Frame(c1mac, allMAC, netip.IPv6Unspecified(), allNodes, 58, 255, icmp6(135, cat(make([]byte, 4), tp.C2Addr.AsSlice(), tl)))
		}},
		{"DHCPv6 advertise", func(tl []byte) []byte {
			return ip6Frame(c1mac, allMAC, ll1, allNodes, 17, 64, udp(547, 546, cat([]byte{2, 0, 0, 1}, tl)))
		}},
		{"IPv6 from c2's address", func(tl []byte) []byte { return ip6Frame(c1mac, c2mac, tp.C2Addr, tp.C2Addr, 17, 64, udp(9, 9, tl)) }},
		{"IPv6 from an outside address", func(tl []byte) []byte { return ip6Frame(c1mac, c2mac, tp.InAddr, tp.C2Addr, 17, 64, udp(9, 9, tl)) }},
		{"IPv4 from c2's IPv4 address", func(tl []byte) []byte { return ip4Frame(c1mac, c2mac, tp.C2Addr4, tp.C2Addr4, udp(9, 9, tl)) }},
		{"ARP claiming c2's IPv4 address", func(tl []byte) []byte { return append(ethframe.GratuitousARP(c1mac, tp.C2Addr4.As4()), tl...) }},
		{"VLAN-tagged IPv6 from c1's own address", func(tl []byte) []byte {
			return vlan(ip6Frame(c1mac, c2mac, tp.C1Addr, tp.C2Addr, 17, 64, udp(9, 9, tl)), 0x8100, 7)
		}},
		{"802.1ad-tagged IPv6 from c1's own address", func(tl []byte) []byte {
			return vlan(ip6Frame(c1mac, c2mac, tp.C1Addr, tp.C2Addr, 17, 64, udp(9, 9, tl)), 0x88a8, 7)
		}},
	}
	marker := []byte("v6reg-port-test")
	seen := watchFrames(t, tp.C2, c2.Attrs().Index, marker)
	send := func(base byte) {
		t.Helper()
		for i, f := range frames {
			must(t, tp.C1.SendFrame(c1.Attrs().Index, f.frame(cat(marker, []byte{base + byte(i)}))))
		}
	}
	// Positive control: without the table every frame reaches c2.
	send(0)
	deadline := time.Now().Add(okWait)
	for len(seen()) < len(frames) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	for i, f := range frames {
		if !seen()[byte(i)] {
			t.Errorf("no table: %s did not reach c2; the check below could not fail", f.what)
		}
	}
	if t.Failed() {
		return
	}
	e.apply(t, s)
	before := portSpoofCount(t, e)
	send(100)
	time.Sleep(dropWait)
	got := seen()
	for i, f := range frames {
		if got[byte(100+i)] {
			t.Errorf("%s from c1's port reached c2", f.what)
		}
	}
	if n := portSpoofCount(t, e) - before; n != uint64(len(frames)) {
		t.Errorf("bridge port drops: %d, want %d (one per frame)", n, len(frames))
	}
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// watchFrames counts, by the byte after marker, the frames arriving on
// link ifindex of ns that carry marker.
func watchFrames(t *testing.T, ns *netns.NS, ifindex int, marker []byte) func() map[byte]bool {
	t.Helper()
	var fd int
	must(t, ns.Run(func() (err error) {
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(ethframe.Htons(unix.ETH_P_ALL)))
		if err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: ethframe.Htons(unix.ETH_P_ALL), Ifindex: ifindex})
	}))
	var got atomic.Pointer[map[byte]bool]
	got.Store(&map[byte]bool{})
	done := make(chan struct{})
	t.Cleanup(func() { close(done); _ = unix.Close(fd) })
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 100000})
	go func() {
		buf := make([]byte, 4096)
		for {
			select {
			case <-done:
				return
			default:
			}
			n, _, err := unix.Recvfrom(fd, buf, 0)
			if err != nil {
				continue
			}
			if i := bytes.Index(buf[:n], marker); i >= 0 && i+len(marker) < n {
				m := map[byte]bool{}
				for k, v := range *got.Load() {
					m[k] = v
				}
				m[buf[i+len(marker)]] = true
				got.Store(&m)
			}
		}
	}()
	return func() map[byte]bool { return *got.Load() }
}

func eth(src, dst net.HardwareAddr, typ uint16) []byte {
	f := append(append(bytes.Clone(dst), src...), 0, 0)
	binary.BigEndian.PutUint16(f[12:], typ)
	return f
}

// ip6Frame is an Ethernet frame carrying an IPv6 packet (checksums are
// not computed: the bridge and the table do not look at them).
func ip6Frame(src, dst net.HardwareAddr, from, to netip.Addr, next, hop byte, payload []byte) []byte {
	h := make([]byte, 40)
	h[0] = 0x60
	binary.BigEndian.PutUint16(h[4:], uint16(len(payload))) //nolint:gosec // G115: test payloads are small
	h[6], h[7] = next, hop
	copy(h[8:24], from.AsSlice())
	copy(h[24:40], to.AsSlice())
	return append(append(eth(src, dst, unix.ETH_P_IPV6), h...), payload...)
}

func ip4Frame(src, dst net.HardwareAddr, from, to netip.Addr, payload []byte) []byte {
	h := make([]byte, 20)
	h[0] = 0x45
	binary.BigEndian.PutUint16(h[2:], uint16(20+len(payload))) //nolint:gosec // G115: test payloads are small
	h[8], h[9] = 64, 17
	copy(h[12:16], from.AsSlice())
	copy(h[16:20], to.AsSlice())
	var sum uint32 // br_netfilter checks the IPv4 header checksum
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(h[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(h[10:], ^uint16(sum)) //nolint:gosec // G115: folded to 16 bits
	return append(append(eth(src, dst, unix.ETH_P_IP), h...), payload...)
}

func icmp6(typ byte, body []byte) []byte { return append([]byte{typ, 0, 0, 0}, body...) }

func udp(sport, dport uint16, payload []byte) []byte {
	h := make([]byte, 8)
	binary.BigEndian.PutUint16(h[0:], sport)
	binary.BigEndian.PutUint16(h[2:], dport)
	binary.BigEndian.PutUint16(h[4:], uint16(8+len(payload))) //nolint:gosec // G115: test payloads are small
	return append(h, payload...)
}

// vlan inserts a tag (TPID 0x8100 or 0x88a8) with id vid into an
// Ethernet frame.
func vlan(frame []byte, tpid, vid uint16) []byte {
	tag := []byte{byte(tpid >> 8), byte(tpid), byte(vid >> 8), byte(vid)}
	return append(append(bytes.Clone(frame[:12]), tag...), frame[12:]...)
}
