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
		"@x": {pfx("2001:db8::/32")},
		"@y": {pfx("2001:db8:1::/48"), pfx("2001:db9::/32")}, // inside @x; adjacent to it
		"@z": {},
	}
	of := func(n string) []netip.Prefix { return sets[n] }
	ones := bytes.Repeat([]byte{0xff}, 16)
	tests := []struct {
		name   string
		peers  []string
		ranges [][2]string // first, last address
	}{
		{"any", []string{PeerAny}, [][2]string{{"::", netip.AddrFrom16([16]byte(ones)).String()}}},
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
				if !bytes.Equal(es[i].key, wantKey) || !bytes.Equal(es[i].keyEnd, wantEnd) {
					t.Errorf("element %d: key %x end %x, want %x %x", i, es[i].key, es[i].keyEnd, wantKey, wantEnd)
				}
			}
		})
	}
}
