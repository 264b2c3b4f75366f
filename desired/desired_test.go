package desired

import (
	"fmt"

	"github.com/v6reg/v6reg/desired/desiredtest"
	"github.com/v6reg/v6reg/peers"

	"github.com/v6reg/v6reg/registrar"

	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/v6reg/v6reg/docker"

	"github.com/v6reg/v6reg/nomad"

	"github.com/v6reg/v6reg/firewall"
)

func labelContainer(tag, name string, n int, labels map[string]string) docker.Container {
	return desiredtest.LabelContainer(tag, name, n, labels)
}

func nomadContainer(tag, task, alloc string, n int) docker.Container {
	return desiredtest.NomadContainer(tag, task, alloc, n)
}

// shopAlloc has meta at every level: egress from the job, ingress from the
// group (dotted map form), services per task, and a task that closes the
// group's ingress with an empty value.
func shopAlloc(stopping bool) nomad.Alloc {
	return nomad.Alloc{
		ID: allocA, Namespace: "team", Job: "p-shop", Group: "web", Stopping: stopping,
		JobMeta:   map[string]string{"v6reg_egress": "tcp/443 to 2001:db8::/32", "tier": "x"},
		GroupMeta: map[string]string{"v6reg.ingress": "tcp/9000 from @traefik"},
		TaskMeta: map[string]map[string]string{
			"api":     {"v6reg_services": "shop:9000"},
			"sidecar": {"v6reg_ingress": ""},
		},
	}
}

func lookupOf(allocs ...nomad.Alloc) func(string) (nomad.Alloc, bool) {
	return func(id string) (nomad.Alloc, bool) {
		for _, a := range allocs {
			if a.ID == id {
				return a, true
			}
		}
		return nomad.Alloc{}, false
	}
}

func workloadOf(t *testing.T, d Desired, id string) Workload {
	t.Helper()
	for _, w := range d.Workloads {
		if w.Container.ID == id {
			return w
		}
	}
	t.Fatalf("no workload for container %s", docker.ShortID(id))
	return Workload{}
}

func fwOf(d Desired, id string) (firewall.Container, bool) {
	for _, c := range d.Firewall.Containers {
		if c.ID == id {
			return c, true
		}
	}
	return firewall.Container{}, false
}

func regsOf(d Desired, id string) []registrar.Registration {
	var out []registrar.Registration
	for _, r := range d.Registrations {
		if r.Meta[registrar.MetaContainer] == docker.ShortID(id) {
			out = append(out, r)
		}
	}
	slices.SortFunc(out, func(a, b registrar.Registration) int { return strings.Compare(a.ID, b.ID) })
	return out
}

