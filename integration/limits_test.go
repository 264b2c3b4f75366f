package integration

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
)

// TestLimitsRealConsulAndDockerd: with a real dockerd, Consul and agent,
// 300 service: peers are watched on a budget of 16 Consul connections
// (counted as real sockets of the agent's process), a change to a peer
// without a query of its own reaches the kernel in seconds (traffic it
// admits passes), and containers over a per-container limit are closed
// with the reason in status and in their critical Consul check while one
// under the limit works.
func TestLimitsRealConsulAndDockerd(t *testing.T) {
	const budget = 16
	e, ctx := newTestEnv(t, "v6lim-", 6*time.Minute, agentBin)
	base, err := os.ReadFile(e.Config)
	if err != nil {
		t.Fatal(err)
	}
	extra := fmt.Sprintf("\nlimits {\n  container_elements = 500\n  container_peers = 160\n  node_peer_sets = 400\n  consul_watch_connections = %d\n}\n", budget)
	if err := os.WriteFile(e.Config, append(base, extra...), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := e.StartAgent(ctx); err != nil {
		t.Fatal(err)
	}
	services := func(from, to int) string {
		var s []string
		for i := from; i < to; i++ {
			s = append(s, fmt.Sprintf("service:s%03d", i))
		}
		return strings.Join(s, ", ")
	}
	serve := "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p [::]:8080 -h /www"
	fine, err := e.Run(ctx, "fine", map[string]string{"v6reg.ingress": "tcp/8000-8099 from @office"}, serve)
	if err != nil {
		t.Fatal(err)
	}
	peersA, err := e.Run(ctx, "peers-a", map[string]string{"v6reg.egress": "tcp/8080 to " + services(0, 150)}, "exec sleep 3600")
	if err != nil {
		t.Fatal(err)
	}
	peersB, err := e.Run(ctx, "peers-b", map[string]string{"v6reg.job": "p-peers-b", "v6reg.egress": "tcp/8080 to " + services(150, 300)}, "exec sleep 3600")
	if err != nil {
		t.Fatal(err)
	}
	target, err := e.Run(ctx, "target", map[string]string{"v6reg.ingress": "tcp/8080 from job:p-peers-b"}, serve)
	if err != nil {
		t.Fatal(err)
	}
	wide, err := e.Run(ctx, "wide", map[string]string{"v6reg.job": "p-wide", "v6reg.ingress": "tcp/8000-8999 from @office"}, "exec sleep 3600")
	if err != nil {
		t.Fatal(err)
	}
	many, err := e.Run(ctx, "many", map[string]string{"v6reg.egress": "tcp/8080 to " + services(400, 561)}, "exec sleep 3600")
	if err != nil {
		t.Fatal(err)
	}
	waitOpen(t, e, ctx, fine, peersA, peersB, target)

	t.Run("over a per-container limit: closed, reason in status and Consul", func(t *testing.T) {
		for _, tc := range []struct {
			w    Workload
			want string
		}{
			{wide, "firewall elements; the limit is 500 per container (limits.container_elements)"},
			{many, "the policy names 161 distinct service: and job: peers; the limit is 160 per container (limits.container_peers)"},
		} {
			err := WaitFor(ctx, 20*time.Second, func() error {
				s, err := e.Status()
				if err != nil {
					return err
				}
				for _, c := range s.Containers {
					if c.ID == tc.w.ID {
						if !c.Closed || !strings.Contains(strings.Join(c.Errors, "\n"), tc.want) {
							return fmt.Errorf("%s: closed %v errors %q", tc.w.Name, c.Closed, c.Errors)
						}
						return nil
					}
				}
				return fmt.Errorf("%s not in status", tc.w.Name)
			})
			if err != nil {
				t.Fatal(err)
			}
		}
		cc, err := consulapi.NewClient(&consulapi.Config{Address: e.Consul.HTTPAddr, HttpClient: e.Node.HTTPClient()})
		if err != nil {
			t.Fatal(err)
		}
		err = WaitFor(ctx, 20*time.Second, func() error {
			checks, err := cc.Agent().Checks()
			if err != nil {
				return err
			}
			for _, c := range checks {
				if c.Status == consulapi.HealthCritical && strings.Contains(c.Notes, "limits.container_elements") && strings.Contains(c.ServiceID, shortID(wide.ID)) {
					return nil
				}
			}
			return fmt.Errorf("no critical check naming limits.container_elements for %s", shortID(wide.ID))
		})
		if err != nil {
			t.Fatal(err)
		}
		// The one under the limit works: its rules are programmed.
		if err := HTTPGet(e.Office, fine.Addr, 8080, 3*time.Second); err != nil {
			t.Errorf("fine (under the limit, tcp/8000-8099 from @office) does not answer the office: %v", err)
		}
		m, err := e.Metrics()
		if err != nil {
			t.Fatal(err)
		}
		if m[`v6reg_limit_refusals{limit="container_elements"}`] != 1 || m[`v6reg_limit_refusals{limit="container_peers"}`] != 1 {
			t.Errorf("refusal metrics: %v %v", m[`v6reg_limit_refusals{limit="container_elements"}`], m[`v6reg_limit_refusals{limit="container_peers"}`])
		}
	})

	t.Run("300 peers on a budget of 16 connections", func(t *testing.T) {
		pid, err := e.AgentPID()
		if err != nil {
			t.Fatal(err)
		}
		m, err := e.Metrics()
		if err != nil {
			t.Fatal(err)
		}
		ded, shared := m[`v6reg_peer_watches{mode="dedicated"}`], m[`v6reg_peer_watches{mode="shared"}`]
		t.Logf("peer watches: %v dedicated, %v shared", ded, shared)
		if ded+shared != 301 || ded != 12 { // 300 services and job:p-peers-b; 16 = 12 + catalog + 3 workers
			t.Errorf("watches: %v dedicated + %v shared, want 12 + 289", ded, shared)
		}
		// Sample the agent's sockets to Consul while the positive control
		// below makes the shared keys refresh.
		stop := make(chan struct{})
		peak := make(chan int, 1)
		go func() {
			most := 0
			for {
				select {
				case <-stop:
					peak <- most
					return
				case <-time.After(20 * time.Millisecond):
				}
				if n, err := consulSockets(pid, ConsulHTTPPort); err == nil {
					most = max(most, n)
				}
			}
		}()
		if err := e.Fetch(ctx, peersB.ID, target.Addr, 8080, 2*time.Second); err == nil {
			t.Fatal("peers-b reached target before any s299 existed (negative control)")
		}
		cc, err := consulapi.NewClient(&consulapi.Config{Address: e.Consul.HTTPAddr, HttpClient: e.Node.HTTPClient()})
		if err != nil {
			t.Fatal(err)
		}
		// Another node's v6reg registers s299 at target's address, exactly
		// as that v6reg would.
		_, err = cc.Catalog().Register(&consulapi.CatalogRegistration{Node: "n2", Address: "192.0.2.2", Service: &consulapi.AgentService{
			ID: "v6reg-n2-aaaaaaaaaaaa-s299-8080", Service: "s299", Address: target.Addr.String(), Port: 8080,
			Meta: map[string]string{"v6reg_node": "n2", "v6reg_hash": "0123456789abcdef", "v6reg_container": "aaaaaaaaaaaa",
				"v6reg_prefix": NodePrefix.String(), "nomad_namespace": "default"}}}, (&consulapi.WriteOptions{}).WithContext(ctx))
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if err := WaitFor(ctx, 15*time.Second, func() error { return e.Fetch(ctx, peersB.ID, target.Addr, 8080, time.Second) }); err != nil {
			t.Fatalf("a change to a shared peer (s299) did not reach the kernel: %v", err)
		}
		t.Logf("s299 registered -> peers-b reaches target in %v", time.Since(start).Round(10*time.Millisecond))
		time.Sleep(2 * time.Second)
		close(stop)
		most := <-peak
		now, _ := consulSockets(pid, ConsulHTTPPort)
		m, _ = e.Metrics()
		t.Logf("agent's established TCP connections to Consul: peak %d over the test, now %d; watch client reports %v; budget %d",
			most, now, m["v6reg_consul_watch_connections"], budget)
		// The watches hold at most the budget; the agent's other client
		// (registration, status) opens one short connection per call.
		if most > budget+2 {
			t.Errorf("peak %d connections to Consul, budget %d (+2 for the registration client)", most, budget)
		}
		if most < 5 {
			t.Errorf("peak %d connections: the socket count does not see the watches", most)
		}
		if m["v6reg_consul_watch_connections"] > budget {
			t.Errorf("watch connections %v > %d", m["v6reg_consul_watch_connections"], budget)
		}
	})
}

// consulSockets counts the established TCP connections of process pid to
// port, from /proc (the socket inodes of its descriptors, the connection
// table of its network namespace).
func consulSockets(pid, port int) (int, error) {
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return 0, err
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		l, err := os.Readlink(filepath.Join(fmt.Sprintf("/proc/%d/fd", pid), fd.Name()))
		if err == nil && strings.HasPrefix(l, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	n := 0
	for _, table := range []string{"tcp", "tcp6"} {
		f, err := os.Open(fmt.Sprintf("/proc/%d/net/%s", pid, table))
		if err != nil {
			return 0, err
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 10 || fields[3] != "01" { // 01: ESTABLISHED
				continue
			}
			_, rp, ok := strings.Cut(fields[2], ":")
			p, err := strconv.ParseUint(rp, 16, 16)
			if ok && err == nil && int(p) == port && inodes[fields[9]] {
				n++
			}
		}
		_ = f.Close()
	}
	return n, nil
}

// TestLimitsNodeRealDockerd: the node limits with a real dockerd and
// Consul. A container that would push the node over limits.node_elements
// or limits.node_peer_sets waits, closed and saying so, while the older
// one keeps working; it opens by itself once room is made. A peer set
// larger than limits.peer_set_addresses is cut to its oldest
// registrations.
func TestLimitsNodeRealDockerd(t *testing.T) {
	e, ctx := newTestEnv(t, "v6limn-", 6*time.Minute, agentBin)
	base, err := os.ReadFile(e.Config)
	if err != nil {
		t.Fatal(err)
	}
	extra := "\nlimits {\n  container_elements = 300\n  node_elements = 400\n  container_peers = 2\n  node_peer_sets = 2\n  peer_set_addresses = 3\n}\n"
	if err := os.WriteFile(e.Config, append(base, extra...), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := e.StartAgent(ctx); err != nil {
		t.Fatal(err)
	}
	serve := "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p [::]:8100 -h /www"
	// About 215 elements each: 200 ports, the fixed ones, @office.
	older, err := e.Run(ctx, "older", map[string]string{"v6reg.ingress": "tcp/8000-8199 from @office"}, serve)
	if err != nil {
		t.Fatal(err)
	}
	waitOpen(t, e, ctx, older)
	time.Sleep(1100 * time.Millisecond) // Docker's creation times are whole seconds
	newer, err := e.Run(ctx, "newer", map[string]string{"v6reg.ingress": "tcp/8000-8199 from @office"}, serve)
	if err != nil {
		t.Fatal(err)
	}
	status := func(w Workload) (closed bool, errs string, err error) {
		s, err := e.Status()
		if err != nil {
			return false, "", err
		}
		for _, c := range s.Containers {
			if c.ID == w.ID {
				return c.Closed, strings.Join(c.Errors, "\n"), nil
			}
		}
		return false, "", fmt.Errorf("%s not in status", w.Name)
	}
	waitRefused := func(w Workload, want string) {
		t.Helper()
		err := WaitFor(ctx, 20*time.Second, func() error {
			closed, errs, err := status(w)
			if err != nil {
				return err
			}
			if !closed || !strings.Contains(errs, want) {
				return fmt.Errorf("%s: closed %v errors %q", w.Name, closed, errs)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	waitRefused(newer, "the node is full: this container adds")
	waitRefused(newer, "the limit is 400 per node (limits.node_elements)")
	if err := HTTPGet(e.Office, older.Addr, 8100, 3*time.Second); err != nil {
		t.Errorf("the older container, in force, stopped working: %v", err)
	}
	if err := HTTPGet(e.Office, newer.Addr, 8100, 2*time.Second); err == nil {
		t.Errorf("the newer container, over the node limit, answers the office")
	}
	// Room made: the waiting container opens by itself.
	if err := e.Remove(ctx, older.ID); err != nil {
		t.Fatal(err)
	}
	waitOpen(t, e, ctx, newer)
	if err := WaitFor(ctx, 10*time.Second, func() error { return HTTPGet(e.Office, newer.Addr, 8100, 2*time.Second) }); err != nil {
		t.Errorf("the newer container did not open once the older was gone: %v", err)
	}

	// Peer sets: two in use; a third, new one is refused.
	p1, err := e.Run(ctx, "p1", map[string]string{"v6reg.egress": "tcp/443 to service:a, service:b"}, "exec sleep 3600")
	if err != nil {
		t.Fatal(err)
	}
	waitOpen(t, e, ctx, p1)
	time.Sleep(1100 * time.Millisecond)
	p2, err := e.Run(ctx, "p2", map[string]string{"v6reg.egress": "tcp/443 to service:a, service:c"}, "exec sleep 3600")
	if err != nil {
		t.Fatal(err)
	}
	waitRefused(p2, "names 1 service:/job: peers not yet watched here, the node's containers 2; the limit is 2 per node (limits.node_peer_sets)")

	// Five v6reg registrations of a: the set keeps the 3 registered first.
	cc, err := consulapi.NewClient(&consulapi.Config{Address: e.Consul.HTTPAddr, HttpClient: e.Node.HTTPClient()})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		_, err = cc.Catalog().Register(&consulapi.CatalogRegistration{Node: "n2", Address: "192.0.2.2", Service: &consulapi.AgentService{
			ID: fmt.Sprintf("v6reg-n2-aaaaaaaaaaa%d-a-443", i), Service: "a", Address: fmt.Sprintf("2001:db8:1:2:3:0:9:%x", 0x20-i), Port: 443,
			Meta: map[string]string{"v6reg_node": "n2", "v6reg_hash": "0123456789abcdef", "v6reg_container": fmt.Sprintf("aaaaaaaaaaa%d", i),
				"v6reg_prefix": NodePrefix.String(), "nomad_namespace": "default"}}}, (&consulapi.WriteOptions{}).WithContext(ctx))
		if err != nil {
			t.Fatal(err)
		}
	}
	err = WaitFor(ctx, 15*time.Second, func() error {
		m, err := e.Metrics()
		if err != nil {
			return err
		}
		if m["v6reg_peer_sets_truncated"] != 1 {
			return fmt.Errorf("v6reg_peer_sets_truncated = %v", m["v6reg_peer_sets_truncated"])
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Status names the cut set, its counts and the container using it.
	s, err := e.Status()
	if err != nil {
		t.Fatal(err)
	}
	if c := s.PeerSetsCut; len(c) != 1 || c[0].Peer != "service:default/a" || c[0].Registrations != 5 || c[0].Kept != 3 || c[0].Limit != 3 ||
		!slices.Contains(c[0].Containers, p1.ID) {
		t.Errorf("status peer_sets_cut = %+v, want service:default/a 5 in Consul, 3 kept, limit 3, used by p1", c)
	}
	// In the kernel: the first three registered (::1e to ::20, one range
	// in set lists), not the later ones with lower addresses.
	err = WaitFor(ctx, 10*time.Second, func() error {
		out, err := exec.CommandContext(ctx, "ip", "netns", "exec", e.Node.Name, "nft", "list", "set", "inet", "v6reg", "lists").CombinedOutput()
		if err != nil {
			return fmt.Errorf("nft: %w: %s", err, out)
		}
		if !strings.Contains(string(out), "2001:db8:1:2:3:0:9:1e-2001:db8:1:2:3:0:9:20") {
			return fmt.Errorf("set lists lacks the range ::1e-::20 (the first 3 registered):\n%s", out)
		}
		for _, a := range []string{"2001:db8:1:2:3:0:9:1d", "2001:db8:1:2:3:0:9:1c"} {
			if strings.Contains(string(out), a) {
				return fmt.Errorf("set lists holds %s, registered after the first 3 (limits.peer_set_addresses = 3):\n%s", a, out)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
