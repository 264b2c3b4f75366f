// Package integration holds the tests that need root, network namespaces,
// a real dockerd and a real Consul, and the topology `make demo` shows.
//
// The topology: a "router" namespace routes the node's /80 to the "node"
// namespace, where dockerd, Consul (dev mode) and the v6reg agent run, as
// they do on a Nomad client; an "office" client sits inside the allowed
// prefix @office, an "internet" client outside the operator's prefixes.
// dockerd runs in the node namespace (started from a thread that joined
// only its network namespace: `ip netns exec` would also remount /sys and
// hide the cgroups dockerd needs), so nothing touches the host's own
// network namespace, firewall or Docker.
package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/v6reg/v6reg/api"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"

	"github.com/v6reg/v6reg/integration/consul"
	"github.com/v6reg/v6reg/integration/dockerd"
	"github.com/v6reg/v6reg/internal/netns"
)

// Addresses of the topology. 2001:db8::/32 is the operator's own space
// (internal_prefixes), so @internet is everything global but that; the
// internet client sits in 2a00:1450:1::/64, which is in @internet.
var (
	NodePrefix   = netip.MustParsePrefix("2001:db8:1:2:3::/80")
	OfficePrefix = netip.MustParsePrefix("2001:db8:100::/64")
	OfficeAddr   = netip.MustParseAddr("2001:db8:100::10")
	InternetAddr = netip.MustParseAddr("2a00:1450:1::10")
	transitNode  = netip.MustParseAddr("2001:db8:ff:1::2")
	transitRtr   = netip.MustParseAddr("2001:db8:ff:1::1")
	officeRtr    = netip.MustParseAddr("2001:db8:100::1")
	internetRtr  = netip.MustParseAddr("2a00:1450:1::1")

	// IPv4 beside it (dual-stack egress): the node's uplink and the
	// internet host; the router routes the network's IPv4 subnet
	// (ipv4_egress_subnet, 172.30.0.0/16 by default) to the node, since
	// the test dockerd does no NAT (--iptables=false).
	Internet4  = netip.MustParseAddr("203.0.113.10")
	NodeUp4    = netip.MustParseAddr("198.51.100.2")
	routerUp4  = netip.MustParseAddr("198.51.100.1")
	internetR4 = netip.MustParseAddr("203.0.113.1")
	Network4   = netip.MustParsePrefix("172.30.0.0/16")
)

// Ports inside the node namespace.
const (
	ConsulHTTPPort = 8500
	MetricsPort    = 9466
	NetworkName    = "v6reg-e2e"
)

// Env is the running topology.
type Env struct {
	t   netns.T
	Dir string

	Router, Node, Office, Internet *netns.NS

	Docker    *dockerd.Daemon
	Consul    *consul.Agent
	Image     string
	AgentBin  string
	Config    string // the agent's HCL config file
	APISocket string
	AgentLog  string
	plugin    string

	agentCmd  *exec.Cmd
	agentDone chan struct{}
}

// Options shape the environment.
type Options struct {
	// AgentBin is the v6reg binary to run.
	AgentBin string
	// Logf receives progress lines.
	Logf func(format string, args ...any)
	// ExtraConfig is appended to the agent's HCL config.
	ExtraConfig string
	// DockerArgs are added to dockerd's command line (e.g. --live-restore).
	DockerArgs []string
}

