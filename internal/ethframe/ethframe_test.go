package ethframe

import (
	"bytes"
	"encoding/binary"
	"net"
	"testing"
)

func TestGratuitousARP(t *testing.T) {
	mac := net.HardwareAddr{2, 0x42, 0xac, 0x11, 0, 2}
	f := GratuitousARP(mac, [4]byte{10, 0, 0, 2})
	want := []byte{
		0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0x42, 0xac, 0x11, 0, 2, 0x08, 0x06, // Ethernet
		0, 1, 0x08, 0, 6, 4, 0, 1, // ARP request for IPv4 over Ethernet
		2, 0x42, 0xac, 0x11, 0, 2, 10, 0, 0, 2, // sender
		0, 0, 0, 0, 0, 0, 10, 0, 0, 2, // target (gratuitous: sender's address)
	}
	if len(f) != 60 || !bytes.Equal(f[:len(want)], want) || !bytes.Equal(f[len(want):], make([]byte, 60-len(want))) {
		t.Errorf("frame = % x\nwant   % x (padded to 60)", f, want)
	}
	// In memory, as the kernel reads sockaddr_ll, the bytes are 08 06.
	if b := binary.NativeEndian.AppendUint16(nil, Htons(0x0806)); !bytes.Equal(b, []byte{0x08, 0x06}) {
		t.Errorf("Htons(0x0806) is % x in memory, want 08 06", b)
	}
}
