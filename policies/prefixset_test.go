package policies

import (
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"testing"
)

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func prefixes(ss ...string) []netip.Prefix {
	out := []netip.Prefix{}
	for _, s := range ss {
		out = append(out, mustPrefix(s))
	}
	return out
}

func TestNormalizePrefixes(t *testing.T) {
	tests := []struct {
		name     string
		in, want []netip.Prefix
	}{
		{"empty", nil, prefixes()},
		{"contained dropped", prefixes("2001:db8::/32", "2001:db8:1::/48"), prefixes("2001:db8::/32")},
		{"siblings merged", prefixes("2001:db8:1::/48", "2001:db8::/48"), prefixes("2001:db8::/47")},
		{"siblings merged twice", prefixes("2001:db8::/34", "2001:db8:4000::/34", "2001:db8:8000::/33"), prefixes("2001:db8::/32")},
		{"not siblings", prefixes("2001:db8:1::/48", "2001:db8:2::/48"), prefixes("2001:db8:1::/48", "2001:db8:2::/48")},
		{"host bits masked", prefixes("2001:db8::1/32"), prefixes("2001:db8::/32")},
		{"duplicates", prefixes("fd00::/8", "fd00::/8"), prefixes("fd00::/8")},
		{"families kept apart", prefixes("10.0.0.0/8", "::/0", "0.0.0.0/0"), prefixes("0.0.0.0/0", "::/0")},
		{"halves of everything", prefixes("::/1", "8000::/1"), prefixes("::/0")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := NormalizePrefixes(tt.in); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("NormalizePrefixes(%v) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
}

func TestSubtractPrefixes(t *testing.T) {
	tests := []struct {
		name       string
		a, b, want []netip.Prefix
	}{
		{"nothing removed", prefixes("2000::/3"), nil, prefixes("2000::/3")},
		{"disjoint", prefixes("2000::/3"), prefixes("fd00::/8"), prefixes("2000::/3")},
		{"all removed", prefixes("2001:db8::/32"), prefixes("2000::/3"), nil},
		{"equal", prefixes("2001:db8::/32"), prefixes("2001:db8::/32"), nil},
		{"one half", prefixes("2001:db8::/32"), prefixes("2001:db8::/33"), prefixes("2001:db8:8000::/33")},
		{"two holes", prefixes("2001:db8::/32"), prefixes("2001:db8::/34", "2001:db8:c000::/34"), prefixes("2001:db8:4000::/34", "2001:db8:8000::/34")},
		{"ipv4 untouched by ipv6", prefixes("10.0.0.0/8"), prefixes("::/0"), prefixes("10.0.0.0/8")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := SubtractPrefixes(tt.a, tt.b)
			if len(got) == 0 && len(tt.want) == 0 {
				return // nil and empty are the same set
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("SubtractPrefixes(%v, %v) = %v, want %v", tt.a, tt.b, got, tt.want)
			}
		})
	}
}

// TestSubtractInternet checks @internet for an operator with one internal
// /32: the result must be 32-3 = 29 prefixes, one per bit from /4 to /32,
// cover 2000::/3 exactly except that /32, and not overlap.
func TestSubtractInternet(t *testing.T) {
	op := Operator{Internal: prefixes("2001:db8::/32", "fd00::/8", "8.8.8.0/24")}
	all := op.InternetPrefixes()
	var got, v4 []netip.Prefix
	for _, p := range all {
		if p.Addr().Is4() {
			v4 = append(v4, p)
		} else {
			got = append(got, p)
		}
	}
	// The IPv4 half: public space minus the internal /24.
	in := func(a string) bool {
		return slices.ContainsFunc(v4, func(p netip.Prefix) bool { return p.Contains(netip.MustParseAddr(a)) })
	}
	for _, a := range []string{"1.1.1.1", "8.8.4.4", "100.128.0.1", "172.32.0.1", "223.255.255.254"} {
		if !in(a) {
			t.Errorf("@internet lacks public IPv4 %s", a)
		}
	}
	for _, a := range []string{"8.8.8.8", "10.1.2.3", "100.64.0.1", "127.0.0.1", "169.254.1.1", "172.16.0.1", "192.168.1.1", "192.0.2.1", "198.18.0.1", "224.0.0.1", "255.255.255.255", "0.0.0.0"} {
		if in(a) {
			t.Errorf("@internet holds internal or special-purpose IPv4 %s", a)
		}
	}
	if len(got) != 29 {
		t.Fatalf("@internet has %d prefixes, want 29: %v", len(got), got)
	}
	for _, p := range got {
		if p.Overlaps(mustPrefix("2001:db8::/32")) {
			t.Errorf("@internet prefix %v overlaps the internal prefix", p)
		}
		if !GlobalUnicast.Contains(p.Addr()) {
			t.Errorf("@internet prefix %v is outside 2000::/3", p)
		}
	}
	for _, tc := range []struct {
		addr string
		in   bool
	}{
		{"2001:db8::1", false}, {"2001:db7:ffff::1", true}, {"2001:db9::1", true}, {"2a00:1450::1", true},
		{"3fff:ffff::1", true}, {"4000::1", false}, {"fd00::1", false}, {"::1", false},
	} {
		if got := containsAddr(got, netip.MustParseAddr(tc.addr)); got != tc.in {
			t.Errorf("%s in @internet = %v, want %v", tc.addr, got, tc.in)
		}
	}
	// Adding the internal prefix back must give exactly 2000::/3.
	if back := NormalizePrefixes(append(got, mustPrefix("2001:db8::/32"))); !reflect.DeepEqual(back, prefixes("2000::/3")) {
		t.Errorf("@internet plus the internal prefix = %v, want 2000::/3", back)
	}
}

func containsAddr(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// randPrefix returns a prefix in a small corner of the space, so that random
// prefixes overlap often.
func randPrefix(r *rand.Rand) netip.Prefix {
	var b [16]byte
	b[0] = 0x20
	b[1] = byte(r.IntN(4))
	b[2] = byte(r.IntN(256))
	return netip.PrefixFrom(netip.AddrFrom16(b), 8+r.IntN(17)).Masked()
}

func randAddrNear(r *rand.Rand) netip.Addr {
	var b [16]byte
	b[0] = 0x20
	b[1] = byte(r.IntN(5))
	b[2] = byte(r.IntN(256))
	b[3] = byte(r.IntN(256))
	return netip.AddrFrom16(b)
}

// TestPrefixSetProperties checks the set algebra against membership of
// random addresses: normalize keeps membership, subtract is a∖b, results are
// disjoint and normalizing them changes nothing.
func TestPrefixSetProperties(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 500; i++ {
		var a, b []netip.Prefix
		for j := r.IntN(6); j >= 0; j-- {
			a = append(a, randPrefix(r))
		}
		for j := r.IntN(6); j >= 0; j-- {
			b = append(b, randPrefix(r))
		}
		norm := NormalizePrefixes(a)
		diff := SubtractPrefixes(a, b)
		for k := 0; k < len(diff); k++ {
			for l := k + 1; l < len(diff); l++ {
				if diff[k].Overlaps(diff[l]) {
					t.Fatalf("SubtractPrefixes(%v, %v) = %v: %v and %v overlap", a, b, diff, diff[k], diff[l])
				}
			}
		}
		if !reflect.DeepEqual(NormalizePrefixes(diff), diff) {
			t.Fatalf("SubtractPrefixes(%v, %v) = %v is not normalized", a, b, diff)
		}
		for j := 0; j < 200; j++ {
			x := randAddrNear(r)
			inA, inB := containsAddr(a, x), containsAddr(b, x)
			if got := containsAddr(norm, x); got != inA {
				t.Fatalf("%v in NormalizePrefixes(%v) = %v, want %v", x, a, got, inA)
			}
			if got := containsAddr(diff, x); got != (inA && !inB) {
				t.Fatalf("%v in SubtractPrefixes(%v, %v) = %v, want %v", x, a, b, got, inA && !inB)
			}
		}
	}
}

func FuzzSubtractPrefixes(f *testing.F) {
	f.Add("2000::/3", "2001:db8::/32", "2001:db8::1")
	f.Add("::/0", "::/1", "8000::1")
	f.Add("10.0.0.0/8", "10.1.0.0/16", "10.1.2.3")
	f.Fuzz(func(t *testing.T, as, bs, xs string) {
		a, err1 := netip.ParsePrefix(as)
		b, err2 := netip.ParsePrefix(bs)
		x, err3 := netip.ParseAddr(xs)
		if err1 != nil || err2 != nil || err3 != nil || x.Zone() != "" {
			return
		}
		diff := SubtractPrefixes([]netip.Prefix{a}, []netip.Prefix{b})
		want := a.Masked().Contains(x) && !b.Masked().Contains(x)
		if got := containsAddr(diff, x); got != want {
			t.Fatalf("%v in %v minus %v = %v (%v), want %v", x, a, b, got, diff, want)
		}
	})
}
