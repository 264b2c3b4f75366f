// Package consul starts a real Consul agent in dev mode for integration
// tests and the demo: in-memory state, loopback only, its own ports, killed
// and cleaned up at the end. The binary is built from the Go module proxy by
// integration/scripts/build-consul.sh (make test does it and sets
// V6REG_CONSUL_BIN).
package consul

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// Agent is a running `consul agent -dev`.
type Agent struct {
	// HTTPAddr is host:port of the HTTP API, DNSAddr of the DNS server.
	HTTPAddr, DNSAddr string
	cmd               *exec.Cmd
	dir               string
	done              chan struct{} // closed when the process has exited
}

// Binary returns the Consul binary to use, or an error saying how to get one.
func Binary() (string, error) {
	if p := os.Getenv("V6REG_CONSUL_BIN"); p != "" {
		return p, nil
	}
	for _, p := range []string{"/var/cache/v6reg/consul-1.20.6/consul"} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	if p, err := exec.LookPath("consul"); err == nil {
		return p, nil
	}
	return "", errors.New("no consul binary: run `make test` (it builds one with integration/scripts/build-consul.sh) or set V6REG_CONSUL_BIN")
}

// Options place the agent.
type Options struct {
	// Dir holds the config and log; it must exist.
	Dir string
	// BasePort numbers the agent's ports: HTTP BasePort, DNS BasePort+100
	// (8500 and 8600, Consul's own, for BasePort 8500), the rest
	// BasePort+2.., so several agents can run side by side.
	BasePort int
	// Start starts the process; nil starts it in the current namespace.
	// Tests pass a netns' Start to run Consul inside a node namespace.
	Start func(*exec.Cmd) error
	// Node is the Consul node name.
	Node string
	// HTTP reaches the agent's API; nil uses a plain client (the agent
	// runs in the caller's namespace).
	HTTP *http.Client
}

// Start runs `consul agent -dev` and waits until it has a leader.
func Start(ctx context.Context, o Options) (*Agent, error) {
	bin, err := Binary()
	if err != nil {
		return nil, err
	}
	if o.BasePort == 0 {
		o.BasePort = 18500
	}
	if o.Node == "" {
		o.Node = "v6reg-test"
	}
	p := o.BasePort
	cfg := fmt.Sprintf(`ports {
  http     = %d
  dns      = %d
  serf_lan = %d
  serf_wan = %d
  server   = %d
  grpc     = -1
  grpc_tls = -1
}
`, p, p+100, p+2, p+3, p+4)
	cfgPath := filepath.Join(o.Dir, "consul.hcl")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return nil, fmt.Errorf("writing consul config: %w", err)
	}
	logf, err := os.Create(filepath.Join(o.Dir, "consul.log"))
	if err != nil {
		return nil, fmt.Errorf("consul log: %w", err)
	}
	defer func() { _ = logf.Close() }() // the started agent holds its own descriptor
	cmd := exec.Command(bin, "agent", "-dev", "-node", o.Node, "-bind", "127.0.0.1", "-client", "127.0.0.1",
		"-config-file", cfgPath, "-log-level", "warn")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	start := o.Start
	if start == nil {
		start = func(c *exec.Cmd) error { return c.Start() }
	}
	if err := start(cmd); err != nil {
		return nil, fmt.Errorf("starting consul: %w", err)
	}
	a := &Agent{HTTPAddr: net.JoinHostPort("127.0.0.1", strconv.Itoa(p)), DNSAddr: net.JoinHostPort("127.0.0.1", strconv.Itoa(p+100)),
		cmd: cmd, dir: o.Dir, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(a.done) }()
	hc := o.HTTP
	if hc == nil {
		hc = &http.Client{Timeout: time.Second}
	}
	if err := a.waitLeader(ctx, hc, 60*time.Second); err != nil {
		a.Stop()
		log, _ := os.ReadFile(filepath.Join(o.Dir, "consul.log"))
		return nil, fmt.Errorf("%w; consul log:\n%s", err, log)
	}
	return a, nil
}

// waitLeader polls /v1/status/leader until the dev server elected itself.
func (a *Agent) waitLeader(ctx context.Context, c *http.Client, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		select {
		case <-a.done:
			return fmt.Errorf("consul exited at start: %v", a.cmd.ProcessState)
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		resp, err := c.Get("http://" + a.HTTPAddr + "/v1/status/leader")
		if err == nil {
			var b [64]byte
			n, _ := resp.Body.Read(b[:])
			_ = resp.Body.Close()
			if resp.StatusCode == 200 && n > 4 { // `""` until elected
				return nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("consul had no leader after %s", limit)
}

// Stop kills the agent and waits for it. Safe to call twice.
func (a *Agent) Stop() {
	if a.cmd.Process == nil {
		return
	}
	_ = syscall.Kill(-a.cmd.Process.Pid, syscall.SIGKILL)
	select {
	case <-a.done:
	case <-time.After(10 * time.Second):
	}
}

// StartT starts an agent for a test and stops it in t.Cleanup. The agent
// runs in the test's own network namespace.
func StartT(t testing.TB, basePort int) *Agent {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	a, err := Start(ctx, Options{Dir: t.TempDir(), BasePort: basePort})
	if err != nil {
		t.Fatalf("consul: %v", err)
	}
	t.Cleanup(a.Stop)
	return a
}
