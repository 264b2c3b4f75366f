package config

import (
	"github.com/v6reg/v6reg/peers"

	"os"
	"strings"
	"testing"

	"github.com/v6reg/v6reg/policies"
)

func TestLimitsBlock(t *testing.T) {
	c, err := Parse("v6reg.hcl", []byte(`node_prefix = "fd00:1:2:3:4::/80"
limits {
  container_elements       = 500
  container_peers          = 8
  container_services       = 4
  node_elements            = 20000
  node_peer_sets           = 64
  peer_set_addresses       = 100
  consul_watch_connections = 16
}
`))
	if err != nil {
		t.Fatal(err)
	}
	want := policies.Limits{ContainerElements: 500, ContainerPeers: 8, ContainerServices: 4, NodeElements: 20000, NodePeerSets: 64, PeerSetAddresses: 100}
	if c.Policy.Limits != want || c.Consul.WatchConnections != 16 {
		t.Errorf("limits = %+v, watch connections %d", c.Policy.Limits, c.Consul.WatchConnections)
	}
	d, err := Parse("v6reg.hcl", []byte(`node_prefix = "fd00:1:2:3:4::/80"`+"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if d.Policy.Limits != policies.DefaultLimits() || d.Consul.WatchConnections != peers.DefaultWatchConnections {
		t.Errorf("defaults = %+v, %d", d.Policy.Limits, d.Consul.WatchConnections)
	}
}

func TestLimitsErrorsNameFileLineField(t *testing.T) {
	for _, tc := range []struct{ src, want string }{
		{"limits {\n  container_elements = 0\n}\n", "v6reg.hcl:3: limits.container_elements: 0 is out of range: use 1 to 10000000"},
		{"limits {\n  node_peer_sets = -5\n}\n", "v6reg.hcl:3: limits.node_peer_sets: -5 is out of range"},
		{"limits {\n  consul_watch_connections = 250\n}\n", "v6reg.hcl:3: limits.consul_watch_connections: 250 is out of range: use 3 to 150 (default 32): Consul refuses a client more than 200 connections"},
		{"limits {\n  peer_set_addresses = \"many\"\n}\n", `v6reg.hcl:3: limits.peer_set_addresses: "many" is not a whole number: use 1 to 10000000`},
		{"limits {\n  container_peers = 40\n  node_peer_sets = 20\n}\n", "limits.node_peer_sets: 20 is below limits.container_peers (40)"},
	} {
		_, err := Parse("v6reg.hcl", []byte("node_prefix = \"fd00:1:2:3:4::/80\"\n"+tc.src))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want %q", tc.src, err, tc.want)
		}
	}
}

// The limits block that packaging/v6reg.hcl shows, uncommented, is the
// defaults: the documented values cannot drift from the code.
func TestShippedLimitsAreTheDefaults(t *testing.T) {
	src, err := os.ReadFile("../../packaging/v6reg.hcl")
	if err != nil {
		t.Fatal(err)
	}
	var block []string
	in := false
	for _, line := range strings.Split(string(src), "\n") {
		if strings.HasPrefix(line, "# limits {") {
			in = true
		}
		if in {
			block = append(block, strings.TrimPrefix(strings.TrimPrefix(line, "#"), " "))
			if line == "# }" {
				break
			}
		}
	}
	if len(block) < 8 {
		t.Fatalf("no commented limits block in packaging/v6reg.hcl: %q", block)
	}
	c, err := Parse("v6reg.hcl", []byte("node_prefix = \"fd00:1:2:3:4::/80\"\n"+strings.Join(block, "\n")+"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Policy.Limits != policies.DefaultLimits() || c.Consul.WatchConnections != peers.DefaultWatchConnections {
		t.Errorf("packaging/v6reg.hcl shows %+v and %d connections; the defaults are %+v and %d",
			c.Policy.Limits, c.Consul.WatchConnections, policies.DefaultLimits(), peers.DefaultWatchConnections)
	}
}
