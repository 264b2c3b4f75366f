package ipam

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/versions"
)

// DockerClient is the part of *github.com/docker/docker/client.Client the
// ipam package uses. Create the real client with API version negotiation
// (client.WithAPIVersionNegotiation()): Debian's dockerd 20.10 speaks 1.41.
type DockerClient interface {
	NetworkInspect(ctx context.Context, networkID string, options network.InspectOptions) (network.Inspect, error)
	NetworkCreate(ctx context.Context, name string, options network.CreateOptions) (network.CreateResponse, error)
	ServerVersion(ctx context.Context) (types.Version, error)
}

// Docker network options v6reg sets.
const (
	OptBridgeName        = "com.docker.network.bridge.name"
	OptGatewayModeIPv6   = "com.docker.network.bridge.gateway_mode_ipv6"
	GatewayModeRouted    = "routed"
	minAPIForGatewayMode = "1.48" // engine 28
	// LabelManagedBy marks networks v6reg created.
	LabelManagedBy = "v6reg.managed-by"
	pruneInterval  = 5 * time.Minute
)

// ServiceOptions are the injectable parts of a Service.
type ServiceOptions struct {
	Log  *slog.Logger
	Now  func() time.Time
	Rand io.Reader
}

// Service is what the agent runs: the lease store, the allocator and the
// driver socket, plus the Docker network it serves.
type Service struct {
	cfg    Config
	log    *slog.Logger
	store  *BoltStore
	alloc  *Allocator
	driver *Driver

	mu     sync.Mutex
	srv    *http.Server
	ln     net.Listener
	stop   chan struct{}
	wg     sync.WaitGroup
	closed bool
}

// NewService validates cfg (WithDefaults is applied), opens the lease store
// and loads it. A damaged store returns *CorruptStoreError.
func NewService(cfg Config, o ServiceOptions) (*Service, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("ipam config: %w", err)
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	log := o.Log.With("component", "ipam")
	store, err := OpenBoltStore(cfg.StateFile)
	if err != nil {
		return nil, err
	}
	alloc, err := NewAllocator(store, cfg.poolConfigs(), AllocatorOptions{HoldDown: cfg.HoldDown, Now: o.Now, Rand: o.Rand, Log: log})
	if err != nil {
		_ = store.Close()
		return nil, err
	}
	return &Service{cfg: cfg, log: log, store: store, alloc: alloc, driver: NewDriver(alloc, cfg, log), stop: make(chan struct{})}, nil
}

func (c Config) poolConfigs() []PoolConfig {
	pcs := []PoolConfig{{Prefix: c.Prefix, Gateway: c.Gateway, Reserved: c.Reserved}}
	if c.IPv4Subnet.IsValid() {
		pcs = append(pcs, PoolConfig{Prefix: c.IPv4Subnet, Gateway: c.IPv4Gateway, Reserved: c.Reserved})
	}
	return pcs
}

// Config returns the effective configuration (defaults applied).
func (s *Service) Config() Config { return s.cfg }

// Allocator gives access to leases and hold-downs (status, metrics).
func (s *Service) Allocator() *Allocator { return s.alloc }

// Start listens on the plugin socket and serves the driver in the
// background; it also prunes expired hold-downs periodically.
func (s *Service) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.New("ipam service: start after close")
	}
	if s.srv != nil {
		return nil
	}
	ln, err := Listen(s.cfg.SocketPath())
	if err != nil {
		return err
	}
	s.ln = ln
	s.srv = &http.Server{Handler: s.driver.Handler(), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: idleTimeout}
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("ipam driver socket stopped", "err", err)
		}
	}()
	go func() {
		defer s.wg.Done()
		t := time.NewTicker(pruneEvery(s.cfg.HoldDown))
		defer t.Stop()
		for {
			select {
			case <-s.stop:
				return
			case <-t.C:
				if n, err := s.alloc.PruneHolds(); err != nil {
					s.log.Error("ipam hold-down prune failed", "err", err)
				} else if n > 0 {
					s.log.Info("ipam expired hold-downs pruned", "count", n)
				}
			}
		}
	}()
	s.log.Info("ipam driver listening", "socket", s.cfg.SocketPath(), "prefix", s.cfg.Prefix, "ipv4", s.cfg.IPv4Subnet, "leases", len(s.alloc.Leases()))
	return nil
}

