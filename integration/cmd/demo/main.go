// Command demo is `make demo`: v6reg with a real dockerd and a real Consul
// in a topology of network namespaces, showing what passes, what is
// dropped, the status table and the AAAA answers. It leaves nothing
// behind, and `demo -clean` removes what a killed run left.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/v6reg/v6reg/integration"
)

// runner gives the topology what a test would: cleanups run in reverse,
// and a fatal error cleans up before exiting.
type runner struct {
	cleanups []func()
	done     bool
}

func (r *runner) Helper()          {}
func (r *runner) Cleanup(f func()) { r.cleanups = append(r.cleanups, f) }
func (r *runner) Skip(args ...any) { r.Fatalf("%s", fmt.Sprint(args...)) }
func (r *runner) Fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "\n%sdemo failed:%s %s\n", red, reset, fmt.Sprintf(format, args...))
	r.cleanup()
	os.Exit(1)
}

func (r *runner) cleanup() {
	if r.done {
		return
	}
	r.done = true
	step("cleaning up: agent, containers, dockerd, Consul, namespaces")
	for i := len(r.cleanups) - 1; i >= 0; i-- {
		r.cleanups[i]()
	}
}

var (
	green, red, bold, dim, reset = "\033[32m", "\033[31m", "\033[1m", "\033[2m", "\033[0m"
	passed, failed               int
)

func step(format string, args ...any) {
	fmt.Printf("\n%s==> %s%s\n", bold, fmt.Sprintf(format, args...), reset)
}

// expect prints one flow and whether it did what the policy says.
func expect(what string, wantPass bool, err error) {
	got := err == nil
	verdict := "dropped"
	if got {
		verdict = "passes"
	}
	mark, color := "✓", green
	if got != wantPass {
		mark, color = "✗", red
		failed++
	} else {
		passed++
	}
	want := "should be dropped"
	if wantPass {
		want = "should pass"
	}
	fmt.Printf("  %s%s%s %-58s %-8s %s(%s)%s\n", color, mark, reset, what, verdict, dim, want, reset)
	if got != wantPass && err != nil {
		fmt.Printf("      %s%v%s\n", dim, err, reset)
	}
}

func main() {
	clean := flag.Bool("clean", false, "remove what an interrupted demo left behind (namespaces, processes, sockets, temp dirs) and exit")
	bin := flag.String("agent", "bin/v6reg", "the v6reg binary to run (make build)")
	keep := flag.Bool("keep", false, "keep everything running after the checks until Ctrl-C, to explore")
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "demo: run as root (it creates network namespaces and runs dockerd)")
		os.Exit(2)
	}
	if fi, err := os.Stdout.Stat(); err == nil && fi.Mode()&os.ModeCharDevice == 0 {
		green, red, bold, dim, reset = "", "", "", "", ""
	}
	if *clean {
		cleanLeftovers()
		return
	}
	agentBin, err := filepath.Abs(*bin)
	if err != nil || !fileExists(agentBin) {
		fmt.Fprintf(os.Stderr, "demo: no agent binary at %s: run `make build` (make demo does)\n", *bin)
		os.Exit(2)
	}
	cleanLeftovers()
	r := &runner{}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sigs
		r.cleanup()
		os.Exit(130)
	}()
	os.Exit(demo(r, agentBin, *keep, sigs))
}

