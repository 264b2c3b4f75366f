package integration

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/versions"
	"github.com/docker/docker/client"
	"golang.org/x/sync/errgroup"

	"github.com/v6reg/v6reg/integration/dockerd"
	"github.com/v6reg/v6reg/ipam"
)

// recorder is a slog handler that keeps the driver's log lines, so the test
// can show exactly which requests dockerd made.
type recorder struct {
	mu    sync.Mutex
	lines []string
	t     *testing.T
}

func (r *recorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *recorder) Handle(_ context.Context, rec slog.Record) error {
	var b strings.Builder
	b.WriteString(rec.Message)
	rec.Attrs(func(a slog.Attr) bool { fmt.Fprintf(&b, " %s=%v", a.Key, a.Value); return true })
	r.mu.Lock()
	r.lines = append(r.lines, b.String())
	r.mu.Unlock()
	return nil
}
func (r *recorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *recorder) WithGroup(string) slog.Handler      { return r }

// since returns the lines logged after mark (a previous len) that contain sub.
func (r *recorder) since(mark int, sub string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, l := range r.lines[mark:] {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return out
}

func (r *recorder) mark() int { r.mu.Lock(); defer r.mu.Unlock(); return len(r.lines) }

// randomULA returns a fresh fdXX:..../80 and a 10.x.y.0/24 so parallel test
// daemons never share a subnet on the host.
func randomPools(t *testing.T) (netip.Prefix, netip.Prefix) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	b[0] = 0xfd
	clear(b[10:])
	v6 := netip.PrefixFrom(netip.AddrFrom16(b), 80)
	v4 := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, b[14] | b[1], b[2], 0}), 24)
	return v6, v4.Masked()
}

type containerAddr struct {
	id   string
	v6   netip.Addr
	v4   netip.Addr
	name string
}

func inspectAddr(ctx context.Context, cli *client.Client, id, netName string) (containerAddr, error) {
	c, err := cli.ContainerInspect(ctx, id)
	if err != nil {
		return containerAddr{}, err
	}
	ep := c.NetworkSettings.Networks[netName]
	if ep == nil {
		return containerAddr{}, fmt.Errorf("container %s not on %s", id[:12], netName)
	}
	ca := containerAddr{id: id, name: c.Name}
	ca.v6, _ = netip.ParseAddr(ep.GlobalIPv6Address)
	ca.v4, _ = netip.ParseAddr(ep.IPAddress)
	return ca, nil
}

func runContainer(ctx context.Context, cli *client.Client, netName, name string, ip6 string) (string, error) {
	ec := &network.EndpointSettings{}
	if ip6 != "" {
		ec.IPAMConfig = &network.EndpointIPAMConfig{IPv6Address: ip6}
	}
	c, err := cli.ContainerCreate(ctx,
		&container.Config{Image: dockerd.BusyboxRef},
		&container.HostConfig{NetworkMode: container.NetworkMode(netName), RestartPolicy: container.RestartPolicy{Name: container.RestartPolicyAlways}},
		&network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{netName: ec}}, nil, name)
	if err != nil {
		return "", err
	}
	if err := cli.ContainerStart(ctx, c.ID, container.StartOptions{}); err != nil {
		return c.ID, err
	}
	return c.ID, nil
}

// TestIPAMWithDockerd drives the IPAM driver from a real dockerd: network
// creation, 50 containers, hold-down on reuse, agent restart, dockerd
// restart, and a mismatching existing network.
// startIPAM opens and starts an IPAM service for the test. Its cleanups
// remove the daemon's containers while the plugin still answers, then
// close the service (dockerd waits on a dead plugin for every release).
func startIPAM(t *testing.T, d *dockerd.Daemon, cfg ipam.Config, log *slog.Logger) *ipam.Service {
	t.Helper()
	svc, err := ipam.NewService(cfg, ipam.ServiceOptions{Log: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Close() })
	if err := svc.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
		defer cancel()
		if err := d.RemoveAll(ctx); err != nil {
			t.Errorf("removing containers: %v", err)
		}
	})
	return svc
}

