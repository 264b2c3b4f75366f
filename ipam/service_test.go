package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/network"
)

// fakeDocker implements DockerClient with one optional network.
type fakeDocker struct {
	api     string
	net     *network.Inspect
	created []network.CreateOptions
}

func (f *fakeDocker) ServerVersion(context.Context) (types.Version, error) {
	return types.Version{APIVersion: f.api}, nil
}

func (f *fakeDocker) NetworkInspect(_ context.Context, name string, _ network.InspectOptions) (network.Inspect, error) {
	if f.net == nil || f.net.Name != name {
		return network.Inspect{}, fmt.Errorf("network %s: %w", name, cerrdefs.ErrNotFound)
	}
	return *f.net, nil
}

func (f *fakeDocker) NetworkCreate(_ context.Context, name string, o network.CreateOptions) (network.CreateResponse, error) {
	f.created = append(f.created, o)
	n := network.Inspect{Name: name, ID: "net123", Driver: o.Driver, EnableIPv6: *o.EnableIPv6, Options: o.Options}
	n.IPAM = *o.IPAM
	f.net = &n
	return network.CreateResponse{ID: "net123"}, nil
}

var _ DockerClient = (*fakeDocker)(nil)

func TestEnsureNetworkCreate(t *testing.T) {
	tests := []struct {
		name        string
		api, bridge string
		wantOpts    map[string]string
	}{
		{"docker 20.10", "1.41", "", map[string]string{}},
		{"docker 28 gets routed gateway mode", "1.48", "", map[string]string{OptGatewayModeIPv6: "routed"}},
		{"bridge name", "1.41", "v6reg0", map[string]string{OptBridgeName: "v6reg0"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(t)
			cfg.CreateNetwork, cfg.BridgeName = true, tt.bridge
			s, err := NewService(cfg, ServiceOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			d := &fakeDocker{api: tt.api}
			id, err := s.EnsureNetwork(context.Background(), d)
			if err != nil || id != "net123" || len(d.created) != 1 {
				t.Fatalf("EnsureNetwork = %q, %v (created %d)", id, err, len(d.created))
			}
			o := d.created[0]
			if o.Driver != "bridge" || !*o.EnableIPv6 || o.IPAM.Driver != cfg.PluginName || fmt.Sprint(o.Options) != fmt.Sprint(tt.wantOpts) {
				t.Fatalf("create options %+v", o)
			}
			if got := fmt.Sprint(o.IPAM.Config); got != "[{fd00:db8:1:2:3::/80  fd00:db8:1:2:3::1 map[]} {172.30.0.0/16  172.30.0.1 map[]}]" {
				t.Fatalf("ipam config %s", got)
			}
			// Second call finds it and it matches.
			if id, err := s.EnsureNetwork(context.Background(), d); err != nil || id != "net123" || len(d.created) != 1 {
				t.Fatalf("second EnsureNetwork = %q, %v", id, err)
			}
		})
	}
}

func TestEnsureNetworkMissingNoCreate(t *testing.T) {
	s, err := NewService(testConfig(t), ServiceOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_, err = s.EnsureNetwork(context.Background(), &fakeDocker{api: "1.41"})
	if err == nil || !strings.Contains(err.Error(), "docker network create --driver bridge --ipv6 --ipam-driver v6reg-test --subnet fd00:db8:1:2:3::/80") {
		t.Fatalf("want the create command in the error, got %v", err)
	}
}

func TestEnsureNetworkMismatch(t *testing.T) {
	cfg := testConfig(t)
	s, err := NewService(cfg, ServiceOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	have := network.Inspect{Name: "v6reg", ID: "x", Driver: "macvlan", EnableIPv6: false,
		IPAM: network.IPAM{Driver: "default", Config: []network.IPAMConfig{
			{Subnet: "fd00:db8:1:2:4::/80", Gateway: "fd00:db8:1:2:4::1"},
			{Subnet: "172.30.0.0/16", Gateway: "172.30.0.254", IPRange: "172.30.1.0/24"},
		}},
		Options: map[string]string{OptBridgeName: "br-x"},
	}
	_, err = s.EnsureNetwork(context.Background(), &fakeDocker{api: "1.48", net: &have})
	var me *NetworkMismatchError
	if !errors.As(err, &me) {
		t.Fatalf("want NetworkMismatchError, got %v", err)
	}
	var fields []string
	for _, d := range me.Diffs {
		fields = append(fields, d.Field+"="+d.Have)
		if d.Fix == "" {
			t.Errorf("diff %s has no fix", d.Field)
		}
	}
	want := "driver=macvlan enable_ipv6=false ipam driver=default ipv6 subnet=fd00:db8:1:2:4::/80 ipv6 gateway=fd00:db8:1:2:4::1 ipv4 gateway=172.30.0.254 ipv4 ip range=172.30.1.0/24 option com.docker.network.bridge.name=br-x option com.docker.network.bridge.gateway_mode_ipv6="
	if got := strings.Join(fields, " "); got != want {
		t.Fatalf("diffs:\n got %s\nwant %s\nerror: %v", got, want, err)
	}
	if !strings.Contains(err.Error(), `want "v6reg-test", have "default"`) {
		t.Fatalf("error text lacks want/have: %v", err)
	}
}

func TestReconcileWithDocker(t *testing.T) {
	cfg := testConfig(t)
	s, err := NewService(cfg, ServiceOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	stale, err := s.Allocator().Request(cfg.Prefix.String(), netip.MustParseAddr("fd00:db8:1:2:3::99"), "")
	if err != nil {
		t.Fatal(err)
	}
	d := &fakeDocker{net: &network.Inspect{Name: "v6reg", Containers: map[string]network.EndpointResource{
		"c1": {IPv6Address: "fd00:db8:1:2:3::10/80", IPv4Address: "172.30.0.10/16"},
		"c2": {IPv6Address: "fd00:db8:1:2:3::11/80"},
	}}}
	res, err := s.ReconcileWithDocker(context.Background(), d)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(res.Adopted) != "[172.30.0.10 fd00:db8:1:2:3::10 fd00:db8:1:2:3::11]" || fmt.Sprint(res.Released) != fmt.Sprint([]netip.Addr{stale.Addr}) {
		t.Fatalf("reconcile %+v", res)
	}
	if ls := s.Allocator().Leases(); len(ls) != 3 || ls[1].Owner != "c1" {
		t.Fatalf("leases %+v", ls)
	}
	if _, err := (&Service{cfg: Config{NetworkName: "gone"}, alloc: s.alloc}).ReconcileWithDocker(context.Background(), d); err == nil {
		t.Fatal("missing network reconciled as empty")
	}
}

func TestRebuildStore(t *testing.T) {
	cfg := testConfig(t)
	if err := os.MkdirAll(cfg.PluginDir+"/state", 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg.StateFile, []byte("not a bbolt file, not at all, definitely corrupt......"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := NewService(cfg, ServiceOptions{})
	var ce *CorruptStoreError
	if !errors.As(err, &ce) {
		t.Fatalf("want CorruptStoreError, got %v", err)
	}
	d := &fakeDocker{net: &network.Inspect{Name: "v6reg", Containers: map[string]network.EndpointResource{
		"c1": {IPv6Address: "fd00:db8:1:2:3::10/80"},
	}}}
	moved, res, err := RebuildStore(context.Background(), cfg, d, ServiceOptions{})
	if err != nil || moved == "" || len(res.Adopted) != 1 {
		t.Fatalf("RebuildStore = %q %+v %v", moved, res, err)
	}
	if _, err := os.Stat(moved); err != nil {
		t.Fatalf("moved-aside file: %v", err)
	}
	s, err := NewService(cfg, ServiceOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if ls := s.Allocator().Leases(); len(ls) != 1 || ls[0].Addr != netip.MustParseAddr("fd00:db8:1:2:3::10") {
		t.Fatalf("rebuilt leases %+v", ls)
	}
}

func TestConfigValidate(t *testing.T) {
	base := func() Config { return testConfig(t) }
	tests := []struct {
		name    string
		mut     func(*Config)
		wantErr string
	}{
		{"ok", func(*Config) {}, ""},
		{"no prefix", func(c *Config) { c.Prefix = netip.Prefix{} }, "not set"},
		{"short prefix", func(c *Config) { c.Prefix = netip.MustParsePrefix("fd00::/48") }, "want /64 to /112"},
		{"host bits", func(c *Config) { c.Prefix = netip.MustParsePrefix("fd00::1/80") }, "did you mean fd00::/80"},
		{"ipv4 prefix", func(c *Config) { c.Prefix = netip.MustParsePrefix("10.0.0.0/8") }, "not IPv6"},
		{"gateway outside", func(c *Config) { c.Gateway = netip.MustParseAddr("fd00::1") }, "not inside prefix"},
		{"gateway anycast", func(c *Config) { c.Gateway = c.Prefix.Addr() }, "subnet-router anycast"},
		{"v4 gateway broadcast", func(c *Config) { c.IPv4Gateway = netip.MustParseAddr("172.30.255.255") }, "not a host address"},
		{"reserved outside", func(c *Config) { c.Reserved = []netip.Addr{netip.MustParseAddr("2001:db8::1")} }, "reserved[0]"},
		{"relative state", func(c *Config) { c.StateFile = "ipam.db" }, "absolute path"},
		{"bad plugin name", func(c *Config) { c.PluginName = "a/b" }, "plain name"},
		{"long bridge", func(c *Config) { c.BridgeName = "a-very-long-bridge-name" }, "15 bytes"},
		{"create without name", func(c *Config) { c.CreateNetwork, c.NetworkName = true, "" }, "network name is empty"},
		{"negative hold-down", func(c *Config) { c.HoldDown = -1 }, "negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := base()
			tt.mut(&c)
			err := c.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Validate() = %v, want containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestPruneEvery(t *testing.T) {
	for _, tc := range []struct{ hold, want time.Duration }{
		{time.Hour, pruneInterval},
		{8 * time.Minute, 2 * time.Minute},
		{2 * time.Second, time.Second},
	} {
		if got := pruneEvery(tc.hold); got != tc.want {
			t.Errorf("pruneEvery(%s) = %s, want %s", tc.hold, got, tc.want)
		}
	}
}
