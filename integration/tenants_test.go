package integration

import (
	"github.com/v6reg/v6reg/consulclient"

	"github.com/v6reg/v6reg/peers"

	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"
	consulapi "github.com/hashicorp/consul/api"

	"github.com/v6reg/v6reg/integration/consul"
)

// TestTenantsPeersFromRealConsul: against a real Consul catalog, a
// service: or job: peer resolves only to what a v6reg registered for a
// container of the policy's namespace, on any node. A second node's
// registrations are made through Consul's API as that node's v6reg makes
// them (its ID, owner, container and node-prefix meta); a foreign one as a
// Nomad service block makes it (Nomad's ID, its meta, any address).
func TestTenantsPeersFromRealConsul(t *testing.T) {
	c := consul.StartT(t, 28517)
	cc, err := consulclient.New(c.HTTPAddr, "", "", "", "", "")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()

	n2Prefix := netip.MustParsePrefix("2001:db8:0:2:2::/80")
	v6regReg := func(node string, prefix netip.Prefix, container, name, addr, ns, job string) *consulapi.CatalogRegistration {
		return &consulapi.CatalogRegistration{Node: node, Address: "192.0.2.2", Service: &consulapi.AgentService{
			ID:      fmt.Sprintf("v6reg-%s-%s-%s-0", node, container, name),
			Service: name, Address: addr, Tags: []string{"job=" + ns + "/" + job},
			Meta: map[string]string{"v6reg_node": node, "v6reg_hash": "0123456789abcdef", "v6reg_container": container,
				"v6reg_prefix": prefix.String(), "nomad_namespace": ns, "nomad_job": job, "nomad_task": "db"},
		}}
	}
	regs := []*consulapi.CatalogRegistration{
		// Positive controls: node n2's v6reg, a container of default.
		v6regReg("n2", n2Prefix, "aaaaaaaaaaaa", "postgres", "2001:db8:0:2:2::5", "default", "p-db"),
		v6regReg("n2", n2Prefix, "aaaaaaaaaaaa", "v6reg-jobs", "2001:db8:0:2:2::5", "default", "p-db"),
		// The same name from a container of namespace dev.
		v6regReg("n2", n2Prefix, "bbbbbbbbbbbb", "postgres", "2001:db8:0:2:2::6", "dev", "p-db"),
		// v6reg-shaped, but an address outside the node's prefix.
		v6regReg("n2", n2Prefix, "cccccccccccc", "postgres", "2001:db8:0:3:3::7", "default", "p-db"),
		v6regReg("n2", n2Prefix, "cccccccccccc", "v6reg-jobs", "2001:db8:0:3:3::7", "default", "p-db"),
		// A Nomad service block named postgres, and one in v6reg-jobs
		// with the job's tag.
		{Node: "n3", Address: "192.0.2.3", Service: &consulapi.AgentService{ID: "_nomad-task-0000-group-db-postgres-5432",
			Service: "postgres", Address: "2001:db8:0:2:2::66", Port: 5432, Meta: map[string]string{"external-source": "nomad"}}},
		{Node: "n3", Address: "192.0.2.3", Service: &consulapi.AgentService{ID: "_nomad-task-0000-group-db-v6reg-jobs-0",
			Service: "v6reg-jobs", Address: "2001:db8:0:2:2::66", Tags: []string{"job=default/p-db"}, Meta: map[string]string{"external-source": "nomad"}}},
	}
	for _, r := range regs {
		if _, err := cc.C.Catalog().Register(r, (&consulapi.WriteOptions{}).WithContext(ctx)); err != nil {
			t.Fatal(err)
		}
	}
	api := cc
	for _, tc := range []struct {
		key     peers.Key
		want    []string
		ignored map[string]int
	}{
		{peers.ServiceKey("default", "postgres"), []string{"2001:db8:0:2:2::5/128"}, map[string]int{"foreign": 1, "outside_prefix": 1, "namespace": 1}},
		{peers.ServiceKey("dev", "postgres"), []string{"2001:db8:0:2:2::6/128"}, map[string]int{"foreign": 1, "outside_prefix": 1, "namespace": 1}},
		{peers.JobKey("default", "p-db"), []string{"2001:db8:0:2:2::5/128"}, map[string]int{"foreign": 1, "outside_prefix": 1}},
		{peers.JobKey("dev", "p-db"), []string{}, nil},
	} {
		res, err := peers.Resolve(ctx, api, "v6reg", tc.key, 0)
		if err != nil {
			t.Fatal(err)
		}
		got, ignored := res.Addrs, res.Ignored
		strs := []string{}
		for _, p := range got {
			strs = append(strs, p.String())
		}
		if !slices.Equal(strs, tc.want) {
			t.Errorf("%s = %v, want %v", tc.key, strs, tc.want)
		}
		if !maps.Equal(ignored, tc.ignored) {
			t.Errorf("%s ignored %v, want %v", tc.key, ignored, tc.ignored)
		}
	}

	// Past limits.peer_set_addresses (3 here) a set keeps the
	// registrations Consul created first, in the watches (what status
	// lists) as in Resolve (what explain asks): five of flood, each
	// later one with a lower address.
	for i := range 5 {
		r := v6regReg("n2", n2Prefix, fmt.Sprintf("dddddddddd%02d", i), "flood", fmt.Sprintf("2001:db8:0:2:2::%x", 0x20-i), "default", "p-flood")
		if _, err := cc.C.Catalog().Register(r, (&consulapi.WriteOptions{}).WithContext(ctx)); err != nil {
			t.Fatal(err)
		}
	}
	flood := peers.ServiceKey("default", "flood")
	wantCut := peers.Cut{Key: flood, Registrations: 5, Kept: 3, Limit: 3}
	res, err := peers.Resolve(ctx, api, "v6reg", flood, 3)
	if err != nil {
		t.Fatal(err)
	}
	first3 := []netip.Prefix{netip.MustParsePrefix("2001:db8:0:2:2::1e/128"), netip.MustParsePrefix("2001:db8:0:2:2::1f/128"), netip.MustParsePrefix("2001:db8:0:2:2::20/128")}
	later := []netip.Prefix{netip.MustParsePrefix("2001:db8:0:2:2::1c/128"), netip.MustParsePrefix("2001:db8:0:2:2::1d/128")}
	if c, ok := res.Cut(flood); !ok || c != wantCut || !slices.Equal(res.Addrs, first3) || !slices.Equal(res.Over, later) {
		t.Errorf("Resolve(%s, 3) = %v, over %v, cut %+v; want %v, over %v", flood, res.Addrs, res.Over, c, first3, later)
	}
	w := peers.NewWatches(peers.Options{API: api, IDPrefix: "v6reg", Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		MaxAddrs: func() int { return 3 }})
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	w.Want(wctx, map[peers.Key]bool{flood: true})
	err = WaitFor(ctx, 10*time.Second, func() error {
		if cuts := w.Cuts(); len(cuts) != 1 || cuts[0] != wantCut {
			return fmt.Errorf("watches' cuts = %+v, want %+v", cuts, wantCut)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := w.Get(flood); !slices.Equal(got, first3) {
		t.Errorf("watched set = %v, want %v (as Resolve cuts)", got, first3)
	}
}

// TestTenantsServicePeerInKernel: with a real dockerd, Consul and agent, a
// container admitting service:shopdb admits only what a v6reg registered
// as shopdb for a container of its own namespace: not the same name from
// a container of namespace dev (registered by this very agent), not a
// Nomad-service-block registration of it; a second node's v6reg
// registration of it is the positive control that the path works.
func TestTenantsServicePeerInKernel(t *testing.T) {
	e, ctx := newTestEnv(t, "v6t-", 5*time.Minute, agentBin)
	base, err := os.ReadFile(e.Config)
	if err != nil {
		t.Fatal(err)
	}
	extra := fmt.Sprintf("\nnamespace %q {\n  allow_internet = true\n  prefixes = [%q]\n}\n", "dev", NodePrefix)
	if err := os.WriteFile(e.Config, append(base, extra...), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := e.StartAgent(ctx); err != nil {
		t.Fatal(err)
	}
	victim, err := e.Run(ctx, "victim", map[string]string{
		"v6reg.job":     "victim",
		"v6reg.ingress": "tcp/8080 from service:shopdb",
	}, "mkdir -p /www && echo v > /www/index.html && exec httpd -f -p [::]:8080 -h /www")
	if err != nil {
		t.Fatal(err)
	}
	// In namespace dev, registering shopdb through v6reg_services, and
	// allowed to reach the node's prefix.
	dev, err := e.Run(ctx, "dev", map[string]string{
		"v6reg.namespace": "dev",
		"v6reg.egress":    "tcp/8080 to " + NodePrefix.String(),
		"v6reg.services":  "shopdb:9999",
	}, "exec sleep 3600")
	if err != nil {
		t.Fatal(err)
	}
	waitOpen(t, e, ctx, victim, dev)

	hc := e.Node.HTTPClient()
	cc, err := consulapi.NewClient(&consulapi.Config{Address: e.Consul.HTTPAddr, HttpClient: hc})
	if err != nil {
		t.Fatal(err)
	}
	register := func(r *consulapi.CatalogRegistration) {
		t.Helper()
		if _, err := cc.Catalog().Register(r, (&consulapi.WriteOptions{}).WithContext(ctx)); err != nil {
			t.Fatal(err)
		}
	}
	denied := func(what string) {
		t.Helper()
		// Long enough for a watch to answer and a reconcile to apply.
		time.Sleep(3 * time.Second)
		if err := e.Fetch(ctx, dev.ID, victim.Addr, 8080, 2*time.Second); err == nil {
			t.Fatalf("%s: dev reached the victim, which admits only service:shopdb of namespace default", what)
		}
	}
	t.Run("dev's own shopdb is not default's", func(t *testing.T) {
		err := WaitFor(ctx, 15*time.Second, func() error {
			svcs, err := e.ConsulServices()
			if err != nil {
				return err
			}
			for _, s := range svcs {
				if s.Service == "shopdb" && s.Address == dev.Addr.String() {
					return nil
				}
			}
			return fmt.Errorf("dev's shopdb not registered: %v", svcs)
		})
		if err != nil {
			t.Fatal(err)
		}
		denied("dev's registration")
	})
	t.Run("a Nomad service block named shopdb is not a peer", func(t *testing.T) {
		register(&consulapi.CatalogRegistration{Node: "nomad-node", Address: "192.0.2.9", Service: &consulapi.AgentService{
			ID: "_nomad-task-5c1f-web-shopdb-8080", Service: "shopdb", Address: dev.Addr.String(), Port: 8080,
			Meta: map[string]string{"external-source": "nomad"}}})
		denied("a foreign registration")
		err := WaitFor(ctx, 10*time.Second, func() error {
			m, err := e.Metrics()
			if err != nil {
				return err
			}
			if m[`v6reg_peer_entries_ignored{reason="foreign"}`] < 1 || m[`v6reg_peer_entries_ignored{reason="namespace"}`] < 1 {
				return fmt.Errorf("ignored: foreign %v namespace %v", m[`v6reg_peer_entries_ignored{reason="foreign"}`], m[`v6reg_peer_entries_ignored{reason="namespace"}`])
			}
			return nil
		})
		if err != nil {
			t.Error(err)
		}
	})
	t.Run("another node's v6reg registration is a peer (positive control)", func(t *testing.T) {
		register(&consulapi.CatalogRegistration{Node: "n2", Address: "192.0.2.2", Service: &consulapi.AgentService{
			ID: "v6reg-n2-aaaaaaaaaaaa-shopdb-8080", Service: "shopdb", Address: dev.Addr.String(), Port: 8080,
			Meta: map[string]string{"v6reg_node": "n2", "v6reg_hash": "0123456789abcdef", "v6reg_container": "aaaaaaaaaaaa",
				"v6reg_prefix": NodePrefix.String(), "nomad_namespace": "default"}}})
		if err := WaitFor(ctx, 15*time.Second, func() error { return e.Fetch(ctx, dev.ID, victim.Addr, 8080, 2*time.Second) }); err != nil {
			t.Fatalf("the victim does not admit a v6reg registration of shopdb: %v", err)
		}
	})
}

// TestTenantsDuplicateMAC: a container started with another's MAC stays
// closed with the reason in status; the older keeps working (office still
// reaches it after the newer has started and sent its frames).
func TestTenantsDuplicateMAC(t *testing.T) {
	e, ctx := newE2E(t)
	serve := "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p [::]:8080 -h /www"
	labels := map[string]string{"v6reg.ingress": "tcp/8080 from @office"}
	older, err := e.Run(ctx, "mac-older", labels, serve)
	if err != nil {
		t.Fatal(err)
	}
	waitOpen(t, e, ctx, older)
	if err := WaitFor(ctx, allowWait, func() error { return HTTPGet(e.Office, older.Addr, 8080, time.Second) }); err != nil {
		t.Fatalf("office does not reach the older container (positive control): %v", err)
	}
	cfg := &container.Config{Image: e.Image, Labels: labels, Cmd: []string{"/bin/sh", "-c", serve + " & ping -c 20 -i 0.2 " + older.Addr.String() + "; wait"}}
	// Engines before API 1.44 (Docker 25) take the MAC only here.
	cfg.MacAddress = older.MAC //nolint:staticcheck // the per-endpoint MacAddress needs API 1.44
	hc := &container.HostConfig{NetworkMode: container.NetworkMode(NetworkName)}
	nc := &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{NetworkName: {}}}
	created, err := e.Docker.Client.ContainerCreate(ctx, cfg, hc, nc, nil, "mac-newer")
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Docker.Client.ContainerStart(ctx, created.ID, container.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	err = WaitFor(ctx, 20*time.Second, func() error {
		s, err := e.Status()
		if err != nil {
			return err
		}
		for _, c := range s.Containers {
			if c.ID == created.ID {
				if c.Closed && strings.Contains(c.Reason, "MAC "+older.MAC+" is also container "+older.ID[:12]) {
					return nil
				}
				ins, _ := e.Docker.Client.ContainerInspect(ctx, created.ID)
				mac := ""
				if ep := ins.NetworkSettings.Networks[NetworkName]; ep != nil {
					mac = ep.MacAddress
				}
				return fmt.Errorf("newer (MAC %s, the older's %s): closed %v reason %q", mac, older.MAC, c.Closed, c.Reason)
			}
		}
		return errors.New("newer not in status yet")
	})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second) // the newer's frames have gone out
	for i := range 5 {
		if err := HTTPGet(e.Office, older.Addr, 8080, 2*time.Second); err != nil {
			t.Fatalf("office no longer reaches the older container (try %d): %v", i, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}