func TestIPAMWithDockerd(t *testing.T) {
	d := dockerd.Start(t)
	cli := d.Client
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	if _, err := dockerd.BusyboxImage(ctx, cli); err != nil {
		t.Fatal(err)
	}
	v6, v4 := randomPools(t)
	reserved := offsetAddrForTest(v6, 0x53)
	suffix := strings.ToLower(rand.Text()[:8])
	cfg := ipam.Config{
		Prefix:        v6,
		IPv4Subnet:    v4,
		Reserved:      []netip.Addr{reserved},
		HoldDown:      time.Hour,
		StateFile:     filepath.Join(t.TempDir(), "ipam.db"),
		PluginName:    "v6reg-it-" + suffix,
		NetworkName:   "v6reg-it-" + suffix,
		CreateNetwork: true,
	}.WithDefaults()
	rec := &recorder{t: t}
	log := slog.New(rec)
	svc := startIPAM(t, d, cfg, log)
	netID, err := svc.EnsureNetwork(ctx, cli)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cli.NetworkRemove(context.Background(), netID) })
	t.Logf("network %s (%s): %s + %s via plugin %s", cfg.NetworkName, netID[:12], v6, v4, cfg.PluginName)
	for _, l := range rec.since(0, "ipam driver request") {
		t.Logf("network create: %s", l)
	}

	// 50 containers, 5 at a time.
	const n = 50
	start := time.Now()
	ids := make([]string, n)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(5)
	for i := range n {
		g.Go(func() error {
			id, err := runContainer(gctx, cli, cfg.NetworkName, fmt.Sprintf("c%02d-%s", i, suffix), "")
			ids[i] = id
			return err
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatalf("starting containers: %v", err)
	}
	t.Logf("%d containers started in %s", n, time.Since(start).Round(time.Millisecond))
	addrs := collect(ctx, t, cli, ids, cfg.NetworkName)
	checkUnique(t, addrs, cfg, svc)

	// Remove one and start another: the removed address is in hold-down.
	victim := addrs[0]
	if err := cli.ContainerRemove(ctx, victim.id, container.RemoveOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	freshID, err := runContainer(ctx, cli, cfg.NetworkName, "fresh-"+suffix, "")
	if err != nil {
		t.Fatal(err)
	}
	fresh, err := inspectAddr(ctx, cli, freshID, cfg.NetworkName)
	if err != nil {
		t.Fatal(err)
	}
	if fresh.v6 == victim.v6 || fresh.v4 == victim.v4 {
		t.Fatalf("removed container's address handed out again within hold-down: %v", fresh)
	}
	held := svc.Allocator().Holds()
	if !slices.ContainsFunc(held, func(h ipam.Hold) bool { return h.Addr == victim.v6 }) {
		t.Fatalf("removed address %s not in hold-down: %v", victim.v6, held)
	}
	// Asking for it explicitly (--ip6) is refused, and docker shows why.
	_, err = runContainer(ctx, cli, cfg.NetworkName, "want-held-"+suffix, victim.v6.String())
	if err == nil || !strings.Contains(err.Error(), "hold-down") {
		t.Fatalf("docker run --ip6 %s (held) = %v, want a hold-down error", victim.v6, err)
	}
	t.Logf("docker's error for a held address: %v", err)
	_ = cli.ContainerRemove(ctx, "want-held-"+suffix, container.RemoveOptions{Force: true})
	// The refused start may leave the other family's lease behind if Docker
	// does not release it; reconcile is what cleans that up.
	res, err := svc.ReconcileWithDocker(ctx, cli)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range res.Released {
		t.Logf("docker leaked %s after the refused start (reconcile put it into hold-down); driver log:", a)
		for _, l := range rec.since(0, a.String()) {
			t.Logf("  %s", l)
		}
	}
	if len(res.Adopted) != 0 || len(res.Released) > 1 {
		t.Fatalf("unexpected reconcile after refused start: %+v", res)
	}
	addrs = append(addrs[1:], fresh)
	ids = append(slices.Clone(ids[1:]), freshID)

	// Agent restart: close the store and reopen it; every lease is kept and
	// reconcile with Docker has nothing to change.
	before := leaseSet(svc)
	if err := svc.Close(); err != nil {
		t.Fatal(err)
	}
	svc = startIPAM(t, d, cfg, log)
	if after := leaseSet(svc); !slices.Equal(before, after) {
		t.Fatalf("leases changed across agent restart: %d before, %d after", len(before), len(after))
	}
	res, err = svc.ReconcileWithDocker(ctx, cli)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Adopted)+len(res.Released) != 0 {
		t.Fatalf("reconcile after agent restart changed leases: %+v", res)
	}

	// dockerd restart with --restart always containers.
	mark := rec.mark()
	start = time.Now()
	if err := d.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	var after []containerAddr
	deadline := time.Now().Add(40 * time.Second)
	for {
		after = after[:0]
		running := 0
		for _, id := range ids {
			c, err := cli.ContainerInspect(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if c.State.Running {
				running++
				if ca, err := inspectAddr(ctx, cli, id, cfg.NetworkName); err == nil && ca.v6.IsValid() {
					after = append(after, ca)
				}
			}
		}
		if len(after) == len(ids) || time.Now().After(deadline) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("dockerd restart: %d/%d containers running with addresses after %s", len(after), len(ids), time.Since(start).Round(time.Millisecond))
	reqs := rec.since(mark, "ipam driver request")
	var releases, requests, specific int
	for _, l := range reqs {
		switch {
		case strings.Contains(l, "ReleaseAddress"):
			releases++
		case strings.Contains(l, "RequestAddress"):
			requests++
			if !strings.Contains(l, `"Address":""`) {
				specific++
			}
		}
	}
	t.Logf("driver calls during dockerd restart: %d total, %d ReleaseAddress, %d RequestAddress (%d with a preferred address)", len(reqs), releases, requests, specific)
	for i, l := range reqs {
		if i < 6 || i >= len(reqs)-3 {
			t.Logf("  %s", l)
		}
	}
	for _, l := range rec.since(mark, "refused") {
		t.Logf("refused during restart: %s", l)
	}
	same := 0
	old := map[string]containerAddr{}
	for _, a := range addrs {
		old[a.id] = a
	}
	for _, a := range after {
		if old[a.id].v6 == a.v6 {
			same++
		}
	}
	t.Logf("after dockerd restart %d of %d containers kept their IPv6 address", same, len(after))
	if len(after) != len(ids) {
		t.Errorf("only %d of %d containers came back after dockerd restart\n%s", len(after), len(ids), d.LogTail(20))
	}
	checkUnique(t, after, cfg, svc)
	if res, err := svc.ReconcileWithDocker(ctx, cli); err != nil || len(res.Adopted)+len(res.Released) != 0 {
		t.Errorf("store and docker disagree after dockerd restart: %+v %v", res, err)
	}

	// An existing network that does not match is reported field by field.
	otherName := "other-" + suffix
	yes := true
	o6, o4 := randomPools(t)
	other, err := cli.NetworkCreate(ctx, otherName, network.CreateOptions{Driver: "bridge", EnableIPv6: &yes,
		IPAM: &network.IPAM{Config: []network.IPAMConfig{{Subnet: o6.String()}, {Subnet: o4.String()}}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cli.NetworkRemove(context.Background(), other.ID) })
	cfg2 := cfg
	cfg2.NetworkName, cfg2.StateFile, cfg2.PluginName = otherName, filepath.Join(t.TempDir(), "other.db"), "unused-"+suffix
	svc2, err := ipam.NewService(cfg2, ipam.ServiceOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer svc2.Close()
	_, err = svc2.EnsureNetwork(ctx, cli)
	var me *ipam.NetworkMismatchError
	if !errors.As(err, &me) {
		t.Fatalf("want NetworkMismatchError, got %v", err)
	}
	var fields []string
	for _, df := range me.Diffs {
		fields = append(fields, df.Field)
	}
	want := "ipam driver,ipv6 subnet,ipv4 subnet"
	if ins, err := cli.NetworkInspect(ctx, otherName, network.InspectOptions{}); err == nil && len(ins.IPAM.Config) == 2 && ins.IPAM.Config[0].Gateway != "" {
		// Engine 29 reports the gateways its own IPAM picked.
		want = "ipam driver,ipv6 subnet,ipv6 gateway,ipv4 subnet,ipv4 gateway"
	}
	if versions.GreaterThanOrEqualTo(cli.ClientVersion(), "1.48") {
		// Engine 28+: v6reg also wants gateway mode routed.
		want += ",option " + ipam.OptGatewayModeIPv6
	}
	if got := strings.Join(fields, ","); got != want {
		t.Errorf("mismatch fields %s, want %s", got, want)
	}
	t.Logf("mismatch report:\n%v", err)
}

func offsetAddrForTest(p netip.Prefix, off byte) netip.Addr {
	b := p.Addr().As16()
	b[15] = off
	return netip.AddrFrom16(b)
}

func collect(ctx context.Context, t *testing.T, cli *client.Client, ids []string, netName string) []containerAddr {
	t.Helper()
	var out []containerAddr
	for _, id := range ids {
		ca, err := inspectAddr(ctx, cli, id, netName)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, ca)
	}
	return out
}

func checkUnique(t *testing.T, addrs []containerAddr, cfg ipam.Config, svc *ipam.Service) {
	t.Helper()
	leased := map[netip.Addr]bool{}
	for _, l := range svc.Allocator().Leases() {
		leased[l.Addr] = true
	}
	seen := map[netip.Addr]string{}
	for _, a := range addrs {
		for _, ip := range []netip.Addr{a.v6, a.v4} {
			if !ip.IsValid() {
				t.Errorf("container %s has no address (%v)", a.name, a)
				continue
			}
			if prev, dup := seen[ip]; dup {
				t.Errorf("address %s on %s and %s", ip, prev, a.name)
			}
			seen[ip] = a.name
			if !cfg.Prefix.Contains(ip) && !cfg.IPv4Subnet.Contains(ip) {
				t.Errorf("address %s of %s outside the pools", ip, a.name)
			}
			if ip == cfg.Gateway || ip == cfg.IPv4Gateway || ip == cfg.Prefix.Addr() || slices.Contains(cfg.Reserved, ip) {
				t.Errorf("reserved address %s handed to %s", ip, a.name)
			}
			if !leased[ip] {
				t.Errorf("address %s of %s is not leased in the store", ip, a.name)
			}
		}
	}
}

func leaseSet(svc *ipam.Service) []string {
	var out []string
	for _, l := range svc.Allocator().Leases() {
		out = append(out, l.Addr.String()+"@"+l.Granted.Format(time.RFC3339Nano))
	}
	return out
}

// TestIPAMDockerdLiveRestore shows the remedy for renumbering on a dockerd
// restart: with --live-restore containers keep running, Docker releases
// nothing, and every container keeps its address.
func TestIPAMDockerdLiveRestore(t *testing.T) {
	d := dockerd.StartWith(t, dockerd.Options{ExtraArgs: []string{"--live-restore"}})
	cli := d.Client
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if _, err := dockerd.BusyboxImage(ctx, cli); err != nil {
		t.Fatal(err)
	}
	v6, v4 := randomPools(t)
	suffix := strings.ToLower(rand.Text()[:8])
	cfg := ipam.Config{Prefix: v6, IPv4Subnet: v4, StateFile: filepath.Join(t.TempDir(), "ipam.db"),
		PluginName: "v6reg-lr-" + suffix, NetworkName: "v6reg-lr-" + suffix, CreateNetwork: true}.WithDefaults()
	rec := &recorder{t: t}
	svc := startIPAM(t, d, cfg, slog.New(rec))
	if _, err := svc.EnsureNetwork(ctx, cli); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for i := range 5 {
		id, err := runContainer(ctx, cli, cfg.NetworkName, fmt.Sprintf("lr%d-%s", i, suffix), "")
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	before := collect(ctx, t, cli, ids, cfg.NetworkName)
	mark := rec.mark()
	if err := d.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	after := collect(ctx, t, cli, ids, cfg.NetworkName)
	for i := range before {
		if before[i].v6 != after[i].v6 || before[i].v4 != after[i].v4 {
			t.Errorf("container %s: %s/%s before, %s/%s after a live-restore dockerd restart", before[i].name, before[i].v6, before[i].v4, after[i].v6, after[i].v4)
		}
	}
	calls := rec.since(mark, "ipam driver request")
	t.Logf("driver calls during a live-restore dockerd restart: %d", len(calls))
	for _, l := range calls {
		t.Logf("  %s", l)
	}
	if len(calls) != 0 {
		t.Errorf("dockerd called the driver %d times across a live-restore restart", len(calls))
	}
	checkUnique(t, after, cfg, svc)
}
