package firewall

import (
	"maps"
	"net/netip"
	"testing"
)

// CountElements must agree with what Apply programs: the table's
// container-dependent elements are the containers' own plus each peer
// list once.
func TestCountElementsMatchesCompiledTable(t *testing.T) {
	s := smallState()
	// A third container naming the same peers as c1 shares c1's lists.
	c3 := s.Containers[0]
	c3.ID, c3.Addr, c3.Addr4, c3.Port = "c3", addr("2001:db8:1:2:3::c3"), addr("192.0.2.13"), 43
	s.Containers = append(s.Containers, c3)
	want := 0
	for _, es := range desired(s).elems {
		want += len(es)
	}
	sets := func(n string) []netip.Prefix { return s.PeerSets[n] }
	got := 0
	lists := map[string]bool{}
	for _, c := range s.Containers {
		n := CountElements(c, sets)
		got += n.Own
		for k, v := range n.Lists {
			if !lists[k] {
				lists[k] = true
				got += v
			}
		}
	}
	if got != want {
		t.Fatalf("counted %d elements, the compiled table has %d", got, want)
	}
	// A port range is one element per port.
	c := Container{ID: "x", Addr: addr("2001:db8:1:2:3::99"), Ingress: []Rule{{Peer: PeerAny, Proto: TCP, Ports: []PortRange{{8000, 8099}}}}}
	n := CountElements(c, sets)
	if n.Own != 3+100 || n.Total() != 3+100+2 {
		t.Fatalf("100 ports from any: own %d total %d, want 103 and 105 (addresses, counters; ::/0 and 0.0.0.0/0)", n.Own, n.Total())
	}
}

// TestElementCounterCountsAsCountElements: pass after pass, with
// containers and peer sets changing in between, the counter gives what
// CountElements gives.
func TestElementCounterCountsAsCountElements(t *testing.T) {
	s := bigStateOf(50, boundContainer)
	ec := NewElementCounter()
	check := func(pass string) {
		t.Helper()
		ec.StartPass()
		sets := func(n string) []netip.Prefix { return s.PeerSets[n] }
		for _, c := range s.Containers {
			got, want := ec.Count(c, sets), CountElements(c, sets)
			if got.Own != want.Own || !maps.Equal(got.Lists, want.Lists) {
				t.Fatalf("%s: container %s counted %+v, want %+v", pass, c.ID, got, want)
			}
		}
	}
	check("first")
	check("unchanged")
	s.Containers[3].Egress = append(s.Containers[3].Egress, Rule{Peer: "@mon", Proto: UDP, Ports: ports(161, 162)})
	s.PeerSets["@traefik"] = append(s.PeerSets["@traefik"], pfx("2001:db8:c::/64"), pfx("10.9.0.0/16"))
	check("a container and a peer set changed")
}
