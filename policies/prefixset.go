package policies

import (
	"net/netip"
	"slices"
)

// GlobalUnicast is the IPv6 global unicast space (RFC 4291, 2000::/3), the
// base of @internet.
var GlobalUnicast = netip.MustParsePrefix("2000::/3")

// PublicIPv4 is the IPv4 space routed on the internet: everything but the
// special-purpose blocks of RFC 6890 and its successors (this network,
// private, shared, loopback, link-local, IETF protocol assignments,
// documentation, benchmarking, 6to4 relay, multicast, reserved and
// broadcast). @internet's IPv4 half is this minus the operator's internal
// IPv4 prefixes.
var PublicIPv4 = SubtractPrefixes([]netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}, []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("100.64.0.0/10"),
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.0.0.0/24"),
	netip.MustParsePrefix("192.0.2.0/24"),
	netip.MustParsePrefix("192.88.99.0/24"),
	netip.MustParsePrefix("192.168.0.0/16"),
	netip.MustParsePrefix("198.18.0.0/15"),
	netip.MustParsePrefix("198.51.100.0/24"),
	netip.MustParsePrefix("203.0.113.0/24"),
	netip.MustParsePrefix("224.0.0.0/4"),
	netip.MustParsePrefix("240.0.0.0/4"),
})

// NormalizePrefixes returns the smallest sorted list of prefixes that covers
// exactly the addresses of ps: masked, without prefixes contained in others,
// with adjacent halves merged into their parent. Equal address sets give
// equal lists, so the firewall can diff them.
func NormalizePrefixes(ps []netip.Prefix) []netip.Prefix {
	in := make([]netip.Prefix, 0, len(ps))
	for _, p := range ps {
		if p.IsValid() {
			in = append(in, p.Masked())
		}
	}
	slices.SortFunc(in, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	out := make([]netip.Prefix, 0, len(in))
	for _, p := range in {
		if n := len(out); n > 0 && out[n-1].Overlaps(p) {
			continue // sorted by address, shorter first: out[n-1] contains p
		}
		out = append(out, p)
		for len(out) >= 2 {
			a, b := out[len(out)-2], out[len(out)-1]
			if a.Bits() != b.Bits() || a.Bits() == 0 {
				break
			}
			pa := netip.PrefixFrom(a.Addr(), a.Bits()-1).Masked()
			if pa != netip.PrefixFrom(b.Addr(), b.Bits()-1).Masked() {
				break
			}
			out = append(out[:len(out)-2], pa)
		}
	}
	return out
}

// SubtractPrefixes returns the addresses of a that are not in b, normalized.
func SubtractPrefixes(a, b []netip.Prefix) []netip.Prefix {
	cur := NormalizePrefixes(a)
	for _, x := range NormalizePrefixes(b) {
		var next []netip.Prefix
		for _, p := range cur {
			next = append(next, subtractOne(p, x)...)
		}
		cur = next
	}
	return NormalizePrefixes(cur)
}

// subtractOne splits p around x: walking from p down to x, it keeps at each
// bit the half that does not hold x.
func subtractOne(p, x netip.Prefix) []netip.Prefix {
	if !p.Overlaps(x) {
		return []netip.Prefix{p}
	}
	if x.Bits() <= p.Bits() {
		return nil // x covers p
	}
	var out []netip.Prefix
	cur := p
	for bits := p.Bits(); bits < x.Bits(); bits++ {
		zero := netip.PrefixFrom(cur.Addr(), bits+1)
		one := netip.PrefixFrom(setBit(cur.Addr(), bits), bits+1)
		if zero.Contains(x.Addr()) {
			out, cur = append(out, one), zero
		} else {
			out, cur = append(out, zero), one
		}
	}
	return out
}

// setBit returns a with bit i (0 = most significant) set.
func setBit(a netip.Addr, i int) netip.Addr {
	b := a.AsSlice()
	b[i/8] |= 0x80 >> (i % 8)
	r, _ := netip.AddrFromSlice(b)
	return r
}

// prefixesContain reports whether every address of p is in the set ps.
func prefixesContain(ps []netip.Prefix, p netip.Prefix) bool {
	return len(SubtractPrefixes([]netip.Prefix{p}, ps)) == 0
}
