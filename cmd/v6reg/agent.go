package main

import (
	"github.com/v6reg/v6reg/api"
	"github.com/v6reg/v6reg/consulclient"
	"github.com/v6reg/v6reg/policies"

	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"github.com/v6reg/v6reg/nomad"

	"github.com/coreos/go-systemd/v22/daemon"
	docker "github.com/docker/docker/client"
	"github.com/google/nftables"
	napi "github.com/hashicorp/nomad/api"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/v6reg/v6reg/agent"
	"github.com/v6reg/v6reg/agent/config"
	"github.com/v6reg/v6reg/firewall"
	"github.com/v6reg/v6reg/ipam"
)

const agentUsage = `Usage: v6reg agent [flags]

Runs the node agent: the Docker IPAM driver for the node's IPv6 prefix, the
nftables firewall (tables inet and bridge v6reg) from each container's policy, and the
container's Consul services. Configuration comes from defaults, then the HCL
file, then the environment (CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, CONSUL_CACERT,
CONSUL_CLIENT_CERT, CONSUL_CLIENT_KEY, NOMAD_ADDR, NOMAD_TOKEN, NOMAD_CACERT,
NOMAD_CLIENT_CERT, NOMAD_CLIENT_KEY, DOCKER_HOST, V6REG_NODE_PREFIX), then
these flags. Every invalid field stops the agent with its file and line.

Signals: SIGHUP reloads the policy part of the config (peer sets, namespace
bounds, tag templates); SIGTERM and SIGINT stop the agent and leave the
firewall and registrations in place, so containers stay protected.

Flags:
`

// agentFlags are the flags of `v6reg agent`; they override file and env.
type agentFlags struct {
	configPath string
	dev        bool
	logLevel   string
	logFormat  string
	nodePrefix string
	stateDir   string
}

func runAgent(args []string, _, stderr io.Writer) int {
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, agentUsage)
		fs.PrintDefaults()
	}
	var f agentFlags
	fs.StringVar(&f.configPath, "config", "", "HCL config `file` (default "+config.DefaultPath+" if it exists)")
	fs.BoolVar(&f.dev, "dev", false, "development mode: a ULA /80 kept in a temp state dir, the local Docker, Consul if one answers")
	fs.StringVar(&f.logLevel, "log-level", "", "log level: debug, info, warn, error (overrides log_level)")
	fs.StringVar(&f.logFormat, "log-format", "", "log format: text or json (overrides log_format)")
	fs.StringVar(&f.nodePrefix, "node-prefix", "", "the IPv6 `prefix` routed to this node, e.g. 2001:db8:1:2:3::/80 (overrides node_prefix)")
	fs.StringVar(&f.stateDir, "state-dir", "", "`dir`ectory of the lease store (overrides state_dir)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "v6reg agent: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	cfg, err := loadAgentConfig(f)
	if err != nil {
		fmt.Fprintf(stderr, "v6reg agent: invalid configuration:\n%v\n", err)
		return 1
	}
	log := newLogger(stderr, cfg.LogLevel, cfg.LogFormat)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := serveAgent(ctx, cfg, f, log); err != nil {
		log.Error("agent stopped", "err", err)
		return 1
	}
	return 0
}

// loadAgentConfig merges defaults, file, env and flags, and validates once.
func loadAgentConfig(f agentFlags) (config.Config, error) {
	path := f.configPath
	if path == "" {
		if _, err := os.Stat(config.DefaultPath); err == nil {
			path = config.DefaultPath
		}
	}
	cfg, err := config.Load(path, os.Getenv)
	if err != nil {
		return cfg, err
	}
	if f.nodePrefix != "" {
		pfx, err := config.ParseNodePrefix(f.nodePrefix)
		if err != nil {
			return cfg, &config.FieldError{Where: "flag -node-prefix", Field: "node_prefix", Problem: err.Error(), Fix: "pass the prefix routed to this node, e.g. 2001:db8:1:2:3::/80"}
		}
		cfg.NodePrefix = pfx
	}
	if f.stateDir != "" {
		cfg.StateDir = f.stateDir
	}
	if f.logFormat != "" {
		cfg.LogFormat = f.logFormat
	}
	if f.logLevel != "" {
		if err := cfg.LogLevel.UnmarshalText([]byte(f.logLevel)); err != nil {
			return cfg, &config.FieldError{Where: "flag -log-level", Field: "log_level", Problem: fmt.Sprintf("%q is not a log level", f.logLevel), Fix: "use debug, info, warn or error"}
		}
	}
	if f.dev {
		if err := cfg.ApplyDev(); err != nil {
			return cfg, err
		}
	}
	return cfg, cfg.Validate()
}