// NewEnv builds the topology and starts Consul and dockerd in the node
// namespace; StartAgent starts v6reg. Everything is torn down in t's
// cleanups, in reverse order, even when the test fails.
func NewEnv(t netns.T, dir string, o Options) *Env {
	t.Helper()
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	e := &Env{t: t, Dir: dir, AgentBin: o.AgentBin}
	e.plugin = fmt.Sprintf("v6reg-e2e-%d", os.Getpid())
	e.Router = netns.New(t, "router")
	e.Node = netns.New(t, "node")
	e.Office = netns.New(t, "office")
	e.Internet = netns.New(t, "inet")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("topology: %v", err)
		}
	}
	link := func(a *netns.NS, an string, aAddr netip.Addr, b *netns.NS, bn string, bAddr netip.Addr) {
		t.Helper()
		must(a.Veth(an, b, bn))
		must(a.Addr(an, netip.PrefixFrom(aAddr, 64)))
		must(b.Addr(bn, netip.PrefixFrom(bAddr, 64)))
		must(a.Up(an))
		must(b.Up(bn))
	}
	link(e.Router, "to-node", transitRtr, e.Node, "uplink", transitNode)
	link(e.Router, "to-office", officeRtr, e.Office, "eth0", OfficeAddr)
	link(e.Router, "to-inet", internetRtr, e.Internet, "eth0", InternetAddr)
	must(e.Router.Sysctl("net.ipv6.conf.all.forwarding", "1"))
	must(e.Node.Sysctl("net.ipv6.conf.all.forwarding", "1"))
	must(e.Node.Sysctl("net.ipv4.ip_forward", "1"))
	must(e.Router.Route(NodePrefix, transitNode, "to-node"))
	def := netip.MustParsePrefix("::/0")
	must(e.Node.Route(def, transitRtr, "uplink"))
	must(e.Office.Route(def, officeRtr, "eth0"))
	must(e.Internet.Route(def, internetRtr, "eth0"))
	def4 := netip.MustParsePrefix("0.0.0.0/0")
	must(e.Router.Sysctl("net.ipv4.ip_forward", "1"))
	must(e.Router.Addr("to-node", netip.PrefixFrom(routerUp4, 24)))
	must(e.Node.Addr("uplink", netip.PrefixFrom(NodeUp4, 24)))
	must(e.Router.Addr("to-inet", netip.PrefixFrom(internetR4, 24)))
	must(e.Internet.Addr("eth0", netip.PrefixFrom(Internet4, 24)))
	must(e.Router.Route(Network4, NodeUp4, "to-node"))
	must(e.Node.Route(def4, routerUp4, "uplink"))
	must(e.Internet.Route(def4, internetR4, "eth0"))

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cdir := filepath.Join(dir, "consul")
	must(os.MkdirAll(cdir, 0o700))
	c, err := consul.Start(ctx, consul.Options{Dir: cdir, BasePort: ConsulHTTPPort, Start: e.Node.Start, HTTP: e.Node.HTTPClient(), Node: "e2e-node"})
	if err != nil {
		t.Fatalf("consul: %v", err)
	}
	e.Consul = c
	t.Cleanup(c.Stop)
	o.Logf("consul dev agent up in namespace %s", e.Node.Name)

	d, err := dockerd.StartDaemon(ctx, filepath.Join(dir, "docker"), dockerd.Options{Start: e.Node.Start, Logf: o.Logf, Iptables: dockerd.Custom(), ExtraArgs: o.DockerArgs})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		if d != nil {
			_ = d.Cleanup(ctx)
		}
	})
	if err != nil {
		t.Fatalf("dockerd: %v", err)
	}
	e.Docker = d
	probe, err := BuildProbe(dir)
	if err != nil {
		t.Fatalf("%v", err)
	}
	img, err := ProbeImage(ctx, d.Client, probe)
	if err != nil {
		t.Fatalf("test image: %v", err)
	}
	e.Image = img
	e.APISocket = filepath.Join(dir, "v6reg.sock")
	e.AgentLog = filepath.Join(dir, "agent.log")
	e.Config = filepath.Join(dir, "v6reg.hcl")
	must(os.WriteFile(e.Config, []byte(e.config()+o.ExtraConfig), 0o600))
	t.Cleanup(func() { _ = os.Remove(filepath.Join("/run/docker/plugins", e.plugin+".sock")) })
	return e
}

func (e *Env) config() string {
	return fmt.Sprintf(`node_name       = "e2e-node"
node_prefix     = %q
state_dir       = %q
api_socket      = %q
metrics_address = "127.0.0.1:%d"
resync_interval = "10s"
log_level       = "debug"
internal_prefixes = ["2001:db8::/32"]

docker {
  host        = "unix://%s"
  network     = %q
  bridge_name = "v6e2e0"
  plugin_name = %q
  # The suite runs containers without Nomad; some pick their namespace
  # by label, which only the operator can permit.
  labels_choose_namespace = true
}

consul {
  address = "127.0.0.1:%d"
}

nomad {
  enabled = false
}

peer "office" {
  prefixes = [%q]
}

namespace "*" {
  peers          = ["office"]
  allow_internet = true
}

services {
  domain = "demo.example"
}
`, NodePrefix, filepath.Join(e.Dir, "state"), e.APISocket, MetricsPort, e.Docker.Socket, NetworkName, e.plugin, ConsulHTTPPort, OfficePrefix)
}

