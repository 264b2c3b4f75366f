package config

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/v6reg/v6reg/firewall"
)

func TestParseFull(t *testing.T) {
	src := `
node_name          = "node-7"
node_prefix        = "2001:db8:1:2:3::/80"
ipv4_egress_subnet = "172.31.0.0/16"
reserved           = ["2001:db8:1:2:3::53"]
hold_down          = "30m"
internal_prefixes  = ["2001:db8::/32"]

docker {
  network     = "v6"
  bridge_name = "br-v6"
  labels_namespace = "labels"
  labels_choose_namespace = true
}

consul {
  address = "127.0.0.1:18500"
}

peer "traefik" {
  prefixes = ["2001:db8:100::/56", "2001:db8:200::7"]
}

namespace "default" {
  peers          = ["@traefik"]
  allow_internet = true
  ingress_ports  = ["80", "8000-8100"]
  service_namespaces = ["shared"]
  services       = ["shop-*"]
  tiers          = ["d"]
}

services {
  domain = "cloud.example"
}
`
	c, err := Parse("v6reg.hcl", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := c.NodePrefix, netip.MustParsePrefix("2001:db8:1:2:3::/80"); got != want {
		t.Errorf("NodePrefix = %s, want %s", got, want)
	}
	if c.HoldDown != 30*time.Minute || c.NodeName != "node-7" || c.Docker.Network != "v6" || c.Docker.BridgeName != "br-v6" {
		t.Errorf("fields not read: %+v", c)
	}
	if got := c.Policy.Peers["traefik"]; len(got) != 2 || got[1] != netip.MustParsePrefix("2001:db8:200::7/128") {
		t.Errorf("peer traefik = %v", got)
	}
	if b := c.Policy.Namespaces["default"]; !b.AllowInternet || len(b.IngressPorts) != 2 ||
		!slices.Equal(b.ServiceNamespaces, []string{"shared"}) || !slices.Equal(b.Services, []string{"shop-*"}) || !slices.Equal(b.Tiers, []string{"d"}) {
		t.Errorf("namespace default = %+v", b)
	}
	if c.Policy.LabelsNamespace != "labels" || !c.Policy.LabelsChooseNamespace {
		t.Errorf("labels namespace = %q, choose %v", c.Policy.LabelsNamespace, c.Policy.LabelsChooseNamespace)
	}
	if c.Consul.Address != "127.0.0.1:18500" || !c.Consul.Enabled {
		t.Errorf("consul = %+v", c.Consul)
	}
}

func TestParseErrorsNameFileLineField(t *testing.T) {
	cases := []struct {
		name, src string
		want      []string
	}{
		{"prefix too short", "node_prefix = \"2001:db8::/48\"\n",
			[]string{"v6reg.hcl:1: node_prefix: /48 is outside /64../112"}},
		{"prefix host bits", "\n\nnode_prefix = \"2001:db8:1:2:3::5/80\"\n",
			[]string{"v6reg.hcl:3: node_prefix: \"2001:db8:1:2:3::5/80\" has host bits set (the prefix is 2001:db8:1:2:3::/80)"}},
		{"prefix v4", "node_prefix = \"10.0.0.0/8\"\n", []string{"v6reg.hcl:1: node_prefix: \"10.0.0.0/8\" is not an IPv6 prefix"}},
		{"missing prefix", "hold_down = \"1h\"\n", []string{"node_prefix: not set"}},
		{"bad duration", "node_prefix = \"fd00:1:2:3:4::/80\"\nhold_down = \"an hour\"\n",
			[]string{"v6reg.hcl:2: hold_down: \"an hour\" is not a duration"}},
		{"gateway outside", "node_prefix = \"fd00:1:2:3:4::/80\"\ngateway = \"fd00:9::1\"\n",
			[]string{"v6reg.hcl:2: gateway: fd00:9::1 is outside node_prefix"}},
		{"public v4", "node_prefix = \"fd00:1:2:3:4::/80\"\nipv4_egress_subnet = \"8.8.0.0/16\"\n",
			[]string{"v6reg.hcl:2: ipv4_egress_subnet: 8.8.0.0/16 is not a private"}},
		{"metrics not loopback", "node_prefix = \"fd00:1:2:3:4::/80\"\nmetrics_address = \"0.0.0.0:9466\"\n",
			[]string{"v6reg.hcl:2: metrics_address:"}},
		{"nested block field", "node_prefix = \"fd00:1:2:3:4::/80\"\ndocker {\n  network = \"\"\n}\n",
			[]string{"v6reg.hcl:3: docker.network: is empty"}},
		{"unknown peer in namespace", "node_prefix = \"fd00:1:2:3:4::/80\"\nnamespace \"web\" {\n  peers = [\"@nope\"]\n}\n",
			[]string{"v6reg.hcl:3: namespace \"web\" peers: @nope is not defined"}},
		{"unknown attribute", "node_prefx = \"fd00:1:2:3:4::/80\"\n", []string{"v6reg.hcl:1: Unsupported argument"}},
		{"several at once", "node_prefix = \"fd00::/40\"\nhold_down = \"x\"\nlog_format = \"xml\"\n",
			[]string{"v6reg.hcl:1: node_prefix", "v6reg.hcl:2: hold_down", "v6reg.hcl:3: log_format"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("v6reg.hcl", []byte(tc.src))
			if err == nil {
				t.Fatalf("no error for %q", tc.src)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\ndoes not contain %q", err, w)
				}
			}
		})
	}
}

func TestEnvOverridesFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "v6reg.hcl")
	if err := os.WriteFile(path, []byte("node_prefix = \"fd00:1:2:3:4::/80\"\nconsul {\n address = \"10.0.0.1:8500\"\n}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"CONSUL_HTTP_ADDR": "127.0.0.1:8501", "CONSUL_HTTP_TOKEN": "secret", "NOMAD_ADDR": "http://127.0.0.1:4647"}
	c, err := Load(path, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.Consul.Address != "127.0.0.1:8501" || c.Consul.Token != "secret" || c.Nomad.Address != "http://127.0.0.1:4647" {
		t.Errorf("env not applied: consul=%+v nomad=%+v", c.Consul, c.Nomad)
	}
	_, err = Load(path, func(k string) string {
		if k == "V6REG_NODE_PREFIX" {
			return "fd00::/8"
		}
		return ""
	})
	if err == nil || !strings.Contains(err.Error(), "env V6REG_NODE_PREFIX: node_prefix:") {
		t.Errorf("bad env prefix: err = %v", err)
	}
}

func TestDevPrefixStable(t *testing.T) {
	dir := t.TempDir()
	c := Default()
	c.StateDir = dir
	if err := c.ApplyDev(); err != nil {
		t.Fatal(err)
	}
	if c.NodePrefix.Bits() != 80 || c.NodePrefix.Addr().As16()[0] != 0xfd {
		t.Fatalf("dev prefix %s is not a ULA /80", c.NodePrefix)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("dev config invalid: %v", err)
	}
	again := Default()
	again.StateDir = dir
	if err := again.ApplyDev(); err != nil {
		t.Fatal(err)
	}
	if again.NodePrefix != c.NodePrefix {
		t.Errorf("dev prefix changed across restarts: %s then %s", c.NodePrefix, again.NodePrefix)
	}
}

func FuzzParseNodePrefix(f *testing.F) {
	for _, s := range []string{"2001:db8:1:2:3::/80", "fd00::/64", "::/0", "1.2.3.4/32", "fe80::/80", "2001:db8::1%eth0/80"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		pfx, err := ParseNodePrefix(s)
		if err != nil {
			return
		}
		if !pfx.Addr().Is6() || pfx.Bits() < 64 || pfx.Bits() > 112 || pfx.Masked() != pfx {
			t.Fatalf("accepted %q as %s", s, pfx)
		}
	})
}

func FuzzParseConfig(f *testing.F) {
	f.Add([]byte("node_prefix = \"fd00:1:2:3:4::/80\"\n"))
	f.Add([]byte("peer \"x\" {\n prefixes = [\"::/0\"]\n}\nnamespace \"*\" { peers = [\"@x\"] }\n"))
	f.Add([]byte("docker {\n network = \"v6\"\n}\n"))
	f.Fuzz(func(t *testing.T, src []byte) {
		c, err := Parse("fuzz.hcl", src)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error message")
			}
			return
		}
		if !c.NodePrefix.IsValid() {
			t.Fatal("valid config without node prefix")
		}
	})
}

func TestNodePorts(t *testing.T) {
	c, err := Parse("v6reg.hcl", []byte("node_prefix = \"fd00:1:2:3:4::/80\"\nfirewall {\n  node_ports = [\"udp/53\", \"tcp/8500-8502,8600\", \"icmp\"]\n}\n"))
	if err != nil {
		t.Fatal(err)
	}
	got := c.Firewall.NodePorts
	if len(got) != 3 || got[0].Proto != firewall.UDP || len(got[1].Ports) != 2 || got[1].Ports[0] != (firewall.PortRange{First: 8500, Last: 8502}) || got[2].Proto != firewall.ICMP {
		t.Fatalf("node_ports = %+v", got)
	}
	_, err = Parse("v6reg.hcl", []byte("node_prefix = \"fd00:1:2:3:4::/80\"\nfirewall {\n  node_ports = [\"icmp/8\"]\n}\n"))
	if err == nil || !strings.Contains(err.Error(), "v6reg.hcl:3: firewall.node_ports: \"icmp/8\": only tcp and udp take ports") {
		t.Fatalf("err = %v", err)
	}
}
