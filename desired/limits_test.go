package desired

import (
	"github.com/v6reg/v6reg/peers"
	"github.com/v6reg/v6reg/registrar"

	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/v6reg/v6reg/docker"

	"github.com/v6reg/v6reg/policies"
)

func limitedInput(lim policies.Limits, cs ...docker.Container) Input {
	in := testInput(cs...)
	in.Operator.Limits = lim
	return in
}

func buildLimited(in Input, prev *Desired) (Desired, LimitReport) {
	d := Build(in)
	rep := EnforceLimits(&d, in, prev)
	return d, rep
}

// assertRefused: closed, no rules, an error naming want, a critical
// registration carrying it.
func assertRefused(t *testing.T, d Desired, id, want string) {
	t.Helper()
	w := workloadOf(t, d, id)
	if !w.Closed || len(w.Errors) == 0 || !strings.Contains(strings.Join(w.Errors, "\n"), want) {
		t.Fatalf("workload %s = closed %v reason %q errors %q; want closed with %q", docker.ShortID(id), w.Closed, w.Reason, w.Errors, want)
	}
	assertNoRules(t, d, id)
	regs := regsOf(d, id)
	if len(regs) == 0 {
		t.Fatalf("no registration for refused %s: the error must show in Consul", docker.ShortID(id))
	}
	for _, r := range regs {
		if r.Check.Kind != "critical" || !strings.Contains(r.Check.Notes, want) {
			t.Errorf("registration %+v: want a critical check naming %q", r, want)
		}
	}
}

func assertOpen(t *testing.T, d Desired, id string) {
	t.Helper()
	w := workloadOf(t, d, id)
	fc, _ := fwOf(d, id)
	if w.Closed || len(fc.Ingress)+len(fc.Egress) == 0 {
		t.Fatalf("workload %s = closed %v errors %q rules %d; want open", docker.ShortID(id), w.Closed, w.Errors, len(fc.Ingress)+len(fc.Egress))
	}
}

func TestLimitsPerContainer(t *testing.T) {
	lim := policies.Limits{ContainerElements: 200, ContainerPeers: 3, NodeElements: 100000, NodePeerSets: 100, PeerSetAddresses: 100}
	wide := labelContainer("b001", "wide", 30, map[string]string{"v6reg.ingress": "tcp/8000-8300 from @traefik", "v6reg.services": "wide:8000", "v6reg.job": "p-wide"})
	fits := labelContainer("b002", "fits", 31, map[string]string{"v6reg.ingress": "tcp/8000-8100 from @traefik"})
	many := labelContainer("b003", "many", 32, map[string]string{"v6reg.egress": "tcp/5432 to service:a, service:b, job:c, service:d"})
	three := labelContainer("b004", "three", 33, map[string]string{"v6reg.egress": "tcp/5432 to service:a, service:b, job:c; tcp/80 to service:a"})
	// Elements of peers count too: a service with 300 addresses.
	big := labelContainer("b005", "big", 34, map[string]string{"v6reg.egress": "tcp/443 to service:huge"})
	in := limitedInput(lim, wide, fits, many, three, big)
	in.Peers = func(k peers.Key) ([]netip.Prefix, bool) {
		if k.String() != "service:default/huge" {
			return nil, true
		}
		var ps []netip.Prefix
		for i := range 300 {
			ps = append(ps, netip.PrefixFrom(netip.MustParseAddr(fmt.Sprintf("fd00:2::%x", 2*i+1)), 128))
		}
		return ps, true
	}
	d, rep := buildLimited(in, nil)
	// 3 base elements, 301 ports, @traefik's IPv6 and IPv4 ranges.
	assertRefused(t, d, wide.ID, "the policy compiles to 306 firewall elements; the limit is 200 per container (limits.container_elements)")
	assertOpen(t, d, fits.ID)
	assertRefused(t, d, many.ID, "names 4 distinct service: and job: peers; the limit is 3 per container (limits.container_peers)")
	assertOpen(t, d, three.ID)
	assertRefused(t, d, big.ID, "the policy compiles to 304 firewall elements")
	if rep.Refused[limitContainerElements] != 2 || rep.Refused[limitContainerPeers] != 1 {
		t.Errorf("refusals = %v", rep.Refused)
	}
	// A refused policy starts no watch: service:d is named by "many" only.
	if d.PeerKeys[peers.ServiceKey("default", "d")] || d.PeerKeys[peers.ServiceKey("default", "huge")] || !d.PeerKeys[peers.ServiceKey("default", "a")] {
		t.Errorf("PeerKeys = %v: want a, b, c only", d.PeerKeys)
	}
	if _, ok := d.Firewall.PeerSets["service:default/huge"]; ok {
		t.Errorf("the refused container's peer set is still in the table")
	}
	if err := d.Firewall.Validate(); err != nil {
		t.Fatal(err)
	}
	// The error sits where a bad policy's would, with the job's location.
	w := workloadOf(t, d, wide.ID)
	if !strings.HasPrefix(w.Errors[0], "labels: ") || !strings.Contains(w.Errors[0], "open fewer ports") {
		t.Errorf("error = %q", w.Errors[0])
	}
}

