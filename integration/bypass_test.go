package integration

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/v6reg/v6reg/firewall"
	"github.com/v6reg/v6reg/internal/netns"
)

// The bypass matrix (issue: default deny on every path): every source a
// container's neighbours have × every destination a container can be
// reached at or reach × tcp, udp and icmp, with a real dockerd, Consul
// and agent. The matrix runs twice: first with the agent's firewall off
// (each cell that passes there has a path; a cell that fails there is
// "n/a": no route, so it proves nothing), then with it on, where each
// cell must match the verdict its policies give. Every cell that must
// pass is a positive control. The table is printed and written to
// BYPASS.md.

// matrixPort is what every listener of the matrix serves (tcp and udp).
const matrixPort = 8080

type matrixDst struct {
	name string
	addr func() netip.Addr
	// linkLocal: reached with a zone (the container's eth0, the node's
	// bridge).
	linkLocal bool
}

type matrixSrc struct {
	name string
	// probe runs one probe; nil means the flow worked.
	probe func(ctx context.Context, proto string, dst netip.Addr, linkLocal bool) error
	// can says whether the source has a path to dst at all (an outside
	// host has no IPv4 or no link to the bridge).
	can func(d matrixDst) bool
}

type matrixCell struct {
	src, dst, proto string
	want            bool // pass
	base, got       error
	baseRan         bool
}