func demo(r *runner, agentBin string, keep bool, sigs chan os.Signal) int {
	defer r.cleanup()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	dir, err := os.MkdirTemp("", fmt.Sprintf("v6demo-%d-", os.Getpid()))
	if err != nil {
		r.Fatalf("%v", err)
	}
	r.Cleanup(func() { _ = os.RemoveAll(dir) }) // best effort: a temp dir left behind is harmless

	step("building the topology")
	fmt.Printf(`  router ─┬─ node      %s routed here; dockerd, Consul (dev) and v6reg run in it
          ├─ office    %s (@office: allowed to reach the web server)
          └─ internet  %s (outside the operator's prefixes: @internet)
`, integration.NodePrefix, integration.OfficeAddr, integration.InternetAddr)
	e := integration.NewEnv(r, dir, integration.Options{AgentBin: agentBin})
	fmt.Printf("  dockerd %s, Consul dev agent, busybox test image imported (nothing pulled)\n", dockerVersion(ctx, e))

	step("starting v6reg agent (config: %s)", e.Config)
	if err := e.StartAgent(ctx); err != nil {
		r.Fatalf("%v", err)
	}
	fmt.Printf("  agent ready: IPAM driver answering Docker, network %q created, table inet v6reg programmed\n", integration.NetworkName)

	for _, port := range []int{443, 80} {
		stop, err := integration.ServeHTTP(e.Internet, integration.InternetAddr, port, fmt.Sprintf("internet:%d", port))
		if err != nil {
			r.Fatalf("%v", err)
		}
		r.Cleanup(stop)
	}

	step("starting three containers with v6reg.* labels")
	serve := func(port int, name string) string {
		return fmt.Sprintf("mkdir -p /www && echo %s > /www/index.html && exec httpd -f -p [::]:%d -h /www", name, port)
	}
	type spec struct {
		name   string
		labels map[string]string
		cmd    string
	}
	specs := []spec{
		{"demo-web", map[string]string{"v6reg.job": "demo-web", "v6reg.ingress": "tcp/8080 from @office", "v6reg.egress": "tcp/5432 to job:demo-db", "v6reg.services": "web:8080:http"}, serve(8080, "web")},
		{"demo-db", map[string]string{"v6reg.job": "demo-db", "v6reg.ingress": "tcp/5432 from job:demo-web", "v6reg.services": "db:5432:tcp"}, serve(5432, "db")},
		{"demo-fetch", map[string]string{"v6reg.job": "demo-fetch", "v6reg.egress": "tcp/443 to @internet"}, "exec sleep 3600"},
	}
	ws := map[string]integration.Workload{}
	for _, s := range specs {
		w, err := e.Run(ctx, s.name, s.labels, s.cmd)
		if err != nil {
			r.Fatalf("%v", err)
		}
		ws[s.name] = w
		fmt.Printf("  %-10s %-38s", s.name, w.Addr)
		for _, k := range []string{"v6reg.ingress", "v6reg.egress", "v6reg.services"} {
			if v := s.labels[k]; v != "" {
				fmt.Printf(" %s%s=%q%s", dim, strings.TrimPrefix(k, "v6reg."), v, reset)
			}
		}
		fmt.Println()
	}
	web, db, fetch := ws["demo-web"], ws["demo-db"], ws["demo-fetch"]
	if err := e.WaitOpen(ctx, 3, 30*time.Second); err != nil {
		r.Fatalf("containers not programmed: %v", err)
	}

	step("traffic: what the policies allow passes, everything else on the /80 is dropped")
	const deny = 1500 * time.Millisecond
	allow := func(f func() error) error {
		return integration.WaitFor(ctx, 5*time.Second, f)
	}
	expect("office   -> web:8080  (tcp/8080 from @office)", true, allow(func() error { return integration.HTTPGet(e.Office, web.Addr, 8080, time.Second) }))
	expect("internet -> web:8080  (not @office)", false, integration.HTTPGet(e.Internet, web.Addr, 8080, deny))
	expect("office   -> db:5432   (db only takes job:demo-web)", false, integration.HTTPGet(e.Office, db.Addr, 5432, deny))
	expect("web      -> db:5432   (job peer, both sides allow)", true, allow(func() error { return e.Fetch(ctx, web.ID, db.Addr, 5432, 2*time.Second) }))
	expect("fetch    -> db:5432   (fetch's egress is 443 only)", false, e.Fetch(ctx, fetch.ID, db.Addr, 5432, 2*time.Second))
	expect("fetch    -> internet:443 (tcp/443 to @internet)", true, allow(func() error { return e.Fetch(ctx, fetch.ID, integration.InternetAddr, 443, 2*time.Second) }))
	expect("fetch    -> internet:80", false, e.Fetch(ctx, fetch.ID, integration.InternetAddr, 80, 2*time.Second))
	expect("web      -> internet:443 (web has no internet egress)", false, e.Fetch(ctx, web.ID, integration.InternetAddr, 443, 2*time.Second))
	stray := netip.MustParseAddr("2001:db8:1:2:3:dead:beef:1")
	expect("office   -> "+stray.String()+":80 (no container)", false, integration.HTTPGet(e.Office, stray, 80, deny))

	step("Consul DNS: AAAA answers straight to the containers")
	for _, q := range []struct {
		name string
		want netip.Addr
	}{{"web.service.consul", web.Addr}, {"db.service.consul", db.Addr}} {
		var got []netip.Addr
		err := integration.WaitFor(ctx, 20*time.Second, func() error {
			var err error
			got, err = e.DigAAAA(ctx, q.name)
			if err == nil && (len(got) != 1 || got[0] != q.want) {
				err = fmt.Errorf("got %v", got)
			}
			return err
		})
		fmt.Printf("  dig AAAA %-20s -> %v\n", q.name, got)
		expectEq(q.name+" answers the container's address", err)
	}

	if tbin := "/var/cache/v6reg/traefik-3.6.12/traefik"; fileExists(tbin) {
		step("Traefik (Consul Catalog provider) routes Host(`demo-web.demo.example`) to the web container")
		cmd := exec.Command(tbin, "--entryPoints.web.address=:8088",
			"--providers.consulCatalog.endpoint.address="+e.Consul.HTTPAddr,
			"--providers.consulCatalog.exposedByDefault=false", "--providers.consulCatalog.refreshInterval=1s")
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := e.Node.Start(cmd); err != nil {
			r.Fatalf("starting traefik: %v", err)
		}
		r.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		c := e.Office.HTTPClient()
		c.Timeout = 2 * time.Second
		var answer string
		err := integration.WaitFor(ctx, 45*time.Second, func() error {
			req, _ := http.NewRequest("GET", "http://[2001:db8:ff:1::2]:8088/", nil)
			req.Host = "demo-web.demo.example"
			resp, err := c.Do(req)
			if err != nil {
				return err
			}
			defer func() { _ = resp.Body.Close() }() // read in full below
			b, _ := io.ReadAll(resp.Body)
			answer = strings.TrimSpace(string(b))
			if resp.StatusCode != http.StatusOK || answer != "web" {
				return fmt.Errorf("HTTP %d %q", resp.StatusCode, answer)
			}
			return nil
		})
		fmt.Printf("  office -> traefik [2001:db8:ff:1::2]:8088 Host: demo-web.demo.example -> %q\n", answer)
		expectEq("Traefik routes to the container's IPv6 address", err)
	}

	step("v6reg status")
	runCLI(agentBin, "status", "-socket", e.APISocket)
	step("v6reg explain %s from %s port 8080/tcp", web.Addr, integration.InternetAddr)
	runCLI(agentBin, "explain", "-socket", e.APISocket, web.Addr.String(), "from", integration.InternetAddr.String(), "port", "8080/tcp")

	step("removing the containers: their firewall elements and registrations go too")
	for _, w := range []integration.Workload{web, db, fetch} {
		if err := e.Remove(ctx, w.ID); err != nil {
			r.Fatalf("%v", err)
		}
	}
	err = integration.WaitFor(ctx, 15*time.Second, func() error {
		svcs, err := e.ConsulServices()
		if err != nil {
			return err
		}
		for id := range svcs {
			if strings.HasPrefix(id, "v6reg-") {
				return fmt.Errorf("%s still registered", id)
			}
		}
		s, err := e.Status()
		if err != nil {
			return err
		}
		if len(s.Containers) != 0 {
			return fmt.Errorf("%d containers still managed", len(s.Containers))
		}
		return nil
	})
	expectEq("no registration and no managed container left", err)

	if keep {
		step("everything is running: agent socket %s; Ctrl-C to clean up", e.APISocket)
		<-sigs
	}
	fmt.Printf("\n%s%d checks passed, %d failed%s\n", bold, passed, failed, reset)
	if failed > 0 {
		fmt.Printf("agent log (last lines):\n%s\n", e.AgentLogTail(30))
		return 1
	}
	return 0
}