// StartAgent starts `v6reg agent` in the node namespace and waits until
// its first reconcile is done.
func (e *Env) StartAgent(ctx context.Context) error {
	lf, err := os.OpenFile(e.AgentLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("agent log: %w", err)
	}
	defer func() { _ = lf.Close() }() // the started agent holds its own descriptor
	cmd := exec.Command(e.AgentBin, "agent", "-config", e.Config)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := e.Node.Start(cmd); err != nil {
		return fmt.Errorf("starting agent: %w", err)
	}
	e.agentCmd = cmd
	done := make(chan struct{})
	e.agentDone = done
	go func() { _ = cmd.Wait(); close(done) }()
	e.t.Cleanup(func() {
		// Containers and the network go while the agent, Docker's IPAM
		// driver, still answers: otherwise dockerd waits on the dead
		// driver for every release (about a minute per topology).
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		_ = e.Docker.RemoveAll(ctx)
		e.StopAgent(syscall.SIGKILL)
	})
	for {
		s, err := e.Status()
		if err == nil && !s.At.IsZero() {
			return nil
		}
		select {
		case <-done:
			return fmt.Errorf("agent exited at start:\n%s", e.AgentLogTail(40))
		case <-ctx.Done():
			return fmt.Errorf("agent not ready: %v (last: %v)\n%s", ctx.Err(), err, e.AgentLogTail(40))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// AgentPID is the pid of the agent StartAgent started.
func (e *Env) AgentPID() (int, error) {
	if e.agentCmd == nil || e.agentCmd.Process == nil {
		return 0, errors.New("no agent running (StartAgent was not called, or StopAgent was)")
	}
	return e.agentCmd.Process.Pid, nil
}

// StopAgent signals the agent and waits for it to exit.
func (e *Env) StopAgent(sig syscall.Signal) {
	if e.agentCmd == nil || e.agentCmd.Process == nil {
		return
	}
	_ = e.agentCmd.Process.Signal(sig)
	select {
	case <-e.agentDone:
	case <-time.After(15 * time.Second):
		_ = e.agentCmd.Process.Kill()
		<-e.agentDone
	}
	e.agentCmd = nil
}

// AgentLogTail returns the last n lines of the agent's log.
func (e *Env) AgentLogTail(n int) string {
	b, _ := os.ReadFile(e.AgentLog) //nolint:gosec // G703: the env's own log file, named by NewEnv
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Status reads the agent's status API.
func (e *Env) Status() (*api.Snapshot, error) {
	b, err := e.APIGet("/v1/status")
	if err != nil {
		return nil, err
	}
	var s api.Snapshot
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("decoding status: %w", err)
	}
	return &s, nil
}

// APIGet fetches path from the agent's root-only API socket.
func (e *Env) APIGet(path string) ([]byte, error) {
	// No keep-alive: a transport per call would leave each connection
	// idle in the agent (the soak counts the agent's goroutines and heap).
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", e.APISocket)
		}}}
	resp, err := c.Get("http://v6reg" + path)
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }() // a read error shows in ReadAll
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: HTTP %d: %s", path, resp.StatusCode, b)
	}
	return b, nil
}

// Workload is one container the environment started.
type Workload struct {
	ID, Name string
	Addr     netip.Addr
	Addr4    netip.Addr // its IPv4 address on the network, if any
	MAC      string
}

// Run starts a busybox container on the v6reg network with labels and a
// shell command, and returns its address.
func (e *Env) Run(ctx context.Context, name string, labels map[string]string, shell string) (Workload, error) {
	return e.RunWithCaps(ctx, name, labels, shell)
}