func TestBypassMatrix(t *testing.T) {
	row := recordFault(t, "14", "bypass matrix (default deny on every path)",
		"sources: a co-tenant with no policy, a co-tenant whose egress is any to any, the node, an office (allowed) and an internet host over IPv6, an internet host over IPv4, an attacker with NET_ADMIN forging sources; destinations: the victim's /80, link-local and IPv4 addresses, the gateway's /80, link-local and IPv4 addresses, the node's uplink (IPv6, IPv4), all-nodes multicast, the subnet-router anycast, the office and internet hosts (IPv6, IPv4); tcp, udp and icmp",
		"each cell as the policies say, every allowed cell a positive control; cells without a path with the firewall off are n/a; forged datagrams counted at the receiver")
	e, ctx := newTestEnv(t, "v6m-", 10*time.Minute, agentBin)
	base, err := os.ReadFile(e.Config)
	if err != nil {
		t.Fatal(err)
	}
	// The open namespace lets a co-tenant ask for any to any; the node
	// offers udp/53 only, so the node's listener on 8080 is closed.
	extra := `
namespace "open" {
  allow_any      = true
  allow_internet = true
}
`
	writeConfig := func(firewall bool) {
		t.Helper()
		fw := fmt.Sprintf("\nfirewall {\n  enabled = %v\n  node_ports = [\"udp/53\"]\n}\n", firewall)
		if err := os.WriteFile(e.Config, append(append([]byte{}, base...), extra+fw...), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeConfig(false)
	if err := e.StartAgent(ctx); err != nil {
		t.Fatal(err)
	}
	// With its firewall off the agent leaves an engine's own filtering
	// alone (Docker 27+ drops routed IPv6 to the network); the baseline
	// wants every path open, so the test opens Docker's, as the agent
	// does with its firewall on (nothing to do on 20.10).
	openDockerPath(t, e)
	serve := "/bin/v6probe serve 8080"
	victim, err := e.Run(ctx, "victim", map[string]string{
		"v6reg.ingress": "tcp/8080 from @office; udp/8080 from @office; icmp from @office"}, serve)
	if err != nil {
		t.Fatal(err)
	}
	// The co-tenants are sources only: no listener, so that a multicast
	// they send is not echoed by themselves.
	quiet, err := e.Run(ctx, "quiet", nil, "sleep 3600")
	if err != nil {
		t.Fatal(err)
	}
	open, err := e.Run(ctx, "open", map[string]string{"v6reg.namespace": "open", "v6reg.egress": "any to any"}, "sleep 3600")
	if err != nil {
		t.Fatal(err)
	}
	attacker, err := e.RunWithCaps(ctx, "attacker", nil, "sleep 3600", "NET_ADMIN")
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []Workload{victim, quiet, open, attacker} {
		if !w.Addr4.IsValid() {
			t.Fatalf("%s has no IPv4 address on the network; the IPv4 cells need one", w.Name)
		}
	}
	victimLL := containerLinkLocal(ctx, t, e, victim.ID)
	gwLL := nodeLinkLocal(t, e.Node, "v6e2e0")
	gw := NodePrefix.Addr().Next()
	gw4 := Network4.Addr().Next()
	for _, ns := range []*netns.NS{e.Node, e.Office, e.Internet} {
		ns.ServeTCP(t, netip.IPv6Unspecified(), matrixPort)
		ns.ServeUDP(t, netip.IPv6Unspecified(), matrixPort)
	}
	dsts := []matrixDst{
		{"victim /80", func() netip.Addr { return victim.Addr }, false},
		{"victim link-local", func() netip.Addr { return victimLL }, true},
		{"victim IPv4", func() netip.Addr { return victim.Addr4 }, false},
		{"gateway /80", func() netip.Addr { return gw }, false},
		{"gateway link-local", func() netip.Addr { return gwLL }, true},
		{"gateway IPv4", func() netip.Addr { return gw4 }, false},
		{"node uplink", func() netip.Addr { return transitNode }, false},
		{"node uplink IPv4", func() netip.Addr { return NodeUp4 }, false},
		{"all-nodes ff02::1", func() netip.Addr { return netip.MustParseAddr("ff02::1") }, true},
		{"subnet-router anycast", func() netip.Addr { return NodePrefix.Addr() }, false},
		{"office", func() netip.Addr { return OfficeAddr }, false},
		{"internet", func() netip.Addr { return InternetAddr }, false},
		{"internet IPv4", func() netip.Addr { return Internet4 }, false},
	}
	inContainer := func(w Workload) func(context.Context, string, netip.Addr, bool) error {
		return func(ctx context.Context, proto string, dst netip.Addr, ll bool) error {
			a := dst.String()
			if ll {
				a += "%eth0"
			}
			var cmd []string
			switch proto {
			case "icmp":
				cmd = []string{"ping", "-c", "1", "-W", "2", a}
			default:
				cmd = []string{"/bin/v6probe", "dial", proto, a, fmt.Sprint(matrixPort), "2s"}
			}
			code, out, err := e.Exec(ctx, w.ID, cmd...)
			if err != nil {
				return err
			}
			if code != 0 {
				return fmt.Errorf("exit %d: %s", code, strings.TrimSpace(out))
			}
			return nil
		}
	}
	inNS := func(ns *netns.NS, zone string) func(context.Context, string, netip.Addr, bool) error {
		return func(_ context.Context, proto string, dst netip.Addr, ll bool) error {
			if ll {
				dst = dst.WithZone(zone)
			}
			switch proto {
			case "tcp":
				return ns.DialTCP(netip.Addr{}, dst, matrixPort, 2*time.Second)
			case "udp":
				return ns.EchoUDP(dst, matrixPort, 2*time.Second)
			}
			return ns.Ping(dst, 2*time.Second)
		}
	}
	bridgeIdx := fmt.Sprint(linkIndex(t, e.Node, "v6e2e0"))
	containerCan := func(matrixDst) bool { return true }
	// The node's anycast address is looked at from containers only: from
	// the node or outside it is the node's own firewall's business.
	outside6 := func(d matrixDst) bool { return !d.linkLocal && d.addr().Is6() && d.name != "subnet-router anycast" }
	outside4 := func(d matrixDst) bool { return !d.linkLocal && d.addr().Is4() }
	srcs := []matrixSrc{
		{"co-tenant, no policy", inContainer(quiet), containerCan},
		{"co-tenant, egress any to any", inContainer(open), containerCan},
		{"node", inNS(e.Node, bridgeIdx), func(d matrixDst) bool {
			return d.name != "all-nodes ff02::1" && d.name != "subnet-router anycast"
		}},
		{"office", inNS(e.Office, ""), outside6},
		{"internet", inNS(e.Internet, ""), outside6},
		{"internet IPv4", inNS(e.Internet, ""), outside4},
	}
	// want is the verdict the policies give.
	// (The verdicts do not depend on the protocol: the victim admits
	// tcp, udp and icmp alike.)
	want := func(src, dst string) bool {
		if dst == "subnet-router anycast" {
			return false // dropped from containers; the node answers nobody on it (n/a)
		}
		node := map[string]bool{"gateway /80": true, "gateway link-local": true, "gateway IPv4": true,
			"node uplink": true, "node uplink IPv4": true}
		outside := map[string]bool{"office": true, "internet": true, "internet IPv4": true}
		switch src {
		case "co-tenant, no policy":
			return false // no egress at all; node_ports is udp/53 only
		case "co-tenant, egress any to any":
			return outside[dst] // not the victim (its ingress), not the node, no multicast
		case "node":
			return true // the node's own traffic is not filtered (output)
		case "office":
			return dst == "victim /80" || node[dst] || outside[dst] // outside -> node: the node's own firewall
		case "internet", "internet IPv4":
			return node[dst] || outside[dst]
		}
		return false
	}
	var cells []*matrixCell
	for _, s := range srcs {
		for _, d := range dsts {
			if !s.can(d) {
				continue
			}
			for _, proto := range []string{"tcp", "udp", "icmp"} {
				if proto != "udp" && d.addr().IsMulticast() {
					continue // no TCP to a group; the sender's own kernel answers an echo to a group it is in
				}
				if s.name == d.name {
					continue // a host to itself
				}
				cells = append(cells, &matrixCell{src: s.name, dst: d.name, proto: proto, want: want(s.name, d.name)})
			}
		}
	}
	srcBy := map[string]matrixSrc{}
	for _, s := range srcs {
		srcBy[s.name] = s
	}
	dstBy := map[string]matrixDst{}
	for _, d := range dsts {
		dstBy[d.name] = d
	}
	run := func(phase string, into func(*matrixCell, error)) {
		t.Helper()
		start := time.Now()
		var wg sync.WaitGroup
		sem := make(chan struct{}, 12)
		for _, c := range cells {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer func() { <-sem; wg.Done() }()
				d := dstBy[c.dst]
				into(c, srcBy[c.src].probe(ctx, c.proto, d.addr(), d.linkLocal))
			}()
		}
		wg.Wait()
		t.Logf("%s: %d cells in %v", phase, len(cells), time.Since(start).Round(time.Millisecond))
	}

	// Phase 1: the firewall off. Forged datagrams too: the receivers
	// count what arrives from the forged source.
	run("firewall off", func(c *matrixCell, err error) { c.base, c.baseRan = err, true })
	forgeries := forgeCells(t, e, victim)
	forgeries.run(ctx, t, e, attacker, "firewall off")

	// Phase 2: the firewall on.
	e.StopAgent(syscall.SIGTERM)
	writeConfig(true)
	if err := e.StartAgent(ctx); err != nil {
		t.Fatal(err)
	}
	if err := e.WaitOpen(ctx, 4, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	run("firewall on", func(c *matrixCell, err error) { c.got = err })
	forgeries.run(ctx, t, e, attacker, "firewall on")

	var b strings.Builder
	passes, drops, na := 0, 0, 0
	fmt.Fprintf(&b, "| source | destination | tcp | udp | icmp |\n|---|---|---|---|---|\n")
	type key struct{ src, dst string }
	byKey := map[key]map[string]*matrixCell{}
	var order []key
	for _, c := range cells {
		k := key{c.src, c.dst}
		if byKey[k] == nil {
			byKey[k] = map[string]*matrixCell{}
			order = append(order, k)
		}
		byKey[k][c.proto] = c
		switch {
		case c.base != nil && !c.want:
			na++
		case c.base != nil && c.want:
			t.Errorf("%s -> %s %s: must pass, but has no path even with the firewall off: %v", c.src, c.dst, c.proto, c.base)
		case c.want && c.got != nil:
			t.Errorf("%s -> %s %s: want pass, got %v", c.src, c.dst, c.proto, c.got)
		case !c.want && c.got == nil:
			t.Errorf("%s -> %s %s: want dropped, but it passed", c.src, c.dst, c.proto)
		case c.want:
			passes++
		default:
			drops++
		}
	}
	verdict := func(c *matrixCell) string {
		switch {
		case c == nil:
			return ""
		case c.base != nil:
			return "n/a"
		case c.want && c.got == nil:
			return "pass"
		case !c.want && c.got != nil:
			return "drop"
		case c.want:
			return "**FAIL (dropped)**"
		}
		return "**FAIL (passed)**"
	}
	for _, k := range order {
		m := byKey[k]
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", k.src, k.dst, verdict(m["tcp"]), verdict(m["udp"]), verdict(m["icmp"]))
	}
	b.WriteString(forgeries.table())
	t.Logf("bypass matrix:\n%s", b.String())
	row.fig(t, "%d cells: %d pass as allowed, %d dropped as denied, %d n/a (no path with the firewall off); %s; engine %s",
		len(cells), passes, drops, na, forgeries.summary(), engineName(ctx, e))
	if err := writeBypassMD(engineName(ctx, e), b.String()); err != nil {
		t.Logf("BYPASS.md: %v", err)
	}
}

// forgeSet is the attacker's forged datagrams: a source that is not its
// own, to a receiver that would take it (the office admits the victim's
// address; the internet host takes anything), counted at the receiver.
type forgeSet struct {
	cells []*forgeCell
}

type forgeCell struct {
	what          string
	src, dst      netip.Addr
	port          int
	count         func() int
	base, arrived int
}

func forgeCells(t *testing.T, e *Env, victim Workload) *forgeSet {
	t.Helper()
	fs := &forgeSet{}
	add := func(what string, ns *netns.NS, src, dst netip.Addr, port int) {
		fs.cells = append(fs.cells, &forgeCell{what: what, src: src, dst: dst, port: port, count: countUDP(t, ns, port)})
	}
	add("attacker as the victim's /80 -> office udp", e.Office, victim.Addr, OfficeAddr, 9090)
	add("attacker as the office -> internet udp", e.Internet, OfficeAddr, InternetAddr, 9091)
	add("attacker as the victim's IPv4 -> internet IPv4 udp", e.Internet, victim.Addr4, Internet4, 9092)
	add("attacker as a foreign IPv4 -> internet IPv4 udp", e.Internet, netip.MustParseAddr("192.0.2.99"), Internet4, 9093)
	return fs
}

func (fs *forgeSet) run(ctx context.Context, t *testing.T, e *Env, attacker Workload, phase string) {
	t.Helper()
	for _, c := range fs.cells {
		before := c.count()
		// v6probe binds the forged source with IP(V6)_TRANSPARENT
		// (NET_ADMIN): the datagram leaves with it, whatever the
		// interface holds.
		_, _, err := e.Exec(ctx, attacker.ID, "/bin/v6probe", "dial", "udp", c.dst.String(), fmt.Sprint(c.port), "300ms", c.src.String())
		if err != nil {
			t.Errorf("%s: %s: %v", phase, c.what, err)
		}
		time.Sleep(300 * time.Millisecond)
		n := c.count() - before
		if phase == "firewall off" {
			c.base = n
			if n == 0 {
				t.Errorf("%s: %s: nothing arrived with the firewall off; the check could not fail", phase, c.what)
			}
			continue
		}
		c.arrived = n
		if n != 0 {
			t.Errorf("%s: %s: %d datagrams arrived, want 0", phase, c.what, n)
		}
	}
}

func (fs *forgeSet) table() string {
	var b strings.Builder
	b.WriteString("\n| forged source | arrived, firewall off | arrived, firewall on |\n|---|---|---|\n")
	for _, c := range fs.cells {
		fmt.Fprintf(&b, "| %s | %d | %d |\n", c.what, c.base, c.arrived)
	}
	return b.String()
}

func (fs *forgeSet) summary() string {
	n := 0
	for _, c := range fs.cells {
		n += c.arrived
	}
	return fmt.Sprintf("%d forged sources, %d datagrams arrived with the firewall on", len(fs.cells), n)
}

// countUDP counts the datagrams arriving at [::]:port in ns, whatever
// their source: each forged cell has a port of its own, and on an engine
// that masquerades the network's IPv4 (Docker 27+ with iptables) a forged
// source of the IPv4 subnet arrives as the node's address.
func countUDP(t *testing.T, ns *netns.NS, port int) func() int {
	t.Helper()
	var mu sync.Mutex
	n := 0
	ns.ServeUDPFunc(t, port, func(netip.Addr) {
		mu.Lock()
		n++
		mu.Unlock()
	})
	return func() int { mu.Lock(); defer mu.Unlock(); return n }
}

func containerLinkLocal(ctx context.Context, t *testing.T, e *Env, id string) netip.Addr {
	t.Helper()
	re := regexp.MustCompile(`inet6 (fe80::[0-9a-f:]+)/64`)
	var ll netip.Addr
	if err := WaitFor(ctx, 10*time.Second, func() error {
		_, out, err := e.Exec(ctx, id, "ip", "-6", "addr", "show", "dev", "eth0")
		if err != nil {
			return err
		}
		m := re.FindStringSubmatch(out)
		if m == nil || strings.Contains(out, "tentative") {
			return fmt.Errorf("no usable link-local address yet: %s", out)
		}
		ll = netip.MustParseAddr(m[1])
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return ll
}

func nodeLinkLocal(t *testing.T, ns *netns.NS, link string) netip.Addr {
	t.Helper()
	var ll netip.Addr
	if err := WaitFor(context.Background(), 10*time.Second, func() error {
		a, err := ns.LinkLocal(link)
		ll = a
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return ll
}

func linkIndex(t *testing.T, ns *netns.NS, link string) int {
	t.Helper()
	l, err := ns.Handle().LinkByName(link)
	if err != nil {
		t.Fatal(err)
	}
	return l.Attrs().Index
}

func engineName(ctx context.Context, e *Env) string {
	v, err := e.Docker.Client.ServerVersion(ctx)
	if err != nil {
		return "unknown"
	}
	return "Docker " + v.Version
}

var bypassMu sync.Mutex

// writeBypassMD writes the engine's matrix into BYPASS.md, keeping the
// other engines' sections.
func writeBypassMD(engine, table string) error {
	bypassMu.Lock()
	defer bypassMu.Unlock()
	sections := map[string]string{}
	if b, err := os.ReadFile("BYPASS.md"); err == nil {
		parts := strings.Split(string(b), "\n## ")
		for _, p := range parts[1:] {
			title, body, _ := strings.Cut(p, "\n")
			sections[title] = body
		}
	}
	sections[engine] = fmt.Sprintf("\nWritten by TestBypassMatrix on %s.\n\n%s", time.Now().UTC().Format("2006-01-02"), table)
	names := make([]string, 0, len(sections))
	for n := range sections {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	b.WriteString(bypassHeader)
	for _, n := range names {
		fmt.Fprintf(&b, "\n## %s\n%s", n, strings.TrimRight(sections[n], "\n")+"\n")
	}
	return os.WriteFile("BYPASS.md", []byte(b.String()), 0o644)
}

const bypassHeader = `# Bypass matrix

Written by TestBypassMatrix (integration/bypass_test.go, run by ` + "`make test`" + `
on every Docker engine of the suite): a real dockerd, Consul and agent;
the victim admits tcp/8080, udp/8080 and icmp from @office; one co-tenant
has no policy, one has egress any to any; the node offers udp/53 only
(node_ports). Every cell ran twice: with the agent's firewall off (a cell
that fails there has no path and is n/a) and on. pass: allowed and passed
(a positive control); drop: denied and dropped. The node's own traffic is
not filtered (output hook), and what outside hosts send to the node's own
addresses is the node's firewall's business, not v6reg's. Forged sources
are counted at the receiver.
`

// openDockerPath puts the agent's accept for the node prefix into Docker's
// DOCKER-USER chain, where the engine has one.
func openDockerPath(t *testing.T, e *Env) {
	t.Helper()
	if err := e.Node.Run(func() error {
		conn, err := nftables.New()
		if err != nil {
			return err
		}
		_, err = firewall.EnsureDockerUserAccept(conn, NodePrefix, "v6e2e0")
		return err
	}); err != nil {
		t.Fatalf("opening Docker's path for the baseline: %v", err)
	}
}