func newLogger(w io.Writer, level slog.Level, format string) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func ipamConfig(cfg config.Config) ipam.Config {
	return ipam.Config{
		Prefix:        cfg.NodePrefix,
		Gateway:       cfg.Gateway,
		IPv4Subnet:    cfg.IPv4Subnet,
		Reserved:      cfg.Reserved,
		HoldDown:      cfg.HoldDown,
		StateFile:     filepath.Join(cfg.StateDir, "ipam.db"),
		PluginName:    cfg.Docker.PluginName,
		PluginDir:     cfg.Docker.PluginDir,
		NetworkName:   cfg.Docker.Network,
		CreateNetwork: cfg.Docker.CreateNetwork,
		BridgeName:    cfg.Docker.BridgeName,
	}.WithDefaults()
}

func dockerClient(host string) (*docker.Client, error) {
	c, err := docker.NewClientWithOpts(docker.WithHost(host), docker.WithAPIVersionNegotiation())
	if err != nil {
		return nil, fmt.Errorf("docker client for %s: %w", host, err)
	}
	return c, nil
}

// serveAgent wires the real clients to the agent and runs it until ctx ends.
func serveAgent(ctx context.Context, cfg config.Config, f agentFlags, log *slog.Logger) error {
	log.Info("v6reg agent starting", "version", version, "node", cfg.NodeName, "prefix", cfg.NodePrefix,
		"network", cfg.Docker.Network, "state_dir", cfg.StateDir, "dev", cfg.Dev, "config", cfg.Source)
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("creating state dir: %w", err)
	}
	dc, err := dockerClient(cfg.Docker.Host)
	if err != nil {
		return err
	}
	defer func() {
		if err := dc.Close(); err != nil {
			log.Warn("closing docker client", "err", err)
		}
	}()

	// The IPAM driver must answer before the network is created or
	// checked: Docker asks it for the pools right away.
	icfg := ipamConfig(cfg)
	svc, err := ipam.NewService(icfg, ipam.ServiceOptions{Log: log})
	if err != nil {
		return err // a corrupt store says which file and how to recover
	}
	defer func() {
		// Close flushes and unlocks the lease store: say if that failed.
		if err := svc.Close(); err != nil {
			log.Error("closing ipam service", "err", err)
		}
	}()
	if err := svc.Start(); err != nil {
		return err
	}
	if err := waitDocker(ctx, dc, log); err != nil {
		return err
	}
	netID, err := svc.EnsureNetwork(ctx, dc)
	if err != nil {
		return err
	}
	// The bridge Docker made for the network: its configured name, else
	// Docker's default for a user-defined bridge network.
	bridge := icfg.BridgeName
	if bridge == "" && len(netID) >= 12 {
		bridge = "br-" + netID[:12]
	}
	res, err := svc.ReconcileWithDocker(ctx, dc)
	if err != nil {
		return fmt.Errorf("reconciling leases with docker at start: %w", err)
	}
	log.Info("ipam reconciled with docker", "result", fmt.Sprintf("%+v", res))

	operator, err := operatorFromConfig(cfg)
	if err != nil {
		return err
	}
	logExposures(log, operator)
	opts := agent.Options{
		StateFile: filepath.Join(cfg.StateDir, agent.KnownFile),
		Node:      cfg.NodeName, Prefix: cfg.NodePrefix, Gateway: icfg.Gateway, Bridge: bridge, Network: cfg.Docker.Network, NodePorts: cfg.Firewall.NodePorts,
		IDPrefix: cfg.Consul.IDPrefix, ResyncInterval: cfg.ResyncInterval, Operator: operator, Log: log,
		Docker: dc, IPAM: ipamAdapter{svc: svc, docker: dc, log: log},
	}
	if cfg.Firewall.Enabled {
		// Checked every second by the agent, which reports the node
		// unhealthy while it fails.
		opts.BridgeNetfilter = firewall.EnableBridgeNetfilter
		// A lasting connection: one netlink socket for the agent's life
		// instead of one per call (7 ms less per change).
		conn, err := nftables.New(nftables.AsLasting())
		if err != nil {
			return fmt.Errorf("nftables connection: %w", err)
		}
		defer func() {
			if err := conn.CloseLasting(); err != nil {
				log.Warn("closing nftables connection", "err", err)
			}
		}()
		opts.Firewall = firewall.New(conn, 0, log.With("component", "firewall"))
		// Docker 27+ drops routed IPv6 to the network in its own chains
		// unless told to defer to v6reg (packaging/README.md).
		// Its own conn: the firewall's batches must not take its messages.
		dconn, err := nftables.New()
		if err != nil {
			return fmt.Errorf("nftables connection: %w", err)
		}
		dfw, err := newDockerFirewall(ctx, dc, dconn, cfg.NodePrefix, cfg.Docker.BridgeName, netID, log)
		if err != nil {
			return err
		}
		go dfw.keep(ctx, cfg.ResyncInterval)
		// Each container's bridge port, so that the firewall binds its
		// address to the port and not only to a MAC the container can
		// change. A handle in the agent's (the node's) namespace: the
		// containers' namespaces are read by file, never entered.
		h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
		if err != nil {
			return fmt.Errorf("netlink handle for bridge ports: %w", err)
		}
		defer h.Close()
		opts.Ports = firewall.NewPortFinder(h, icfg.Gateway)
	} else {
		log.Warn("firewall disabled in config: every address of the prefix is reachable")
	}
	if cfg.Nomad.Enabled {
		nc, err := napi.NewClient(&napi.Config{
			Address: cfg.Nomad.Address, SecretID: cfg.Nomad.Token, Region: cfg.Nomad.Region,
			TLSConfig: &napi.TLSConfig{CACert: cfg.Nomad.CAFile, ClientCert: cfg.Nomad.CertFile, ClientKey: cfg.Nomad.KeyFile},
		})
		if err != nil {
			return fmt.Errorf("nomad client: %w", err)
		}
		opts.Nomad, opts.NomadID = nomad.Client{C: nc}, cfg.Nomad.NodeID
	}
	if cfg.Consul.Enabled {
		cc, err := consulclient.New(cfg.Consul.Address, cfg.Consul.Token, cfg.Consul.CAFile, cfg.Consul.CertFile, cfg.Consul.KeyFile, cfg.Consul.Datacenter)
		if err != nil {
			return err
		}
		if cfg.Dev {
			if _, err := cc.C.Agent().Self(); err != nil {
				log.Warn("dev mode: no Consul answers; running without registration", "address", cfg.Consul.Address, "err", err)
				cc.C = nil
			}
		}
		if cc.C != nil {
			opts.Consul = cc
			// The peer watches' own client: pooled, capped at the budget.
			wc, open, err := consulclient.NewWatch(cfg.Consul.Address, cfg.Consul.Token, cfg.Consul.CAFile, cfg.Consul.CertFile, cfg.Consul.KeyFile, cfg.Consul.Datacenter, cfg.Consul.WatchConnections)
			if err != nil {
				return err
			}
			opts.PeerWatch = agent.PeerWatchOptions{API: consulclient.Client{C: wc}, Connections: cfg.Consul.WatchConnections, Open: open}
		}
	}
	a := agent.New(opts)

	l, err := api.Listen(cfg.APISocket)
	if err != nil {
		return err
	}
	go api.Serve(ctx, l, api.Handler(a), log)
	if cfg.MetricsAddress != "" {
		ml, err := net.Listen("tcp", cfg.MetricsAddress)
		if err != nil {
			return fmt.Errorf("metrics listener on %s: %w", cfg.MetricsAddress, err)
		}
		go api.Serve(ctx, ml, a.MetricsHandler(), log)
	}
	go reloadOnHUP(ctx, a, f, cfg, log)
	go watchdog(ctx, a, log)

	err = a.Run(ctx, func() {
		log.Info("first reconcile done; ready", "api", cfg.APISocket, "metrics", cfg.MetricsAddress)
		_, _ = daemon.SdNotify(false, daemon.SdNotifyReady)
	})
	_, _ = daemon.SdNotify(false, daemon.SdNotifyStopping)
	log.Info("v6reg agent stopped; firewall and registrations left in place")
	return err
}

