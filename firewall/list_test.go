package firewall

import (
	"bytes"
	"net/netip"
	"testing"
)

func TestListID(t *testing.T) {
	cp := newCompiler()
	a := cp.listID([]string{"@a"})
	b := cp.listID([]string{"@a", "@b"})
	if a == 0 || b == 0 || a == b {
		t.Fatalf("ids %#x %#x: want distinct and nonzero", a, b)
	}
	if again := cp.listID([]string{"@a"}); again != a {
		t.Errorf("same list again: id %#x, want %#x", again, a)
	}
	// Another compiler (a restarted agent) gives the same ids, so a
	// restart finds the live elements equal.
	if other := newCompiler().listID([]string{"@a", "@b"}); other != b {
		t.Errorf("fresh compiler: id %#x, want %#x", other, b)
	}
	// A collision: the hash of a new list is already taken by another.
	cp2 := newCompiler()
	cp2.taken[a] = "someone else"
	if c := cp2.listID([]string{"@a"}); c == a || c == 0 {
		t.Errorf("colliding list got id %#x, want another nonzero id than %#x", c, a)
	}
}

func TestListElems(t *testing.T) {
	sets := map[string][]netip.Prefix{
		"@x":  {pfx("2001:db8::/32")},
		"@y":  {pfx("2001:db8:1::/48"), pfx("2001:db9::/32")}, // inside @x; adjacent to it
		"@z":  {},
		"@v4": {pfx("192.0.2.0/25"), pfx("192.0.2.128/25"), pfx("2001:db8:7::/48")}, // adjacent IPv4 halves merge
	}
	of := func(n string) []netip.Prefix { return sets[n] }
	ones := bytes.Repeat([]byte{0xff}, 16)
	tests := []struct {
		name   string
		peers  []string
		ranges [][2]string // first, last address
	}{
		{"any", []string{PeerAny}, [][2]string{{"::", netip.AddrFrom16([16]byte(ones)).String()}, {"0.0.0.0", "255.255.255.255"}}},
		{"both families", []string{"@v4"}, [][2]string{{"2001:db8:7::", "2001:db8:7:ffff:ffff:ffff:ffff:ffff"}, {"192.0.2.0", "192.0.2.255"}}},
		{"merged", []string{"@x", "@y"}, [][2]string{{"2001:db8::", "2001:db9:ffff:ffff:ffff:ffff:ffff:ffff"}}},
		{"empty peer set", []string{"@z"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pl := peerList{id: 0x01020304, peers: tt.peers}
			es := listElems(pl, of)
			if len(es) != len(tt.ranges) {
				t.Fatalf("got %d elements, want %d", len(es), len(tt.ranges))
			}
			for i, r := range tt.ranges {
				wantKey := key(pl.id.bytes(), addr(r[0]).AsSlice())
				wantEnd := key(pl.id.bytes(), addr(r[1]).AsSlice())
				wantSet := "lists"
				if addr(r[0]).Is4() {
					wantSet = "lists4"
				}
				if e := es[i].e; es[i].set != wantSet || !bytes.Equal(e.key, wantKey) || !bytes.Equal(e.keyEnd, wantEnd) {
					t.Errorf("element %d: %s key %x end %x, want %s %x %x", i, es[i].set, e.key, e.keyEnd, wantSet, wantKey, wantEnd)
				}
			}
		})
	}
}