func expectEq(what string, err error) {
	if err != nil {
		failed++
		fmt.Printf("  %s✗%s %s: %v\n", red, reset, what, err)
		return
	}
	passed++
	fmt.Printf("  %s✓%s %s\n", green, reset, what)
}

func runCLI(bin string, args ...string) {
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		failed++
		fmt.Printf("  %s✗%s v6reg %s: %v\n", red, reset, args[0], err)
	}
}

func dockerVersion(ctx context.Context, e *integration.Env) string {
	v, err := e.Docker.Client.ServerVersion(ctx)
	if err != nil {
		return "?"
	}
	return v.Version
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// cleanLeftovers removes what a demo or test run killed with -9 left:
// processes in its namespaces (dockerd, Consul, the agent), the namespaces,
// plugin sockets and temp dirs. Only runs whose pid is gone are touched.
func cleanLeftovers() {
	entries, _ := os.ReadDir("/run/netns")
	for _, ent := range entries {
		pid, ok := ownerPid(ent.Name(), "v6t-")
		if !ok || alive(pid) {
			continue
		}
		path := filepath.Join("/run/netns", ent.Name())
		killIn(path)
		_ = syscall.Unmount(path, syscall.MNT_DETACH)
		_ = os.Remove(path)
		fmt.Printf("removed leftover namespace %s\n", ent.Name())
	}
	socks, _ := filepath.Glob("/run/docker/plugins/v6reg-e2e-*.sock")
	for _, s := range socks {
		pid, err := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(filepath.Base(s), "v6reg-e2e-"), ".sock"))
		if err == nil && !alive(pid) {
			_ = os.Remove(s)
		}
	}
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "v6demo-*"))
	for _, d := range dirs {
		pid, ok := ownerPid(filepath.Base(d), "v6demo-")
		if !ok || alive(pid) {
			continue
		}
		unmountBelow(d)
		if err := os.RemoveAll(d); err == nil {
			fmt.Printf("removed leftover %s\n", d)
		}
	}
}

// ownerPid reads the pid out of names like v6t-node-1234-2 (the netns
// helper's) and v6demo-1234-567 (ours): the field before the last.
func ownerPid(name, prefix string) (int, bool) {
	if !strings.HasPrefix(name, prefix) {
		return 0, false
	}
	parts := strings.Split(name, "-")
	if len(parts) < 3 {
		return 0, false
	}
	pid, err := strconv.Atoi(parts[len(parts)-2])
	return pid, err == nil
}

func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// killIn kills every process whose network namespace is the one at path.
func killIn(path string) {
	var want syscall.Stat_t
	if syscall.Stat(path, &want) != nil {
		return
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/ns/net")
	for _, p := range procs {
		var st syscall.Stat_t
		if syscall.Stat(p, &st) != nil || st.Ino != want.Ino || st.Dev != want.Dev {
			continue
		}
		if pid, err := strconv.Atoi(strings.Split(p, "/")[2]); err == nil {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	time.Sleep(200 * time.Millisecond)
}

func unmountBelow(dir string) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	var mounts []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			mounts = append(mounts, f[4])
		}
	}
	for i := len(mounts) - 1; i >= 0; i-- {
		_ = syscall.Unmount(mounts[i], syscall.MNT_DETACH)
	}
}
