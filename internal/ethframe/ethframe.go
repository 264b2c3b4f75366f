// Package ethframe builds the raw Ethernet frames that tests and the
// in-container probe (v6probe) write through AF_PACKET sockets. No
// dependencies, so the static probe stays small.
package ethframe

import (
	"encoding/binary"
	"net"
)

// Ethertypes used here.
const (
	TypeIPv4 = 0x0800
	TypeARP  = 0x0806
)

// Broadcast is the Ethernet broadcast address.
var Broadcast = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// GratuitousARP is a broadcast ARP request from src announcing ip (an
// IPv4 address; any 4 bytes do) as its own: sender = target. Padded to
// the minimum Ethernet frame (60 bytes without the FCS).
func GratuitousARP(src net.HardwareAddr, ip [4]byte) []byte {
	frame := make([]byte, 60)
	copy(frame[0:6], Broadcast)
	copy(frame[6:12], src)
	binary.BigEndian.PutUint16(frame[12:], TypeARP)
	arp := frame[14:]
	binary.BigEndian.PutUint16(arp[0:], 1) // hardware: Ethernet
	binary.BigEndian.PutUint16(arp[2:], TypeIPv4)
	arp[4], arp[5] = 6, 4
	binary.BigEndian.PutUint16(arp[6:], 1) // request
	copy(arp[8:14], src)
	copy(arp[14:18], ip[:])
	copy(arp[24:28], ip[:])
	return frame
}

// Htons puts v in network byte order for a sockaddr_ll protocol field.
func Htons(v uint16) uint16 {
	return binary.NativeEndian.Uint16(binary.BigEndian.AppendUint16(nil, v))
}
