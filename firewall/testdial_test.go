package firewall

import (
	"context"
	"io"
	"log/slog"
	"net"
	"slices"
	"testing"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// fakeGen is a ruleset generation bumped by every batch the test dial sees.
type fakeGen struct{ n uint32 }

func (g *fakeGen) read() (uint32, error) { return g.n, nil }

// TestOneContainerIsOneBatchOfElements checks the netlink messages that
// adding one container sends once the table is known: one batch holding
// only element additions, one message per set it touches. The equivalent
// nft command (one transaction) is:
//
//	nft -f - <<EOF
//	add element inet v6reg containers { 2001:db8:1:2:3::1:2711 comment "..." }
//	add element inet v6reg eg_drop { 2001:db8:1:2:3::1:2711 comment "..." }
//	add element inet v6reg eg_port_list { 2001:db8:1:2:3::1:2711 . tcp . 443 comment "..." : <id>, 2001:db8:1:2:3::1:2711 . udp . 53 comment "..." : <id> }
//	add element inet v6reg in_drop { 2001:db8:1:2:3::1:2711 comment "..." }
//	add element inet v6reg in_icmp_list { 2001:db8:1:2:3::1:2711 comment "..." : <id> }
//	add element inet v6reg in_port_list { 2001:db8:1:2:3::1:2711 . tcp . 8080 comment "..." : <id>, 2001:db8:1:2:3::1:2711 . tcp . 9100 comment "..." : <id> }
//	EOF
func TestOneContainerIsOneBatchOfElements(t *testing.T) {
	gen := &fakeGen{n: 7}
	var batches [][]netlink.Message
	conn, err := nftables.New(nftables.WithTestDial(func(req []netlink.Message) ([]netlink.Message, error) {
		if len(req) > 0 && req[0].Header.Type == netlink.HeaderType(unix.NFNL_MSG_BATCH_BEGIN) {
			batches = append(batches, req)
			gen.n++
		}
		return req, nil // echoed as acknowledgements
	}))
	if err != nil {
		t.Fatal(err)
	}
	fw := New(conn, 0, slog.New(slog.NewTextHandler(io.Discard, nil)))
	fw.gen = gen
	// The table as a previous Apply left it, without sending anything.
	base := bigState(3)
	fw.m = newModel(base)
	if _, ok := fw.m.update(base, newCompiler(), nil, false); !ok {
		t.Fatal("base state rejected")
	}
	fw.liveGen, fw.live = gen.n, true

	with := base
	with.Containers = append(append([]Container(nil), base.Containers...), benchContainer(10001))
	ch, err := fw.Apply(context.Background(), with)
	if err != nil {
		t.Fatal(err)
	}
	if ch.ElemsAdded != 8 || ch.ElemsRemoved != 0 || ch.ChainsAdded != 0 || ch.SetsAdded != 0 || ch.Batches != 1 {
		t.Errorf("changes: got %+v, want 8 elements added in 1 batch, nothing else", ch)
	}
	if len(batches) != 1 {
		t.Fatalf("got %d batches, want 1", len(batches))
	}
	b := batches[0]
	last := b[len(b)-1].Header.Type
	if last != netlink.HeaderType(unix.NFNL_MSG_BATCH_END) {
		t.Errorf("batch does not end with NFNL_MSG_BATCH_END: %v", last)
	}
	newElem := netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWSETELEM)
	var sets []string
	for _, m := range b[1 : len(b)-1] {
		if m.Header.Type != newElem {
			t.Errorf("message type %#x in the batch, want only NFT_MSG_NEWSETELEM (%#x)", m.Header.Type, newElem)
			continue
		}
		sets = append(sets, setNameOf(t, m.Data))
	}
	want := []string{"containers", "eg_drop", "eg_port_list", "in_drop", "in_icmp_list", "in_port_list"}
	if len(sets) != len(want) {
		t.Fatalf("element messages for sets %v, want %v", sets, want)
	}
	for i := range want {
		if sets[i] != want[i] {
			t.Errorf("element messages for sets %v, want %v", sets, want)
			break
		}
	}
	// Applying it again sends nothing.
	if ch, err := fw.Apply(context.Background(), with); err != nil || !ch.Empty() || len(batches) != 1 {
		t.Errorf("second apply: %+v %v, %d batches; want nothing sent", ch, err, len(batches))
	}

	// A container with its MAC and bridge port: its elements of table
	// bridge v6reg go in the same batch as its inet ones.
	//	add element bridge v6reg port_bound { 2001:db8:1:2:3::1:2712 comment "..." }
	//	add element bridge v6reg port_src { 2001:db8:1:2:3::1:2712 . 17 comment "..." }
	//	add element bridge v6reg port_mac_bound { 17 comment "..." }
	//	add element bridge v6reg port_mac { 17 . 02:42:00:00:27:12 comment "..." }
	bound := benchContainer(10002)
	bound.MAC, bound.Port = net.HardwareAddr{2, 0x42, 0, 0, 0x27, 0x12}, 17
	with2 := with
	with2.Containers = append(append([]Container(nil), with.Containers...), bound)
	ch, err = fw.Apply(context.Background(), with2)
	if err != nil {
		t.Fatal(err)
	}
	if ch.ElemsAdded != 14 || ch.ElemsRemoved != 0 || ch.Batches != 1 || len(batches) != 2 {
		t.Errorf("changes: got %+v in %d batches, want 14 elements added in 1 batch", ch, len(batches)-1)
	}
	var got []string
	for _, m := range batches[len(batches)-1] {
		if m.Header.Type == newElem {
			fam := map[byte]string{unix.NFPROTO_INET: "inet", unix.NFPROTO_BRIDGE: "bridge"}[m.Data[0]]
			got = append(got, fam+" "+setNameOf(t, m.Data))
		}
	}
	want = []string{"bridge port_bound", "bridge port_mac", "bridge port_mac_bound", "bridge port_src", "inet containers", "inet eg_drop", "inet eg_port_list",
		"inet in_drop", "inet in_icmp_list", "inet in_port_list", "inet mac_bound", "inet src_mac"}
	if !slices.Equal(got, want) {
		t.Errorf("element messages for sets %v, want %v", got, want)
	}
	// Forgetting the port (a failed lookup) removes only its four
	// elements of table bridge v6reg.
	bound.Port = 0
	with2.Containers[len(with2.Containers)-1] = bound
	if ch, err := fw.Apply(context.Background(), with2); err != nil || ch.ElemsRemoved != 4 || ch.ElemsAdded != 0 || ch.Batches != 1 {
		t.Errorf("port forgotten: %+v %v; want 4 elements removed in 1 batch", ch, err)
	}
}

// setNameOf reads NFTA_SET_ELEM_LIST_SET from a NEWSETELEM message.
func setNameOf(t *testing.T, data []byte) string {
	t.Helper()
	ad, err := netlink.NewAttributeDecoder(data[4:]) // after struct nfgenmsg
	if err != nil {
		t.Fatal(err)
	}
	for ad.Next() {
		if ad.Type() == unix.NFTA_SET_ELEM_LIST_SET {
			return ad.String()
		}
	}
	return ""
}