func TestBuild(t *testing.T) {
	web := labelContainer("aa01", "web", 10, map[string]string{
		"v6reg.ingress":   "tcp/80 from @traefik; icmp from @ops",
		"v6reg.services":  "web:80:http",
		"v6reg.job":       "p-web",
		"v6reg.namespace": "team",
	})
	tests := []struct {
		name  string
		in    func() Input
		check func(t *testing.T, d Desired)
	}{
		{
			name: "an http check asks for the path the service names, and follows no redirect",
			in: func() Input {
				return testInput(labelContainer("aa30", "health", 30, map[string]string{"v6reg.services": "web:80:http/healthz?deep=1, tls:443:https, raw:7000"}))
			},
			check: func(t *testing.T, d Desired) {
				want := map[string]string{"web": "http://[%s]:80/healthz?deep=1", "tls": "https://[%s]:443/", "raw": ""}
				regs := regsOf(d, cid("aa30"))
				for _, r := range regs {
					w, ok := want[r.Name]
					if !ok {
						continue
					}
					delete(want, r.Name)
					c := r.ToConsul("n1", r.Hash()).Check
					if w == "" {
						if c.TCP == "" || c.HTTP != "" {
							t.Errorf("%s: check %+v, want tcp", r.Name, c)
						}
						continue
					}
					if url := fmt.Sprintf(w, r.Addr); c.HTTP != url {
						t.Errorf("%s: check URL %q, want %q", r.Name, c.HTTP, url)
					}
				}
				if len(want) > 0 {
					t.Errorf("no registration for %v in %+v", want, regs)
				}
			},
		},
		{
			name: "label-only container takes policy, job and namespace from labels",
			in:   func() Input { return testInput(web) },
			check: func(t *testing.T, d Desired) {
				w := workloadOf(t, d, web.ID)
				if w.Closed || w.Source != "labels" || w.Job != "p-web" || w.Namespace != "team" || w.Task != "web" {
					t.Fatalf("workload = %+v", w)
				}
				if w.IngressSource != `label "v6reg.ingress"` {
					t.Errorf("ingress source = %q", w.IngressSource)
				}
				fc, ok := fwOf(d, web.ID)
				if !ok || fc.Addr != web.Addr || len(fc.Ingress) != 2 || len(fc.Egress) != 0 {
					t.Fatalf("firewall container = %+v", fc)
				}
				tcp := fc.Ingress[0]
				if tcp.Proto != firewall.TCP || !slices.Equal(tcp.Ports, []firewall.PortRange{{First: 80, Last: 80}}) {
					t.Errorf("tcp rule = %+v", tcp)
				}
				// @traefik holds an IPv4 prefix too: the firewall gets both
				// (it uses IPv4 prefixes for IPv4 egress only).
				if got := d.Firewall.PeerSets[tcp.Peer]; len(got) != 2 || !slices.Contains(got, traefikV6) {
					t.Errorf("peer set %s = %v, want %v and the IPv4 prefix", tcp.Peer, got, traefikV6)
				}
				if icmp := fc.Ingress[1]; icmp.Proto != firewall.ICMP || icmp.Ports != nil {
					t.Errorf("icmp rule = %+v", icmp)
				}
				regs := regsOf(d, web.ID)
				if len(regs) != 2 {
					t.Fatalf("registrations = %+v", regs)
				}
				job, svc := regs[0], regs[1]
				if want := "v6reg-n1-" + web.ID[:12] + "-job-0"; job.ID != want || job.Name != registrar.JobsService ||
					!slices.Equal(job.Tags, []string{"job=team/p-web"}) || job.Check.Kind != "" {
					t.Errorf("jobs registration = %+v, want ID %s tag job=team/p-web", job, want)
				}
				if want := "v6reg-n1-" + web.ID[:12] + "-web-80"; svc.ID != want || svc.Name != "web" || svc.Port != 80 || svc.Addr != web.Addr {
					t.Errorf("service registration = %+v, want ID %s", svc, want)
				}
				if svc.Check.Kind != "http" || svc.Check.Path != "/" {
					t.Errorf("check = %+v, want http /", svc.Check)
				}
				if !slices.Contains(svc.Tags, "traefik.enable=true") {
					t.Errorf("tags %q lack the operator's traefik tag", svc.Tags)
				}
				wantMeta := map[string]string{registrar.MetaContainer: web.ID[:12], registrar.MetaJob: "p-web", registrar.MetaTask: "web", registrar.MetaNamespace: "team", registrar.MetaPrefix: "fd00:f1:0:0:1::/80"}
				if !mapsEqual(svc.Meta, wantMeta) {
					t.Errorf("meta = %v, want %v", svc.Meta, wantMeta)
				}
			},
		},
		{
			name: "nomad container: meta merged job<group<task, task from the container name",
			in: func() Input {
				in := testInput(nomadContainer("bb01", "api", allocA, 11), nomadContainer("bb02", "sidecar", allocA, 12))
				in.Lookup = lookupOf(shopAlloc(false))
				return in
			},
			check: func(t *testing.T, d Desired) {
				api := workloadOf(t, d, cid("bb01"))
				if api.Closed || api.Source != "nomad" || api.Job != "p-shop" || api.Group != "web" || api.Task != "api" || api.Namespace != "team" {
					t.Fatalf("api workload = %+v", api)
				}
				if want := `job "p-shop" group "web" meta "v6reg.ingress"`; api.IngressSource != want {
					t.Errorf("ingress source = %q, want %q", api.IngressSource, want)
				}
				if want := `job "p-shop" meta "v6reg_egress"`; api.EgressSource != want {
					t.Errorf("egress source = %q, want %q", api.EgressSource, want)
				}
				fc, _ := fwOf(d, cid("bb01"))
				if len(fc.Ingress) != 1 || len(fc.Egress) != 1 {
					t.Fatalf("api firewall = %+v", fc)
				}
				if got := d.Firewall.PeerSets[fc.Egress[0].Peer]; !slices.Equal(got, []netip.Prefix{netip.MustParsePrefix("2001:db8::/32")}) {
					t.Errorf("egress peer set = %v", got)
				}
				// The sidecar's empty task value overrides the group's ingress.
				side, _ := fwOf(d, cid("bb02"))
				if len(side.Ingress) != 0 || len(side.Egress) != 1 {
					t.Errorf("sidecar firewall = %+v, want no ingress and the job's egress", side)
				}
				regs := regsOf(d, cid("bb01"))
				if len(regs) != 2 {
					t.Fatalf("registrations = %+v", regs)
				}
				svc := regs[1]
				if svc.Name != "shop" || svc.Check.Kind != "tcp" || !slices.Contains(svc.Tags, "e91ea7ef") {
					t.Errorf("service = %+v, want tcp check and the short alloc tag", svc)
				}
				wantMeta := map[string]string{registrar.MetaContainer: cid("bb01")[:12], registrar.MetaAlloc: allocA, registrar.MetaJob: "p-shop", registrar.MetaTask: "api", registrar.MetaNamespace: "team", registrar.MetaPrefix: "fd00:f1:0:0:1::/80"}
				if !mapsEqual(svc.Meta, wantMeta) {
					t.Errorf("meta = %v, want %v", svc.Meta, wantMeta)
				}
				if !slices.Equal(regs[0].Tags, []string{"job=team/p-shop"}) {
					t.Errorf("jobs registration tags = %v", regs[0].Tags)
				}
			},
		},
		{
			name: "allocation unknown: closed with a reason",
			in:   func() Input { return testInput(nomadContainer("cc01", "api", allocA, 13)) },
			check: func(t *testing.T, d Desired) {
				w := workloadOf(t, d, cid("cc01"))
				if !w.Closed || !strings.Contains(w.Reason, "has not (yet) listed allocation "+allocA) {
					t.Errorf("workload = %+v", w)
				}
				assertClosed(t, d, cid("cc01"))
			},
		},
		{
			name: "task not in the allocation's group: closed",
			in: func() Input {
				in := testInput(nomadContainer("cc02", "nope", allocA, 13))
				in.Lookup = lookupOf(shopAlloc(false))
				return in
			},
			check: func(t *testing.T, d Desired) {
				w := workloadOf(t, d, cid("cc02"))
				if !w.Closed || !strings.Contains(w.Reason, `task "nope" is not in group "web"`) {
					t.Errorf("workload = %+v", w)
				}
				assertClosed(t, d, cid("cc02"))
			},
		},
		{
			name: "nomad disabled: a nomad container is closed",
			in: func() Input {
				in := testInput(nomadContainer("dd01", "api", allocA, 14))
				in.Nomad = false
				in.Lookup = lookupOf(shopAlloc(false))
				return in
			},
			check: func(t *testing.T, d Desired) {
				w := workloadOf(t, d, cid("dd01"))
				if !w.Closed || !strings.Contains(w.Reason, "nomad is disabled") {
					t.Errorf("workload = %+v", w)
				}
				assertClosed(t, d, cid("dd01"))
			},
		},
		{
			name: "policy error: closed, critical registration carrying the error",
			in: func() Input {
				return testInput(labelContainer("ee01", "bad", 15, map[string]string{"v6reg.ingress": "tcp/80 form @traefik", "v6reg.job": "p-bad"}))
			},
			check: func(t *testing.T, d Desired) {
				w := workloadOf(t, d, cid("ee01"))
				if !w.Closed || len(w.Errors) == 0 || !strings.Contains(w.Errors[0], "did you mean 'from'") {
					t.Fatalf("workload = %+v", w)
				}
				fc, ok := fwOf(d, cid("ee01"))
				if !ok || len(fc.Ingress)+len(fc.Egress) != 0 {
					t.Errorf("firewall = %+v, want present and closed", fc)
				}
				regs := regsOf(d, cid("ee01"))
				if len(regs) != 1 {
					t.Fatalf("registrations = %+v, want one critical", regs)
				}
				r := regs[0]
				if r.Name != registrar.PolicyErrorService || r.Check.Kind != "critical" || !strings.Contains(r.Check.Notes, w.Errors[0]) {
					t.Errorf("registration = %+v", r)
				}
				if !slices.Contains(r.Tags, "job=default/p-bad") {
					t.Errorf("tags = %v", r.Tags)
				}
				c := r.ToConsul("n1", r.Hash()).Check
				if c == nil || c.Status != "critical" || !strings.Contains(c.Notes, "did you mean 'from'") {
					t.Errorf("consul check = %+v", c)
				}
			},
		},
		{
			name: "policy error with services: each service registered critical",
			in: func() Input {
				return testInput(labelContainer("ee02", "bad", 16, map[string]string{"v6reg.egress": "tcp/80 to @nope", "v6reg.services": "web:80:http"}))
			},
			check: func(t *testing.T, d Desired) {
				regs := regsOf(d, cid("ee02"))
				if len(regs) != 1 || regs[0].Name != "web" || regs[0].Port != 80 || regs[0].Check.Kind != "critical" || !strings.Contains(regs[0].Check.Notes, "@nope") {
					t.Errorf("registrations = %+v", regs)
				}
			},
		},
		{
			name: "stopping allocation: no registrations, firewall kept",
			in: func() Input {
				in := testInput(nomadContainer("ff01", "api", allocA, 17))
				in.Lookup = lookupOf(shopAlloc(true))
				return in
			},
			check: func(t *testing.T, d Desired) {
				w := workloadOf(t, d, cid("ff01"))
				if w.Closed || !w.Stopping {
					t.Errorf("workload = %+v", w)
				}
				if fc, _ := fwOf(d, cid("ff01")); len(fc.Ingress) != 1 || len(fc.Egress) != 1 {
					t.Errorf("firewall = %+v, want kept while the container drains", fc)
				}
				if regs := regsOf(d, cid("ff01")); len(regs) != 0 {
					t.Errorf("registrations = %+v, want none", regs)
				}
			},
		},
		{
			name: "duplicate address: the second container is closed",
			in: func() Input {
				a := labelContainer("aa10", "one", 20, map[string]string{"v6reg.ingress": "tcp/80 from @traefik"})
				b := labelContainer("aa20", "two", 20, map[string]string{"v6reg.ingress": "tcp/80 from @traefik", "v6reg.services": "two:80"})
				return testInput(a, b)
			},
			check: func(t *testing.T, d Desired) {
				if w := workloadOf(t, d, cid("aa10")); w.Closed {
					t.Errorf("first = %+v", w)
				}
				w := workloadOf(t, d, cid("aa20"))
				if !w.Closed || !strings.Contains(w.Reason, "also container "+cid("aa10")[:12]) {
					t.Errorf("second = %+v", w)
				}
				if _, ok := fwOf(d, cid("aa20")); ok || len(d.Firewall.Containers) != 1 {
					t.Errorf("firewall containers = %+v, want only the first", d.Firewall.Containers)
				}
				if regs := regsOf(d, cid("aa20")); len(regs) != 0 {
					t.Errorf("registrations of the second = %+v", regs)
				}
			},
		},
		{
			name: "no address and outside the prefix: closed, no firewall element",
			in: func() Input {
				a := labelContainer("ab01", "noaddr", 0, nil)
				a.Addr = netip.Addr{}
				b := labelContainer("ab02", "outside", 0, nil)
				b.Addr = netip.MustParseAddr("fd00:99::1")
				return testInput(a, b)
			},
			check: func(t *testing.T, d Desired) {
				if w := workloadOf(t, d, cid("ab01")); !w.Closed || !strings.Contains(w.Reason, "no IPv6 address") {
					t.Errorf("no address: %+v", w)
				}
				if w := workloadOf(t, d, cid("ab02")); !w.Closed || !strings.Contains(w.Reason, "outside the node prefix") {
					t.Errorf("outside: %+v", w)
				}
				if len(d.Firewall.Containers) != 0 || len(d.Registrations) != 0 {
					t.Errorf("firewall %+v registrations %+v, want none", d.Firewall.Containers, d.Registrations)
				}
			},
		},
		{
			name: "service: and job: peers fill their sets from Consul and set PeerKeys",
			in: func() Input {
				in := testInput(labelContainer("ac01", "app", 21, map[string]string{
					"v6reg.egress":    "tcp/5432 to service:postgres, job:p-db; udp/53 to service:dns",
					"v6reg.namespace": "team",
				}))
				in.Peers = func(k peers.Key) ([]netip.Prefix, bool) {
					switch k.String() {
					case "service:team/postgres":
						return []netip.Prefix{netip.MustParsePrefix("fd00:1::5/128")}, true
					case "job:team/p-db":
						return []netip.Prefix{netip.MustParsePrefix("fd00:1::6/128")}, true
					}
					return nil, false // service:team/dns: Consul has not answered
				}
				return in
			},
			check: func(t *testing.T, d Desired) {
				want := map[peers.Key]bool{peers.ServiceKey("team", "postgres"): true, peers.JobKey("team", "p-db"): true, peers.ServiceKey("team", "dns"): true}
				if !mapsEqual(d.PeerKeys, want) {
					t.Errorf("PeerKeys = %v, want %v", d.PeerKeys, want)
				}
				if got := d.Firewall.PeerSets["service:team/postgres"]; len(got) != 1 || got[0].String() != "fd00:1::5/128" {
					t.Errorf("service:postgres = %v", got)
				}
				if got := d.Firewall.PeerSets["job:team/p-db"]; len(got) != 1 || got[0].String() != "fd00:1::6/128" {
					t.Errorf("job:team/p-db = %v", got)
				}
				if got, ok := d.Firewall.PeerSets["service:team/dns"]; !ok || len(got) != 0 {
					t.Errorf("service:dns = %v, %v; want present and empty until Consul answers", got, ok)
				}
				fc, _ := fwOf(d, cid("ac01"))
				var peers []string
				for _, r := range fc.Egress {
					peers = append(peers, r.Peer)
				}
				if want := []string{"service:team/postgres", "job:team/p-db", "service:team/dns"}; !slices.Equal(peers, want) {
					t.Errorf("egress peers = %v, want %v", peers, want)
				}
			},
		},
		{
			name: "any resolves to firewall.PeerAny, not a prefix set",
			in: func() Input {
				return testInput(labelContainer("ad01", "open", 22, map[string]string{"v6reg.ingress": "tcp/443 from any", "v6reg.namespace": "open"}))
			},
			check: func(t *testing.T, d Desired) {
				fc, _ := fwOf(d, cid("ad01"))
				if len(fc.Ingress) != 1 || fc.Ingress[0].Peer != firewall.PeerAny {
					t.Errorf("ingress = %+v, want one rule with peer any", fc.Ingress)
				}
				if len(d.Firewall.PeerSets) != 0 {
					t.Errorf("peer sets = %v, want none", d.Firewall.PeerSets)
				}
			},
		},
		{
			// policies refuses what the firewall cannot hold (the limits
			// agree: TestPortLimitsAgree), so one job's policy never
			// makes the node's whole Apply fail.
			name: "a port range the firewall cannot hold closes that container only",
			in: func() Input {
				return testInput(
					labelContainer("af01", "wide", 24, map[string]string{"v6reg.ingress": "tcp/1000-3000 from @traefik", "v6reg.services": "wide:1000"}),
					labelContainer("af02", "fine", 25, map[string]string{"v6reg.ingress": "tcp/1-1024 from @traefik; udp from @traefik"}),
				)
			},
			check: func(t *testing.T, d Desired) {
				w := workloadOf(t, d, cid("af01"))
				if !w.Closed || len(w.Errors) != 1 || !strings.Contains(w.Errors[0], "covers 2001 ports") {
					t.Fatalf("wide = %+v", w)
				}
				assertNoRules(t, d, cid("af01"))
				if regs := regsOf(d, cid("af01")); len(regs) != 1 || regs[0].Check.Kind != "critical" || !strings.Contains(regs[0].Check.Notes, "2001 ports") {
					t.Errorf("wide registrations = %+v, want one critical", regs)
				}
				if w := workloadOf(t, d, cid("af02")); w.Closed {
					t.Errorf("1024 ports and all ports are fine: %+v", w)
				}
			},
		},
		{
			name: "the gateway's address is never a container's",
			in: func() Input {
				c := labelContainer("ag01", "gw", 1, map[string]string{"v6reg.ingress": "tcp/80 from @traefik"})
				return testInput(c)
			},
			check: func(t *testing.T, d Desired) {
				if w := workloadOf(t, d, cid("ag01")); !w.Closed || !strings.Contains(w.Reason, "gateway") {
					t.Errorf("workload = %+v", w)
				}
				if len(d.Firewall.Containers) != 0 {
					t.Errorf("firewall = %+v", d.Firewall.Containers)
				}
			},
		},
		{
			name: "policy error without a job: no empty job tag",
			in: func() Input {
				return testInput(labelContainer("ah01", "bad", 26, map[string]string{"v6reg.ingres": "tcp/80 from @traefik"}))
			},
			check: func(t *testing.T, d Desired) {
				regs := regsOf(d, cid("ah01"))
				if len(regs) != 1 || len(regs[0].Tags) != 0 || !strings.Contains(regs[0].Check.Notes, "unknown v6reg key") {
					t.Errorf("registrations = %+v", regs)
				}
			},
		},
		{
			name: "IPv4-only peer set opens IPv4 egress",
			in: func() Input {
				in := testInput(labelContainer("ae01", "v4", 23, map[string]string{"v6reg.egress": "tcp/80 to @legacy"}))
				in.Operator.Peers["legacy"] = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}
				return in
			},
			check: func(t *testing.T, d Desired) {
				fc, _ := fwOf(d, cid("ae01"))
				if len(fc.Egress) != 1 || !slices.Equal(d.Firewall.PeerSets[fc.Egress[0].Peer], []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}) {
					t.Errorf("egress = %+v sets = %v, want tcp/80 to the IPv4 set", fc.Egress, d.Firewall.PeerSets)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := tt.in()
			d := Build(in)
			if err := d.Firewall.Validate(); err != nil {
				t.Fatalf("build made an invalid firewall state: %v", err)
			}
			tt.check(t, d)
			// build is pure: the same input gives the same state.
			if again := Build(in); !desiredEqual(d, again) {
				t.Errorf("a second build differs")
			}
		})
	}
}

