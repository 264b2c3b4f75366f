package integration

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/v6reg/v6reg/firewall"
	"github.com/v6reg/v6reg/internal/netns"
)

// agentBin is the v6reg binary built once for every test of the package.
var agentBin string

func TestMain(m *testing.M) {
	if os.Geteuid() == 0 {
		dir, err := os.MkdirTemp("", "v6reg-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		agentBin = filepath.Join(dir, "v6reg")
		build := exec.Command("go", "build", "-race", "-o", agentBin, "../cmd/v6reg")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "building v6reg:", err)
			os.Exit(1)
		}
		code := m.Run()
		os.RemoveAll(dir)
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// newE2E builds the whole topology with a running agent, or skips
// without root (CI runs as root, so there it runs).
func newE2E(t *testing.T) (*Env, context.Context) {
	t.Helper()
	e, ctx := newTestEnv(t, "v6e-", 5*time.Minute, agentBin)
	if err := e.StartAgent(ctx); err != nil {
		t.Fatal(err)
	}
	return e, ctx
}

// newTestEnv builds the topology for a test (the agent not started yet)
// in a fresh directory named prefix*, with a context of limit; the
// directory goes at the end, the agent's log is shown if the test failed.
// dockerArgs are added to dockerd's command line.
func newTestEnv(t *testing.T, prefix string, limit time.Duration, bin string, dockerArgs ...string) (*Env, context.Context) {
	t.Helper()
	netns.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	t.Cleanup(cancel)
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, "agent.log"))
			t.Logf("agent log:\n%s", tail(string(b), 80))
		}
		_ = os.RemoveAll(dir)
	})
	return NewEnv(t, dir, Options{AgentBin: bin, Logf: t.Logf, DockerArgs: dockerArgs}), ctx
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// programmed lists the container IDs that own elements in the node's
// table, read from the kernel.
func programmed(t *testing.T, e *Env) []string {
	t.Helper()
	conn, err := nftables.New(nftables.WithNetNSFd(e.Node.Fd()))
	if err != nil {
		t.Fatalf("nftables conn: %v", err)
	}
	fw := firewall.New(conn, e.Node.Fd(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	counters, err := fw.Counters(context.Background())
	if err != nil {
		t.Fatalf("reading the table: %v", err)
	}
	var ids []string
	for id := range counters {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// demoWorkloads are the three containers of the demo: a web server open to
// @office, a "database" open only to the web job, and a fetcher allowed
// https to @internet.
func demoWorkloads(t *testing.T, e *Env, ctx context.Context) (web, db, fetch Workload) { //nolint:revive // TODO(owner): ctx first; same order as waitOpen
	t.Helper()
	serve := func(port int, name string) string {
		return fmt.Sprintf("mkdir -p /www && echo %s > /www/index.html && exec httpd -f -p [::]:%d -h /www", name, port)
	}
	var err error
	web, err = e.Run(ctx, "demo-web", map[string]string{
		"v6reg.job":      "demo-web",
		"v6reg.ingress":  "tcp/8080 from @office",
		"v6reg.egress":   "tcp/5432 to job:demo-db",
		"v6reg.services": "web:8080:http",
	}, serve(8080, "web"))
	if err != nil {
		t.Fatal(err)
	}
	db, err = e.Run(ctx, "demo-db", map[string]string{
		"v6reg.job":      "demo-db",
		"v6reg.ingress":  "tcp/5432 from job:demo-web",
		"v6reg.services": "db:5432:tcp",
	}, serve(5432, "db"))
	if err != nil {
		t.Fatal(err)
	}
	fetch, err = e.Run(ctx, "demo-fetch", map[string]string{
		"v6reg.job":    "demo-fetch",
		"v6reg.egress": "tcp/443 to @internet",
	}, "exec sleep 3600")
	if err != nil {
		t.Fatal(err)
	}
	return web, db, fetch
}

// waitOpen waits until the agent reports every container open.
func waitOpen(t *testing.T, e *Env, ctx context.Context, ws ...Workload) { //nolint:revive // TODO(owner): ctx first, once faults_test.go can follow
	t.Helper()
	err := WaitFor(ctx, 30*time.Second, func() error {
		s, err := e.Status()
		if err != nil {
			return err
		}
		for _, w := range ws {
			found := false
			for _, c := range s.Containers {
				if c.ID != w.ID {
					continue
				}
				found = true
				if c.Closed {
					return fmt.Errorf("%s closed: %s %v", w.Name, c.Reason, c.Errors)
				}
			}
			if !found {
				return fmt.Errorf("%s not in status yet", w.Name)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

const (
	allowWait = 5 * time.Second
	denyWait  = 1500 * time.Millisecond
)

func TestEndToEnd(t *testing.T) {
	e, ctx := newE2E(t)
	stopInet443, err := ServeHTTP(e.Internet, InternetAddr, 443, "internet:443")
	if err != nil {
		t.Fatal(err)
	}
	defer stopInet443()
	stopInet80, err := ServeHTTP(e.Internet, InternetAddr, 80, "internet:80")
	if err != nil {
		t.Fatal(err)
	}
	defer stopInet80()

	web, db, fetch := demoWorkloads(t, e, ctx)
	for _, w := range []Workload{web, db, fetch} {
		if !NodePrefix.Contains(w.Addr) || w.Addr == NodePrefix.Addr().Next() {
			t.Fatalf("%s got %s, not a container address of %s", w.Name, w.Addr, NodePrefix)
		}
	}
	waitOpen(t, e, ctx, web, db, fetch)

	// Positive flows first: each proves the path works, so the denials
	// below are the firewall's doing, not a broken topology.
	t.Run("office to web:8080 passes", func(t *testing.T) {
		if err := WaitFor(ctx, allowWait, func() error { return HTTPGet(e.Office, web.Addr, 8080, time.Second) }); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("internet to web:8080 is dropped", func(t *testing.T) {
		err := HTTPGet(e.Internet, web.Addr, 8080, denyWait)
		if err == nil || !isTimeout(err) {
			t.Fatalf("want a timeout (dropped), got %v", err)
		}
	})
	t.Run("office to db:5432 is dropped", func(t *testing.T) {
		err := HTTPGet(e.Office, db.Addr, 5432, denyWait)
		if err == nil || !isTimeout(err) {
			t.Fatalf("want a timeout (dropped), got %v", err)
		}
	})
	t.Run("web to db:5432 passes (job peer)", func(t *testing.T) {
		if err := WaitFor(ctx, allowWait, func() error { return e.Fetch(ctx, web.ID, db.Addr, 5432, 2*time.Second) }); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("fetch to db:5432 is dropped", func(t *testing.T) {
		if err := e.Fetch(ctx, fetch.ID, db.Addr, 5432, 2*time.Second); err == nil {
			t.Fatal("fetch reached the database; its egress allows only tcp/443 to @internet")
		}
	})
	t.Run("fetch to internet:443 passes", func(t *testing.T) {
		if err := WaitFor(ctx, allowWait, func() error { return e.Fetch(ctx, fetch.ID, InternetAddr, 443, 2*time.Second) }); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("fetch to internet:80 is dropped", func(t *testing.T) {
		if err := e.Fetch(ctx, fetch.ID, InternetAddr, 80, 2*time.Second); err == nil {
			t.Fatal("fetch reached internet:80; only 443 is allowed")
		}
	})
	t.Run("web to internet:443 is dropped", func(t *testing.T) {
		if err := e.Fetch(ctx, web.ID, InternetAddr, 443, 2*time.Second); err == nil {
			t.Fatal("web reached the internet; its egress allows only the database")
		}
	})
	t.Run("consul DNS answers AAAA", func(t *testing.T) {
		for name, w := range map[string]Workload{"web.service.consul": web, "db.service.consul": db} {
			err := WaitFor(ctx, 20*time.Second, func() error {
				addrs, err := e.DigAAAA(ctx, name)
				if err != nil {
					return err
				}
				if !slices.Equal(addrs, []netip.Addr{w.Addr}) {
					return fmt.Errorf("AAAA %s = %v, want [%s]", name, addrs, w.Addr)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		}
	})
	t.Run("drops are counted per container", func(t *testing.T) {
		s, err := e.Status()
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range s.Containers {
			if c.ID == db.ID && (c.Drops == nil || c.Drops.IngressPackets == 0) {
				t.Fatalf("db shows no ingress drops after denied probes: %+v", c.Drops)
			}
		}
	})
	t.Run("stopping containers removes firewall elements and registrations", func(t *testing.T) {
		if got := programmed(t, e); !slices.Contains(got, web.ID) {
			t.Fatalf("web %s not programmed: %v", web.ID, got)
		}
		for _, w := range []Workload{web, db, fetch} {
			if err := e.Remove(ctx, w.ID); err != nil {
				t.Fatal(err)
			}
		}
		err := WaitFor(ctx, 15*time.Second, func() error {
			if got := programmed(t, e); len(got) != 0 {
				return fmt.Errorf("still programmed: %v", got)
			}
			svcs, err := e.ConsulServices()
			if err != nil {
				return err
			}
			for id := range svcs {
				if strings.HasPrefix(id, "v6reg-") {
					return fmt.Errorf("still registered: %s", id)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}

func TestAgentRestartLeavesNoOrphan(t *testing.T) {
	e, ctx := newE2E(t)
	web, db, fetch := demoWorkloads(t, e, ctx)
	waitOpen(t, e, ctx, web, db, fetch)
	if err := WaitFor(ctx, allowWait, func() error { return HTTPGet(e.Office, web.Addr, 8080, time.Second) }); err != nil {
		t.Fatal(err)
	}
	e.StopAgent(syscall.SIGKILL)
	// While the agent is down: the firewall stays (web still answers the
	// office), and a container goes away.
	if err := HTTPGet(e.Office, web.Addr, 8080, 2*time.Second); err != nil {
		t.Fatalf("web unreachable while the agent is down (the firewall must stay): %v", err)
	}
	if err := e.Remove(ctx, db.ID); err != nil {
		t.Fatal(err)
	}
	if err := e.StartAgent(ctx); err != nil {
		t.Fatal(err)
	}
	err := WaitFor(ctx, 15*time.Second, func() error {
		if got := programmed(t, e); slices.Contains(got, db.ID) || !slices.Contains(got, web.ID) {
			return fmt.Errorf("programmed %v: want web %s and not db %s", got, web.ID, db.ID)
		}
		svcs, err := e.ConsulServices()
		if err != nil {
			return err
		}
		for id, s := range svcs {
			if strings.Contains(id, db.ID[:12]) {
				return fmt.Errorf("orphan registration %s (%s)", id, s.Service)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := HTTPGet(e.Office, web.Addr, 8080, 2*time.Second); err != nil {
		t.Fatalf("web unreachable after the restart: %v", err)
	}
}

func isTimeout(err error) bool {
	return netns.ErrTimeout(err) || strings.Contains(err.Error(), "Client.Timeout") || strings.Contains(err.Error(), "deadline exceeded")
}