// waitDocker waits for the engine to answer (it may start after us).
func waitDocker(ctx context.Context, dc *docker.Client, log *slog.Logger) error {
	for i := 0; ; i++ {
		_, err := dc.Ping(ctx)
		if err == nil {
			return nil
		}
		if i == 0 {
			log.Warn("waiting for the docker engine", "err", err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("docker engine never answered: %w", err)
		case <-time.After(time.Second):
		}
	}
}

// reloadOnHUP re-reads the config on SIGHUP. The policy part (peer sets,
// namespace bounds, tag templates) applies live; anything else is logged
// as needing a restart.
func reloadOnHUP(ctx context.Context, a *agent.Agent, f agentFlags, running config.Config, log *slog.Logger) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
		}
		cfg, err := loadAgentConfig(f)
		if err != nil {
			log.Error("reload refused: invalid configuration; keeping the running one", "err", err)
			continue
		}
		op, err := operatorFromConfig(cfg)
		if err != nil {
			log.Error("reload refused: invalid policy configuration; keeping the running one", "err", err)
			continue
		}
		for _, field := range restartFields(running, cfg) {
			log.Warn("config field changed but needs a restart to apply", "field", field)
		}
		a.SetOperator(op)
		log.Info("configuration reloaded", "config", cfg.Source)
		logExposures(log, op)
	}
}

