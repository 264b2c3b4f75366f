package firewall

import (
	"net"
	"net/netip"
	"testing"
)

func liveOf(c content) *liveState { return &liveState{content: c, present: true, bridgePresent: true} }

func TestDiff(t *testing.T) {
	base := smallState()
	tests := []struct {
		name          string
		edit          func(s *State)
		add, del      int
		chainsAdded   int
		chainsRemoved int
	}{
		{"same state", func(*State) {}, 0, 0, 0, 0},
		{"new container, existing peer list", func(s *State) {
			s.Containers = append(s.Containers, Container{ID: "c3", Addr: addr("2001:db8:1:2:3::c3"),
				Ingress: []Rule{{Peer: "@traefik", Proto: TCP, Ports: ports(8080)}}})
		}, 4, 0, 0, 0}, // containers, in_drop, eg_drop, in_port_list
		{"remove container", func(s *State) { s.Containers = append(s.Containers[:1:1], s.Containers[2:]...) }, 0, 7, 1, 0},
		{"port change", func(s *State) { s.Containers[0].Ingress[0].Ports = ports(8081) }, 1, 1, 0, 0},
		{"bridge port learnt", func(s *State) { s.Containers[1].Port = 43 }, 2, 0, 0, 0},   // bridge port_bound, port_src
		{"bridge port changed", func(s *State) { s.Containers[0].Port = 44 }, 4, 4, 0, 0},  // port_src, port_src4, port_mac_bound, port_mac
		{"bridge port forgotten", func(s *State) { s.Containers[0].Port = 0 }, 0, 5, 0, 0}, // back to the inet MAC check (port_src4 too)
		{"peer set grows", func(s *State) {
			s.PeerSets["@traefik"] = append(s.PeerSets["@traefik"], pfx("2001:db8:b::/64"))
		}, 1, 0, 0, 0}, // one range of list {@traefik} in set "lists"
		// c1 closed (say, another container took its MAC first): its
		// port's one element replaces its 20 (14 for its addresses and
		// port, 6 map elements) and the ranges of the peer lists only it
		// named (service:pg 2, @internet 2); c2's lists stay.
		{"container closed", func(s *State) { s.Containers[0] = Container{ID: "c1", Port: 42, Closed: true} }, 1, 24, 0, 0},
		// c9 reopened with an address of its own: the port_closed
		// element goes, the bindings of its port come.
		{"closed container reopened", func(s *State) {
			s.Containers[2] = Container{ID: "c9", Addr: addr("2001:db8:1:2:3::c9"), MAC: net.HardwareAddr{2, 0, 0, 0, 0, 9}, Port: 49}
		}, 9, 1, 0, 0}, // containers, in_drop, eg_drop, mac_bound, src_mac, port_bound, port_src, port_mac_bound, port_mac
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := smallState()
			s.PeerSets = map[string][]netip.Prefix{}
			for k, v := range base.PeerSets {
				s.PeerSets[k] = append([]netip.Prefix(nil), v...)
			}
			tt.edit(&s)
			if err := s.Validate(); err != nil {
				t.Fatal(err)
			}
			ch := diff(liveOf(desired(base)), desired(s)).changes()
			if ch.ElemsAdded != tt.add || ch.ElemsRemoved != tt.del {
				t.Errorf("elements: got +%d -%d, want +%d -%d", ch.ElemsAdded, ch.ElemsRemoved, tt.add, tt.del)
			}
			if tt.name == "remove container" {
				return // checked below
			}
			if ch.ChainsAdded != tt.chainsAdded || ch.ChainsRemoved != tt.chainsRemoved || ch.ChainsRewritten != 0 {
				t.Errorf("chains: got %+v", ch)
			}
		})
	}
	p := diff(liveOf(desired(base)), desired(State{Prefix: base.Prefix, Gateway: base.Gateway, PeerSets: base.PeerSets,
		Containers: append(base.Containers[:1:1], base.Containers[2:]...)}))
	for set, es := range p.delElems {
		for _, e := range es {
			if e.comment != "c2" {
				t.Errorf("removing c2 deletes %s element owned by %q", set, e.comment)
			}
		}
	}
	if p2 := diff(nil, desired(base)); !p2.createTable || !p2.createBridge {
		t.Error("diff against no table does not create both")
	}
}

func TestValidate(t *testing.T) {
	bad := []func(s *State){
		func(s *State) { s.Containers[0].Addr = addr("2001:db8:ffff::1") },
		func(s *State) { s.Containers[1].Addr = s.Containers[0].Addr },
		func(s *State) { s.Containers[0].Ingress[0].Peer = "@nope" },
		func(s *State) { s.Containers[0].Ingress[0].Ports = []PortRange{{1, 5000}} },
		func(s *State) { s.Containers[0].ID = "" },
		func(s *State) { s.Prefix = netip.Prefix{} },
		func(s *State) { s.NodePorts[0].Peer = "@traefik" },                  // node ports are for every container
		func(s *State) { s.NodePorts[1].Ports = []PortRange{{0, 10}} },       // port 0
		func(s *State) { s.NodePorts[2].Ports = ports(1) },                   // icmp takes no ports
		func(s *State) { s.NodePorts = append(s.NodePorts, Rule{Proto: 3}) }, // unknown protocol
		func(s *State) { s.Containers[0].Port = -1 },
		func(s *State) { s.Containers[0].Port = 1 << 31 },                               // beyond an ifindex (int32)
		func(s *State) { s.Containers[1].Port = s.Containers[0].Port },                  // one port per container
		func(s *State) { s.Containers[2].Port = s.Containers[0].Port },                  // a closed port must not be a bound one
		func(s *State) { s.Containers[2].Port = 0 },                                     // closed: the port is what it closes
		func(s *State) { s.Containers[2].Addr = addr("2001:db8:1:2:3::c9") },            // closed: no address
		func(s *State) { s.Containers[2].MAC = s.Containers[0].MAC },                    // closed: no MAC
		func(s *State) { s.Containers[2].Egress = []Rule{{Peer: PeerAny, Proto: Any}} }, // closed: no rules
	}
	if err := smallState().Validate(); err != nil {
		t.Fatalf("valid state: %v", err)
	}
	for i, f := range bad {
		s := smallState()
		f(&s)
		if err := s.Validate(); err == nil {
			t.Errorf("case %d: no error", i)
		}
	}
}

func FuzzIntervalElems(f *testing.F) {
	f.Add([]byte{0x20, 0x01, 0x0d, 0xb8}, uint8(32), uint8(64))
	f.Fuzz(func(t *testing.T, a []byte, b1, b2 uint8) {
		var a16 [16]byte
		copy(a16[:], a)
		p1 := netip.PrefixFrom(netip.AddrFrom16(a16), int(b1%129))
		p2 := netip.PrefixFrom(netip.AddrFrom16(a16), int(b2%129))
		es := intervalElems([]netip.Prefix{p1, p2})
		if len(es) == 0 || len(es) > 2 || es[0].end {
			t.Fatalf("nested prefixes %s %s gave %d elements", p1, p2, len(es))
		}
	})
}