func TestLimitsPerNodeKeepWhatIsInForce(t *testing.T) {
	// Each container: 3 base + 100 ports + 1 list element (@ops, IPv6 only).
	lim := policies.Limits{ContainerElements: 1000, ContainerPeers: 10, NodeElements: 250, NodePeerSets: 3, PeerSetAddresses: 100}
	now := time.Unix(1_700_000_000, 0)
	mk := func(tag string, n int, age time.Duration, labels map[string]string) docker.Container {
		c := labelContainer(tag, tag, n, labels)
		c.Created = now.Add(-age)
		return c
	}
	ports := map[string]string{"v6reg.ingress": "tcp/8000-8099 from @ops"}
	old := mk("c001", 40, 3*time.Hour, ports)
	mid := mk("c002", 41, 2*time.Hour, ports)
	young := mk("c003", 42, time.Hour, ports)
	d, rep := buildLimited(limitedInput(lim, young, mid, old), nil)
	assertOpen(t, d, old.ID)
	assertOpen(t, d, mid.ID)
	assertRefused(t, d, young.ID, "the node is full: this container adds 103 firewall elements to the node's 207; the limit is 250 per node (limits.node_elements)")
	if rep.Refused[limitNodeElements] != 1 || rep.Elements != 207+3 {
		t.Errorf("report = %+v, want one refusal and 210 elements (the refused one's base 3)", rep)
	}
	// In force first: with young and mid open last time, old is the one
	// that waits, even though it is older.
	prev := Desired{Workloads: []Workload{{Container: young}, {Container: mid}, {Container: old, Closed: true}}}
	d, _ = buildLimited(limitedInput(lim, young, mid, old), &prev)
	assertOpen(t, d, young.ID)
	assertOpen(t, d, mid.ID)
	assertRefused(t, d, old.ID, "limits.node_elements")

	// Peer sets: one new key too many.
	egressTo := func(keys string) map[string]string { return map[string]string{"v6reg.egress": "tcp/443 to " + keys} }
	p1 := mk("d001", 50, 3*time.Hour, egressTo("service:a, service:b"))
	p2 := mk("d002", 51, 2*time.Hour, egressTo("service:b, job:c"))
	p3 := mk("d003", 52, time.Hour, egressTo("service:a, service:e"))
	p4 := mk("d004", 53, time.Minute, egressTo("service:a, job:c"))
	d, rep = buildLimited(limitedInput(lim, p4, p3, p2, p1), nil)
	assertOpen(t, d, p1.ID)
	assertOpen(t, d, p2.ID)
	assertRefused(t, d, p3.ID, "names 1 service:/job: peers not yet watched here, the node's containers 3; the limit is 3 per node (limits.node_peer_sets)")
	assertOpen(t, d, p4.ID) // names only sets already watched
	if rep.PeerSets != 3 || d.PeerKeys[peers.ServiceKey("default", "e")] {
		t.Errorf("peer sets = %d %v, want a, b, c", rep.PeerSets, d.PeerKeys)
	}
	if err := d.Firewall.Validate(); err != nil {
		t.Fatal(err)
	}
}

// Without limits set, the defaults hold: an Operator built in code is
// bounded all the same.
func TestLimitsDefaultWhenUnset(t *testing.T) {
	var rules []string
	for i := range 40 {
		rules = append(rules, fmt.Sprintf("service:s%d", i))
	}
	c := labelContainer("e001", "e", 60, map[string]string{"v6reg.egress": "tcp/443 to " + strings.Join(rules, ", ")})
	d, _ := buildLimited(limitedInput(policies.Limits{}, c), nil)
	assertRefused(t, d, c.ID, "the limit is 32 per container")
}

// policy check reports the same per-container errors, without a node.
func TestContainerLimitErrors(t *testing.T) {
	op := testOperator()
	op.Limits = policies.Limits{ContainerElements: 50, ContainerPeers: 1}
	pol, errs := policies.Evaluate(policies.FromLabels(map[string]string{"v6reg.ingress": "tcp/8000-8099 from @traefik; tcp/1 from service:a, job:b"}), policies.Context{Namespace: "default"}, op)
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	got := ContainerLimitErrors(pol, "default", op, "g", "t")
	if len(got) != 1 || !strings.Contains(got[0].Error(), `group "g" task "t": the policy names 2 distinct`) {
		t.Fatalf("errors = %v", got)
	}
	op.Limits.ContainerPeers = 5
	got = ContainerLimitErrors(pol, "default", op, "g", "t")
	if len(got) != 1 || !strings.Contains(got[0].Error(), "compiles to at least 117 firewall elements; the limit is 50") {
		t.Fatalf("errors = %v", got)
	}
}

// TestLimitServices: a container declaring more services than
// limits.container_services is refused, and none of them is registered,
// not even with the critical check (one registration in
// v6reg-policy-errors carries the error): a 64 KiB v6reg_services made
// thousands of registrations and health checks on the node's Consul
// agent. At the limit (positive control) every service is registered.
func TestLimitServices(t *testing.T) {
	lim := policies.Limits{ContainerServices: 3}
	svcs := func(n int) string {
		var s []string
		for i := range n {
			s = append(s, fmt.Sprintf("s%d:%d", i, 1000+i))
		}
		return strings.Join(s, ",")
	}
	many := labelContainer("c001", "many", 31, map[string]string{"v6reg.ingress": "tcp/80 from @traefik", "v6reg.services": svcs(4)})
	three := labelContainer("c002", "three", 32, map[string]string{"v6reg.ingress": "tcp/80 from @traefik", "v6reg.services": svcs(3)})
	d, _ := buildLimited(limitedInput(lim, many, three), nil)
	assertRefused(t, d, many.ID, "4 services declared; the limit is 3 per container (limits.container_services)")
	if regs := regsOf(d, many.ID); len(regs) != 1 || regs[0].Name != registrar.PolicyErrorService {
		t.Errorf("refused: %d registrations %+v, want only the policy error's", len(regs), regs)
	}
	assertOpen(t, d, three.ID)
	if n := len(regsOf(d, three.ID)); n != 3 {
		t.Errorf("at the limit: %d registrations, want 3", n)
	}
}