// RunWithCaps is Run with capabilities added to Docker's default set
// (an attacker's container: NET_ADMIN to take any address).
func (e *Env) RunWithCaps(ctx context.Context, name string, labels map[string]string, shell string, caps ...string) (Workload, error) {
	cfg := &container.Config{Image: e.Image, Labels: labels, Cmd: []string{"/bin/sh", "-c", shell}}
	hc := &container.HostConfig{NetworkMode: container.NetworkMode(NetworkName), CapAdd: caps}
	nc := &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{NetworkName: {}}}
	created, err := e.Docker.Client.ContainerCreate(ctx, cfg, hc, nc, nil, name)
	if err != nil {
		return Workload{}, fmt.Errorf("creating %s: %w", name, err)
	}
	if err := e.Docker.Client.ContainerStart(ctx, created.ID, container.StartOptions{}); err != nil {
		return Workload{}, fmt.Errorf("starting %s: %w", name, err)
	}
	ins, err := e.Docker.Client.ContainerInspect(ctx, created.ID)
	if err != nil {
		return Workload{}, fmt.Errorf("inspecting %s: %w", name, err)
	}
	ep := ins.NetworkSettings.Networks[NetworkName]
	if ep == nil {
		return Workload{}, fmt.Errorf("%s is not on %s", name, NetworkName)
	}
	addr, err := netip.ParseAddr(ep.GlobalIPv6Address)
	if err != nil {
		return Workload{}, fmt.Errorf("%s has no IPv6 address on %s (%q)", name, NetworkName, ep.GlobalIPv6Address)
	}
	addr4, _ := netip.ParseAddr(ep.IPAddress) // none on an IPv6-only network
	return Workload{ID: created.ID, Name: name, Addr: addr, Addr4: addr4, MAC: ep.MacAddress}, nil
}

// Remove force-removes a container.
func (e *Env) Remove(ctx context.Context, id string) error {
	return e.Docker.Client.ContainerRemove(ctx, id, container.RemoveOptions{Force: true})
}

