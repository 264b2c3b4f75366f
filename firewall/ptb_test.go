package firewall

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"

	"github.com/v6reg/v6reg/internal/netns"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv6"
)

var sprintf = fmt.Sprintf

// sendPTB sends, from ns, an ICMPv6 packet-too-big to victim quoting an
// echo request with the given id from victim to dst.
func sendPTB(ns *netns.NS, victim, dst netip.Addr, echoID uint16, mtu int) error {
	inner := make([]byte, 40+8)
	inner[0] = 0x60
	inner[4], inner[5] = 0, 8 // payload length
	inner[6] = 58             // next header: ICMPv6
	inner[7] = 64
	copy(inner[8:24], victim.AsSlice())
	copy(inner[24:40], dst.AsSlice())
	inner[40] = 128 // echo request; checksum is not verified in quotes
	binary.BigEndian.PutUint16(inner[44:], echoID)
	msg := icmp.Message{Type: ipv6.ICMPTypePacketTooBig, Body: &icmp.PacketTooBig{MTU: mtu, Data: inner}}
	b, err := msg.Marshal(nil)
	if err != nil {
		return err
	}
	return ns.Run(func() error {
		pc, err := icmp.ListenPacket("ip6:ipv6-icmp", "::")
		if err != nil {
			return fmt.Errorf("icmp socket: %w", err)
		}
		defer pc.Close()
		if _, err := pc.WriteTo(b, &net.IPAddr{IP: victim.AsSlice()}); err != nil {
			return fmt.Errorf("send packet-too-big: %w", err)
		}
		return nil
	})
}

// pathMTU is the route MTU towards dst as seen in ns (0: none recorded).
func pathMTU(ns *netns.NS, dst netip.Addr) (int, error) {
	rs, err := ns.Handle().RouteGet(dst.AsSlice())
	if err != nil {
		return 0, fmt.Errorf("route get %s: %w", dst, err)
	}
	if len(rs) == 0 {
		return 0, nil
	}
	return rs[0].MTU, nil
}