// restartFields lists the fields that differ and only apply at start.
func restartFields(a, b config.Config) []string {
	var out []string
	check := func(name string, differ bool) {
		if differ {
			out = append(out, name)
		}
	}
	check("node_prefix", a.NodePrefix != b.NodePrefix)
	check("gateway", a.Gateway != b.Gateway)
	check("ipv4_egress_subnet", a.IPv4Subnet != b.IPv4Subnet)
	check("hold_down", a.HoldDown != b.HoldDown)
	check("reserved", !slices.Equal(a.Reserved, b.Reserved))
	check("resync_interval", a.ResyncInterval != b.ResyncInterval)
	check("log_level", a.LogLevel != b.LogLevel)
	check("log_format", a.LogFormat != b.LogFormat)
	check("node_name", a.NodeName != b.NodeName)
	check("state_dir", a.StateDir != b.StateDir)
	check("api_socket", a.APISocket != b.APISocket)
	check("metrics_address", a.MetricsAddress != b.MetricsAddress)
	check("docker", a.Docker != b.Docker)
	check("consul", a.Consul != b.Consul)
	check("nomad", a.Nomad != b.Nomad)
	check("firewall.enabled", a.Firewall.Enabled != b.Firewall.Enabled)
	check("firewall.node_ports", !slices.EqualFunc(a.Firewall.NodePorts, b.Firewall.NodePorts, func(x, y firewall.Rule) bool {
		return x.Proto == y.Proto && slices.Equal(x.Ports, y.Ports)
	}))
	return out
}

// watchdog pings systemd's watchdog while the agent reconciles.
func watchdog(ctx context.Context, a *agent.Agent, log *slog.Logger) {
	interval, err := daemon.SdWatchdogEnabled(false)
	if err != nil || interval == 0 {
		return
	}
	everyTick(ctx, interval/3, func() {
		// Stuck is worse than restarting: only ping while the last
		// reconcile is recent (resync runs at least every interval).
		if at := a.Snapshot().At; !at.IsZero() && time.Since(at) > 10*time.Minute {
			log.Error("no reconcile for 10 minutes; letting the systemd watchdog restart the agent")
			return
		}
		_, _ = daemon.SdNotify(false, daemon.SdNotifyWatchdog)
	})
}

// everyTick calls fn every interval until ctx ends.
func everyTick(ctx context.Context, interval time.Duration, fn func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			fn()
		}
	}
}

// ipamAdapter gives the agent the IPAM operations it drives.
type ipamAdapter struct {
	svc    *ipam.Service
	docker ipam.DockerClient
	log    *slog.Logger
}

func (i ipamAdapter) ReconcileWithDocker(ctx context.Context) error {
	res, err := i.svc.ReconcileWithDocker(ctx, i.docker)
	if err == nil && len(res.Adopted)+len(res.Released)+res.Pruned > 0 {
		i.log.Info("ipam reconciled with docker", "result", fmt.Sprintf("%+v", res))
	}
	return err
}

func (i ipamAdapter) Counts() (int, int) {
	return len(i.svc.Allocator().Leases()), len(i.svc.Allocator().Holds())
}

// apiClient talks to the agent's unix socket.
func apiClient(socket string) *http.Client {
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		}},
	}
}

// logExposures says, once at start and at each reload, what the policy
// configuration still lets one namespace's jobs do to another's
// (policies.Operator.Exposures): valid, but an operator should know.
func logExposures(log *slog.Logger, op policies.Operator) {
	for _, e := range op.Exposures() {
		log.Warn("policy configuration: " + e)
	}
}