// Close stops serving, removes the socket and closes the store. Safe to
// call twice.
func (s *Service) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.stop)
	srv := s.srv
	s.mu.Unlock()
	var errs []error
	if srv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := srv.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("ipam driver shutdown: %w", err))
		}
		cancel()
		if err := os.Remove(s.cfg.SocketPath()); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("ipam plugin socket remove: %w", err))
		}
	}
	s.wg.Wait()
	if err := s.store.Close(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// NetworkDiff is one way an existing Docker network differs from the config.
type NetworkDiff struct {
	Field string
	Want  string
	Have  string
	Fix   string
}

// NetworkMismatchError lists every difference of an existing network.
type NetworkMismatchError struct {
	Network string
	Diffs   []NetworkDiff
}

func (e *NetworkMismatchError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "docker network %q does not match the v6reg config (%d differences):", e.Network, len(e.Diffs))
	for _, d := range e.Diffs {
		fmt.Fprintf(&b, "\n  %s: want %q, have %q: %s", d.Field, d.Want, d.Have, d.Fix)
	}
	return b.String()
}

// NetworkCreateOptions returns what EnsureNetwork creates, for an engine
// speaking apiVersion (gateway_mode_ipv6 needs API 1.48, engine 28).
func (c Config) NetworkCreateOptions(apiVersion string) network.CreateOptions {
	c = c.WithDefaults()
	yes := true
	ipamCfg := []network.IPAMConfig{{Subnet: c.Prefix.String(), Gateway: c.Gateway.String()}}
	if c.IPv4Subnet.IsValid() {
		ipamCfg = append(ipamCfg, network.IPAMConfig{Subnet: c.IPv4Subnet.String(), Gateway: c.IPv4Gateway.String()})
	}
	opts := map[string]string{}
	if c.BridgeName != "" {
		opts[OptBridgeName] = c.BridgeName
	}
	if versions.GreaterThanOrEqualTo(apiVersion, minAPIForGatewayMode) {
		opts[OptGatewayModeIPv6] = GatewayModeRouted
	}
	return network.CreateOptions{
		Driver:     "bridge",
		EnableIPv6: &yes,
		IPAM:       &network.IPAM{Driver: c.PluginName, Config: ipamCfg},
		Options:    opts,
		Labels:     map[string]string{LabelManagedBy: "v6reg"},
	}
}

// EnsureNetwork makes sure the configured Docker network exists and matches:
// it creates it when missing and CreateNetwork is set, or returns
// *NetworkMismatchError listing each difference. It returns the network ID.
func (s *Service) EnsureNetwork(ctx context.Context, docker DockerClient) (string, error) {
	cfg := s.cfg
	if cfg.NetworkName == "" {
		return "", errors.New("ipam network name is not configured")
	}
	v, err := docker.ServerVersion(ctx)
	if err != nil {
		return "", fmt.Errorf("docker version: %w", err)
	}
	want := cfg.NetworkCreateOptions(v.APIVersion)
	have, err := docker.NetworkInspect(ctx, cfg.NetworkName, network.InspectOptions{})
	if err == nil {
		if diffs := diffNetwork(want, have); len(diffs) > 0 {
			return "", &NetworkMismatchError{Network: cfg.NetworkName, Diffs: diffs}
		}
		return have.ID, nil
	}
	if !cerrdefs.IsNotFound(err) {
		return "", fmt.Errorf("docker network %q inspect: %w", cfg.NetworkName, err)
	}
	if !cfg.CreateNetwork {
		return "", fmt.Errorf("docker network %q does not exist: set create_network in the v6reg config, or create it: docker network create --driver bridge --ipv6 --ipam-driver %s --subnet %s --gateway %s --subnet %s --gateway %s %s",
			cfg.NetworkName, cfg.PluginName, cfg.Prefix, cfg.Gateway, cfg.IPv4Subnet, cfg.IPv4Gateway, cfg.NetworkName)
	}
	resp, err := docker.NetworkCreate(ctx, cfg.NetworkName, want)
	if err != nil {
		return "", fmt.Errorf("docker network %q create: %w", cfg.NetworkName, err)
	}
	if resp.Warning != "" {
		s.log.Warn("docker network created with a warning", "network", cfg.NetworkName, "warning", resp.Warning)
	}
	s.log.Info("docker network created", "network", cfg.NetworkName, "id", resp.ID, "api", v.APIVersion, "options", want.Options)
	return resp.ID, nil
}