func assertNoRules(t *testing.T, d Desired, id string) {
	t.Helper()
	fc, ok := fwOf(d, id)
	if !ok || len(fc.Ingress)+len(fc.Egress) != 0 {
		t.Errorf("firewall element = %+v (present %v), want present without rules", fc, ok)
	}
}

func assertClosed(t *testing.T, d Desired, id string) {
	t.Helper()
	fc, ok := fwOf(d, id)
	if !ok {
		t.Errorf("container %s has no firewall element; a closed container with an address keeps one (default deny)", docker.ShortID(id))
	}
	if len(fc.Ingress)+len(fc.Egress) != 0 {
		t.Errorf("closed container has rules: %+v", fc)
	}
	if regs := regsOf(d, id); len(regs) != 0 {
		t.Errorf("closed container has registrations: %+v", regs)
	}
}

func mapsEqual[K comparable, V comparable](a, b map[K]V) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func desiredEqual(a, b Desired) bool {
	if len(a.Registrations) != len(b.Registrations) || len(a.Firewall.Containers) != len(b.Firewall.Containers) {
		return false
	}
	for id, r := range a.Registrations {
		if r.Hash() != b.Registrations[id].Hash() {
			return false
		}
	}
	for i := range a.Firewall.Containers {
		if !sameFW(a.Firewall.Containers[i], b.Firewall.Containers[i]) {
			return false
		}
	}
	return mapsEqual(a.PeerKeys, b.PeerKeys)
}

func sameFW(a, b firewall.Container) bool {
	eq := func(x, y []firewall.Rule) bool {
		return slices.EqualFunc(x, y, func(p, q firewall.Rule) bool {
			return p.Peer == q.Peer && p.Proto == q.Proto && slices.Equal(p.Ports, q.Ports)
		})
	}
	return a.ID == b.ID && a.Addr == b.Addr && eq(a.Ingress, b.Ingress) && eq(a.Egress, b.Egress)
}