// Exec runs a command in a container and returns its exit code and output.
func (e *Env) Exec(ctx context.Context, id string, cmd ...string) (int, string, error) {
	ex, err := e.Docker.Client.ContainerExecCreate(ctx, id, container.ExecOptions{Cmd: cmd, AttachStdout: true, AttachStderr: true})
	if err != nil {
		return -1, "", fmt.Errorf("exec create: %w", err)
	}
	att, err := e.Docker.Client.ContainerExecAttach(ctx, ex.ID, container.ExecAttachOptions{})
	if err != nil {
		return -1, "", fmt.Errorf("exec attach: %w", err)
	}
	var out bytes.Buffer
	buf := make([]byte, 32<<10)
	for {
		n, rerr := att.Reader.Read(buf)
		out.Write(buf[:n])
		if rerr != nil {
			break
		}
	}
	att.Close()
	for {
		ins, err := e.Docker.Client.ContainerExecInspect(ctx, ex.ID)
		if err != nil {
			return -1, out.String(), fmt.Errorf("exec inspect: %w", err)
		}
		if !ins.Running {
			return ins.ExitCode, stripMux(out.Bytes()), nil
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stripMux removes Docker's 8-byte stream headers from attach output.
func stripMux(b []byte) string {
	var out bytes.Buffer
	for len(b) >= 8 && (b[0] == 1 || b[0] == 2) && b[1] == 0 && b[2] == 0 && b[3] == 0 {
		n := int(b[4])<<24 | int(b[5])<<16 | int(b[6])<<8 | int(b[7])
		b = b[8:]
		if n > len(b) {
			n = len(b)
		}
		out.Write(b[:n])
		b = b[n:]
	}
	out.Write(b)
	return out.String()
}

// Fetch has a container GET http://[addr]:port/ with v6probe; nil means
// the flow passed.
func (e *Env) Fetch(ctx context.Context, id string, addr netip.Addr, port int, timeout time.Duration) error {
	code, out, err := e.Exec(ctx, id, "/bin/v6probe", addr.String(), fmt.Sprint(port), timeout.String())
	if err != nil {
		return err
	}
	if code != 0 {
		return fmt.Errorf("http://[%s]:%d/ from container %s: exit %d: %s", addr, port, shortID(id), code, strings.TrimSpace(out))
	}
	return nil
}

// HTTPGet fetches http://[addr]:port/ from a client namespace; nil means
// the flow passed.
func HTTPGet(ns *netns.NS, addr netip.Addr, port int, timeout time.Duration) error {
	c := ns.HTTPClient()
	c.Timeout = timeout
	resp, err := c.Get(fmt.Sprintf("http://[%s]:%d/", addr, port))
	if err != nil {
		return err
	}
	_ = resp.Body.Close() // only the status matters
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	return nil
}

// ServeHTTP serves "hello from NAME" on [addr]:port inside ns until the
// returned stop is called.
func ServeHTTP(ns *netns.NS, addr netip.Addr, port int, name string) (stop func(), err error) {
	var l net.Listener
	err = ns.Run(func() error {
		var lerr error
		l, lerr = net.Listen("tcp", net.JoinHostPort(addr.String(), fmt.Sprint(port)))
		return lerr
	})
	if err != nil {
		return nil, fmt.Errorf("listening on [%s]:%d in %s: %w", addr, port, ns.Name, err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = fmt.Fprintf(w, "hello from %s\n", name) // the client reports a short answer
	}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(l) }()
	return func() { _ = srv.Close() }, nil
}

// DigAAAA asks the Consul agent's DNS for name's AAAA records, from the
// node namespace, with Debian's dig.
func (e *Env) DigAAAA(ctx context.Context, name string) ([]netip.Addr, error) {
	var out bytes.Buffer
	_, port, _ := net.SplitHostPort(e.Consul.DNSAddr)
	cmd := exec.CommandContext(ctx, "dig", "+short", "+time=2", "+tries=1", "AAAA", name, "@127.0.0.1", "-p", port)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := e.Node.Start(cmd); err != nil {
		if errors.Is(err, exec.ErrNotFound) {
			return nil, errors.New("dig not found: apt-get install dnsutils")
		}
		return nil, err
	}
	if err := cmd.Wait(); err != nil {
		return nil, fmt.Errorf("dig: %w: %s", err, out.String())
	}
	var addrs []netip.Addr
	for _, line := range strings.Fields(out.String()) {
		if a, err := netip.ParseAddr(line); err == nil {
			addrs = append(addrs, a)
		}
	}
	return addrs, nil
}

// ConsulServices lists the services registered with the node's Consul agent.
func (e *Env) ConsulServices() (map[string]struct {
	Service string
	Address string
	Port    int
	Tags    []string
}, error) {
	resp, err := e.Node.HTTPClient().Get("http://" + e.Consul.HTTPAddr + "/v1/agent/services")
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }() // a read error shows in Decode
	var out map[string]struct {
		Service string
		Address string
		Port    int
		Tags    []string
	}
	return out, json.NewDecoder(resp.Body).Decode(&out)
}

// Metrics reads the agent's /metrics from inside the node namespace as
// "name{labels}" -> value.
func (e *Env) Metrics() (map[string]float64, error) {
	c := e.Node.HTTPClient()
	c.Timeout = 5 * time.Second
	resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", MetricsPort))
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("/metrics: HTTP %d", resp.StatusCode)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			return nil, fmt.Errorf("/metrics line %q: %w", line, err)
		}
		out[line[:i]] = v
	}
	return out, sc.Err()
}

// WaitFor polls cond until it returns nil or the limit passes.
func WaitFor(ctx context.Context, limit time.Duration, cond func() error) error {
	deadline := time.Now().Add(limit)
	var err error
	for time.Now().Before(deadline) {
		if err = cond(); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("after %s: %w", limit, err)
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// WaitOpen waits until at least n managed containers are open (their
// firewall elements programmed), as the agent's status says.
func (e *Env) WaitOpen(ctx context.Context, n int, limit time.Duration) error {
	return WaitFor(ctx, limit, func() error {
		s, err := e.Status()
		if err != nil {
			return err
		}
		open := 0
		for _, c := range s.Containers {
			if !c.Closed {
				open++
			}
		}
		if open < n {
			return fmt.Errorf("%d of %d containers open", open, n)
		}
		return nil
	})
}