func diffNetwork(want network.CreateOptions, have network.Inspect) []NetworkDiff {
	var d []NetworkDiff
	const recreate = "remove the network (after stopping its containers) and let v6reg create it, or fix the v6reg config"
	if have.Driver != want.Driver {
		d = append(d, NetworkDiff{"driver", want.Driver, have.Driver, recreate})
	}
	if !have.EnableIPv6 {
		d = append(d, NetworkDiff{"enable_ipv6", "true", "false", recreate})
	}
	if have.IPAM.Driver != want.IPAM.Driver {
		d = append(d, NetworkDiff{"ipam driver", want.IPAM.Driver, have.IPAM.Driver, "the network must use the v6reg IPAM plugin name from the config: " + recreate})
	}
	for _, w := range want.IPAM.Config {
		fam := "ipv6"
		if strings.Contains(w.Subnet, ".") {
			fam = "ipv4"
		}
		i := slices.IndexFunc(have.IPAM.Config, func(h network.IPAMConfig) bool { return sameFamily(h.Subnet, w.Subnet) })
		if i < 0 {
			d = append(d, NetworkDiff{fam + " subnet", w.Subnet, "", recreate})
			continue
		}
		h := have.IPAM.Config[i]
		if h.Subnet != w.Subnet {
			d = append(d, NetworkDiff{fam + " subnet", w.Subnet, h.Subnet, recreate})
		}
		if h.Gateway != "" && h.Gateway != w.Gateway {
			d = append(d, NetworkDiff{fam + " gateway", w.Gateway, h.Gateway, recreate})
		}
		if h.IPRange != "" {
			d = append(d, NetworkDiff{fam + " ip range", "", h.IPRange, "v6reg allocates from the whole subnet: " + recreate + " without --ip-range"})
		}
	}
	for _, k := range []string{OptBridgeName, OptGatewayModeIPv6} {
		if w, h := want.Options[k], have.Options[k]; w != h {
			d = append(d, NetworkDiff{"option " + k, w, h, recreate})
		}
	}
	return d
}

func sameFamily(a, b string) bool {
	pa, errA := netip.ParsePrefix(a)
	pb, errB := netip.ParsePrefix(b)
	return errA == nil && errB == nil && pa.Addr().Is4() == pb.Addr().Is4()
}

// InUse lists the addresses Docker has on the network (address -> container
// ID), from the network's endpoints.
func InUse(ctx context.Context, docker DockerClient, networkName string) (map[netip.Addr]string, error) {
	n, err := docker.NetworkInspect(ctx, networkName, network.InspectOptions{})
	if err != nil {
		return nil, fmt.Errorf("docker network %q inspect: %w", networkName, err)
	}
	inUse := map[netip.Addr]string{}
	for id, ep := range n.Containers {
		for _, s := range []string{ep.IPv6Address, ep.IPv4Address} {
			if s == "" {
				continue
			}
			a, err := parseAddr(s)
			if err != nil {
				return nil, fmt.Errorf("docker network %q endpoint of container %s: %w", networkName, id, err)
			}
			inUse[a] = id
		}
	}
	return inUse, nil
}

// ReconcileWithDocker makes the leases equal to the addresses Docker has on
// the network (see Allocator.Reconcile). A missing network is an error, not
// "nothing in use": releasing every lease on a typo would be wrong.
func (s *Service) ReconcileWithDocker(ctx context.Context, docker DockerClient) (ReconcileResult, error) {
	inUse, err := InUse(ctx, docker, s.cfg.NetworkName)
	if err != nil {
		return ReconcileResult{}, err
	}
	res, err := s.alloc.Reconcile(inUse)
	if err != nil {
		return res, err
	}
	s.log.Info("ipam reconciled with docker", "network", s.cfg.NetworkName, "in_use", len(inUse),
		"adopted", len(res.Adopted), "released", len(res.Released), "pruned", res.Pruned, "ignored", len(res.Ignored))
	return res, nil
}

// RebuildStore is the recovery for a damaged store: it moves the file aside
// and builds a new store from the addresses Docker has on the network. What
// is lost: every hold-down (recently released addresses may be reused at
// once), grant times and owner hints. Run it with the agent stopped.
func RebuildStore(ctx context.Context, cfg Config, docker DockerClient, o ServiceOptions) (movedTo string, res ReconcileResult, err error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return "", res, fmt.Errorf("ipam config: %w", err)
	}
	inUse, err := InUse(ctx, docker, cfg.NetworkName)
	if err != nil && !cerrdefs.IsNotFound(err) {
		return "", res, err
	}
	if _, statErr := os.Stat(cfg.StateFile); statErr == nil {
		now := time.Now
		if o.Now != nil {
			now = o.Now
		}
		if movedTo, err = MoveAside(cfg.StateFile, now()); err != nil {
			return "", res, err
		}
	}
	svc, err := NewService(cfg, o)
	if err != nil {
		return movedTo, res, err
	}
	defer func() { err = errors.Join(err, svc.Close()) }()
	res, err = svc.alloc.Reconcile(inUse)
	return movedTo, res, err
}

// idleTimeout closes a keep-alive connection of the driver socket after
// this long without a request, so that idle connections Docker's plugin
// clients leave open cannot pile up in the agent.
var idleTimeout = 2 * time.Minute

// pruneEvery is how often expired hold-downs are dropped: every
// pruneInterval, or a quarter of a shorter hold-down (at least a second),
// so that the records kept stay about one hold-down's worth of releases.
func pruneEvery(holdDown time.Duration) time.Duration {
	return min(pruneInterval, max(holdDown/4, time.Second))
}
