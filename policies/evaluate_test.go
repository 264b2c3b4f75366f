package policies

import (
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/v6reg/v6reg/internal/golden"
)

func TestFromNomadMerge(t *testing.T) {
	tests := []struct {
		name             string
		job, group, task map[string]string
		want             Meta
		wantErrs         []string
	}{
		{
			name:  "task overrides group overrides job, per key",
			job:   map[string]string{"v6reg_ingress": "J-in", "v6reg_egress": "J-eg", "v6reg_services": "J-svc"},
			group: map[string]string{"v6reg_ingress": "G-in", "v6reg_egress": "G-eg"},
			task:  map[string]string{"v6reg_ingress": "T-in"},
			want: Meta{
				Ingress:  Value{Text: "T-in", Key: "v6reg_ingress", Level: LevelTask},
				Egress:   Value{Text: "G-eg", Key: "v6reg_egress", Level: LevelGroup},
				Services: Value{Text: "J-svc", Key: "v6reg_services", Level: LevelJob},
			},
		},
		{
			name:  "dotted spelling overrides underscore at an outer level",
			job:   map[string]string{"v6reg_ingress": "J"},
			group: map[string]string{"v6reg.ingress": "G"},
			want:  Meta{Ingress: Value{Text: "G", Key: "v6reg.ingress", Level: LevelGroup}},
		},
		{
			name: "empty string overrides: an inner level can close what an outer one opened",
			job:  map[string]string{"v6reg_ingress": "tcp/80 from any"},
			task: map[string]string{"v6reg_ingress": ""},
			want: Meta{Ingress: Value{Text: "", Key: "v6reg_ingress", Level: LevelTask}},
		},
		{
			name:     "both spellings at one level: error, and no fallback to the job",
			job:      map[string]string{"v6reg_egress": "tcp/443 to @internet"},
			group:    map[string]string{"v6reg_egress": "a", "v6reg.egress": "b"},
			want:     Meta{Egress: Value{Text: "", Key: "v6reg_egress", Level: LevelGroup}},
			wantErrs: []string{`group "" meta "v6reg.egress": both v6reg_egress and v6reg.egress are set; keep one of them: they are the same key`},
		},
		{
			name:     "unknown v6reg key",
			task:     map[string]string{"v6reg_ingres": "x", "v6reg.servics": "y", "v6regular": "not ours", "tier": "production"},
			wantErrs: []string{`group "" task "" meta "v6reg.servics": unknown v6reg key; did you mean v6reg.services?`, `group "" task "" meta "v6reg_ingres": unknown v6reg key; did you mean v6reg_ingress?`},
		},
		{
			name: "tier key",
			job:  map[string]string{"v6reg_tier": "s"},
			want: Meta{Tier: Value{Text: "s", Key: "v6reg_tier", Level: LevelJob}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := FromNomad(tt.job, tt.group, tt.task)
			var errs []string
			for _, e := range m.Errors() {
				errs = append(errs, e.Error())
			}
			if !reflect.DeepEqual(errs, tt.wantErrs) {
				t.Errorf("errors %q, want %q", errs, tt.wantErrs)
			}
			m.errs = nil
			if !reflect.DeepEqual(m, tt.want) {
				t.Errorf("FromNomad = %+v, want %+v", m, tt.want)
			}
		})
	}
}

func TestFromLabels(t *testing.T) {
	m := FromLabels(map[string]string{"v6reg.ingress": "tcp/80 from any", "v6reg_egress": "tcp/443 to @internet", "com.example.x": "y"})
	want := Meta{
		Ingress: Value{Text: "tcp/80 from any", Key: "v6reg.ingress", Level: LevelLabel},
		Egress:  Value{Text: "tcp/443 to @internet", Key: "v6reg_egress", Level: LevelLabel},
	}
	if !reflect.DeepEqual(m, want) {
		t.Errorf("FromLabels = %+v, want %+v", m, want)
	}
	op := testOperator()
	_, errs := Evaluate(FromLabels(map[string]string{"v6reg.ingress": "tcp/80 form any"}), Context{}, op)
	if len(errs) != 1 || errs[0].Error() != `label "v6reg.ingress": column 8: expected 'from' or 'to', found "form"; did you mean 'from'?` {
		t.Errorf("label error = %v", errs)
	}
}

// testOperator has a restricted namespace next to a permissive default.
func testOperator() Operator {
	op := DefaultOperator()
	op.Peers = map[string][]netip.Prefix{
		"traefik":    prefixes("2001:db8:0:1::10/128", "2001:db8:0:1::11/128"),
		"monitoring": prefixes("2001:db8:0:2::/64"),
		"ops":        prefixes("2001:db8:0:3::/64", "10.1.0.0/16"),
		"dns":        prefixes("2001:db8:0:53::/64"),
	}
	op.Internal = prefixes("2001:db8::/32", "fd00::/8")
	op.Namespaces = map[string]Bounds{
		"*": {AllowInternet: true, AllowAny: true, Prefixes: prefixes("::/0")},
		"restricted": {
			Peers:             []string{"traefik", "monitoring"},
			Prefixes:          prefixes("2001:db8:100::/48"),
			IngressPorts:      []PortRange{{8000, 8999}},
			EgressPorts:       []PortRange{{443, 443}, {5432, 5432}},
			ServiceNamespaces: []string{"shared"},
			Services:          []string{"shop-*", "web"},
		},
		"tiered": {Tiers: []string{"d", "t"}},
	}
	return op
}

func TestEvaluateResolves(t *testing.T) {
	op := testOperator()
	m := FromNomad(
		map[string]string{"v6reg_egress": "tcp/443 to @internet; udp/53 to @dns; tcp/5432 to service:postgres, service:pg-replica, service:postgres; tcp/8080 to job:p-api"},
		map[string]string{"v6reg.ingress": "tcp/9000 from @traefik, @monitoring, 2001:db8:0:2::5; icmp from @ops; any from any"},
		map[string]string{"v6reg_services": "cerebro:9000:http, admin:9001:https, raw:7000"},
	)
	pol, errs := Evaluate(m, Context{Job: "p-es-cerebro", Group: "cerebro", Task: "cerebro", AllocID: "e91ea7ef-bbc8-da92-3308-4473535245fc"}, op)
	if len(errs) > 0 {
		t.Fatalf("errors: %v", errs)
	}
	wantIngress := []ResolvedRule{
		{Proto: TCP, Ports: []PortRange{{9000, 9000}}, Prefixes: prefixes("2001:db8:0:1::10/127", "2001:db8:0:2::/64"), Source: "tcp/9000 from @traefik, @monitoring, 2001:db8:0:2::5"},
		{Proto: ICMP, Prefixes: prefixes("10.1.0.0/16", "2001:db8:0:3::/64"), Source: "icmp from @ops"},
		{Proto: Any, Prefixes: prefixes("0.0.0.0/0", "::/0"), Source: "any from any"},
	}
	if !reflect.DeepEqual(pol.Ingress, wantIngress) {
		t.Errorf("ingress\n got %+v\nwant %+v", pol.Ingress, wantIngress)
	}
	internet := op.InternetPrefixes()
	wantEgress := []ResolvedRule{
		{Proto: TCP, Ports: []PortRange{{443, 443}}, Prefixes: internet, Source: "tcp/443 to @internet"},
		{Proto: UDP, Ports: []PortRange{{53, 53}}, Prefixes: prefixes("2001:db8:0:53::/64"), Source: "udp/53 to @dns"},
		{Proto: TCP, Ports: []PortRange{{5432, 5432}}, Prefixes: []netip.Prefix{}, Services: []string{"pg-replica", "postgres"}, Source: "tcp/5432 to service:postgres, service:pg-replica, service:postgres"},
		{Proto: TCP, Ports: []PortRange{{8080, 8080}}, Prefixes: []netip.Prefix{}, Jobs: []string{"p-api"}, Source: "tcp/8080 to job:p-api"},
	}
	if !reflect.DeepEqual(pol.Egress, wantEgress) {
		t.Errorf("egress\n got %+v\nwant %+v", pol.Egress, wantEgress)
	}
	if containsAddr(pol.Egress[0].Prefixes, netip.MustParseAddr("2001:db8::1")) {
		t.Error("@internet holds the operator's internal prefix")
	}
	wantSvcs := []ServiceSpec{
		{Name: "cerebro", Port: 9000, Check: CheckHTTP, Path: "/", Tags: []string{"traefik.enable=true", "traefik.http.routers.p-cerebro.rule=Host(`p-cerebro.cloud.example`)"}},
		{Name: "admin", Port: 9001, Check: CheckHTTPS, Path: "/", Tags: []string{"traefik.enable=true", "traefik.http.routers.p-admin.rule=Host(`p-admin.cloud.example`)", "traefik.http.services.p-admin.loadbalancer.server.scheme=https"}},
		{Name: "raw", Port: 7000, Check: CheckTCP, Path: "/"},
	}
	if !reflect.DeepEqual(pol.Services, wantSvcs) {
		t.Errorf("services\n got %+v\nwant %+v", pol.Services, wantSvcs)
	}
	if pol.Tier != "p" {
		t.Errorf("tier %q, want p", pol.Tier)
	}
}

func TestEvaluateTier(t *testing.T) {
	tests := []struct {
		job, meta string
		tiers     []string
		want      string
		wantErr   bool
	}{
		{job: "p-es-cerebro", want: "p"},
		{job: "s-web", want: "s"},
		{job: "cerebro", want: ""},
		{job: "P-web", want: ""},
		{job: "x-web", tiers: []string{"p", "s"}, want: ""},
		{job: "s-web", tiers: []string{"p", "s"}, want: "s"},
		{job: "p-web", meta: "t", want: "t"},
		{job: "p-web", meta: "t", tiers: []string{"p"}, want: "", wantErr: true},
		{job: "p-web", meta: "Prod uction", want: "", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.job+"/"+tt.meta, func(t *testing.T) {
			op := DefaultOperator()
			op.Services.Tiers = tt.tiers
			meta := map[string]string{"v6reg_services": "web:80:http"}
			if tt.meta != "" {
				meta["v6reg_tier"] = tt.meta
			}
			pol, errs := Evaluate(FromNomad(meta, nil, nil), Context{Job: tt.job}, op)
			if pol.Tier != tt.want || (len(errs) > 0) != tt.wantErr {
				t.Errorf("tier %q errors %v; want %q, error %v", pol.Tier, errs, tt.want, tt.wantErr)
			}
			wantRule := "Host(`web.cloud.example`)"
			if tt.want != "" {
				wantRule = "Host(`" + tt.want + "-web.cloud.example`)"
			}
			if len(pol.Services) != 1 || !strings.HasSuffix(pol.Services[0].Tags[1], wantRule) {
				t.Errorf("services %+v, want a router rule %s", pol.Services, wantRule)
			}
		})
	}
}

// TestEvaluateErrorsGolden pins the full text of evaluation errors (bounds,
// unknown sets, located at their level). Run with -update to rewrite.
func TestEvaluateErrorsGolden(t *testing.T) {
	op := testOperator()
	noBounds := testOperator()
	delete(noBounds.Namespaces, "*")
	cases := []struct {
		name string
		ns   string
		op   Operator
		job  map[string]string
		grp  map[string]string
		task map[string]string
	}{
		{name: "unknown set", task: map[string]string{"v6reg_ingress": "tcp/80 from @treafik, @nope"}},
		{name: "restricted peers", ns: "restricted", grp: map[string]string{"v6reg_ingress": "tcp/8080 from @traefik, @ops"}},
		{name: "restricted any", ns: "restricted", job: map[string]string{"v6reg_ingress": "tcp/8080 from any; tcp/8080 from ::/0"}},
		{name: "restricted internet", ns: "restricted", job: map[string]string{"v6reg_egress": "tcp/443 to @internet"}},
		{name: "restricted prefixes", ns: "restricted", task: map[string]string{"v6reg_egress": "tcp/443 to 2001:db8:100:1::/64, 2001:db8:200::/48"}},
		{name: "restricted ports", ns: "restricted", task: map[string]string{"v6reg_ingress": "tcp/80,8000-8100,9000-9100 from @traefik; udp from @traefik; any from @traefik; icmp from @traefik"}},
		{name: "restricted egress ports", ns: "restricted", task: map[string]string{"v6reg_egress": "tcp/22 to service:bastion"}},
		{name: "another namespace's service", ns: "restricted", task: map[string]string{"v6reg_egress": "tcp/443 to service:prod/db, service:shared/db, service:restricted/db"}},
		{name: "tier outside the namespace's tiers", ns: "tiered", task: map[string]string{"v6reg_services": "web:80:http"}},
		{name: "v6reg_tier outside the namespace's tiers", ns: "tiered", job: map[string]string{"v6reg_tier": "p"}, task: map[string]string{"v6reg_services": "web:80:http"}},
		{name: "reserved and unbounded service names", ns: "restricted", task: map[string]string{"v6reg_services": "v6reg-jobs:80, api:8080, shop-api:8080"}},
		{name: "no bounds", ns: "other", op: noBounds, task: map[string]string{"v6reg_ingress": "tcp/80 from @traefik"}},
		{name: "every level at once", job: map[string]string{"v6reg_egress": "tcp/443 too @internet", "v6reg_tier": "Q"},
			grp: map[string]string{"v6reg_ingress": "tcp/80 from @traefik", "v6reg.ingress": "x"}, task: map[string]string{"v6reg_services": "web:80:grpc, API:1"}},
	}
	var b strings.Builder
	for _, c := range cases {
		o := op
		if c.op.Namespaces != nil {
			o = c.op
		}
		_, errs := Evaluate(FromNomad(c.job, c.grp, c.task), Context{Namespace: c.ns, Job: "p-web", Group: "web", Task: "api"}, o)
		if len(errs) == 0 {
			t.Errorf("%s: no errors", c.name)
		}
		fmt.Fprintf(&b, "# %s\n", c.name)
		for _, e := range errs {
			fmt.Fprintf(&b, "%s\n", e)
		}
	}
	golden.Check(t, "testdata/evaluate-errors.golden", b.String())
}

func TestEvaluateBoundsAllow(t *testing.T) {
	op := testOperator()
	pol, errs := Evaluate(FromNomad(map[string]string{
		"v6reg_ingress": "tcp/8000-8100,8443 from @traefik, 2001:db8:100:5::/64; icmp from @monitoring",
		"v6reg_egress":  "tcp/443,5432 to service:db, job:p-api",
	}, nil, nil), Context{Namespace: "restricted", Job: "p-web"}, op)
	if len(errs) > 0 {
		t.Fatalf("errors within bounds: %v", errs)
	}
	if len(pol.Ingress) != 2 || len(pol.Egress) != 1 {
		t.Errorf("policy %+v", pol)
	}
}

// TestEvaluateServiceNamespaces: service:NAME is the policy's own
// namespace's; service:NS/NAME another one's, only where the bounds allow.
func TestEvaluateServiceNamespaces(t *testing.T) {
	op := testOperator()
	pol, errs := Evaluate(FromNomad(map[string]string{
		"v6reg_egress":   "tcp/443 to service:db, service:shared/db, service:restricted/cache",
		"v6reg_services": "shop-api:8080, web:80:http",
	}, nil, nil), Context{Namespace: "restricted", Job: "p-web"}, op)
	if len(errs) > 0 {
		t.Fatalf("errors within bounds: %v", errs)
	}
	if got, want := pol.Egress[0].Services, []string{"cache", "db", "shared/db"}; !slices.Equal(got, want) {
		t.Errorf("services = %v, want %v", got, want)
	}
	if len(pol.Services) != 2 {
		t.Errorf("registered %+v, want shop-api and web", pol.Services)
	}
	// "*" opens every namespace; the default namespace bound opens none.
	op.Namespaces["restricted"] = Bounds{EgressPorts: []PortRange{{443, 443}}, ServiceNamespaces: []string{"*"}}
	if _, errs := Evaluate(FromNomad(map[string]string{"v6reg_egress": "tcp/443 to service:prod/db"}, nil, nil), Context{Namespace: "restricted"}, op); len(errs) > 0 {
		t.Errorf("service_namespaces = [*]: %v", errs)
	}
	if _, errs := Evaluate(FromNomad(map[string]string{"v6reg_egress": "tcp/443 to service:prod/db"}, nil, nil), Context{Namespace: "dev"}, op); len(errs) != 1 {
		t.Errorf("namespace without service_namespaces: errors %v, want one", errs)
	}
}

// TestEvaluateNamespaceTiers: a namespace bounded by tiers registers
// services only with one of them (positive control: tier d).
func TestEvaluateNamespaceTiers(t *testing.T) {
	op := testOperator()
	meta := map[string]string{"v6reg_services": "web:80:http"}
	if pol, errs := Evaluate(FromNomad(meta, nil, nil), Context{Namespace: "tiered", Job: "d-web"}, op); len(errs) > 0 || len(pol.Services) != 1 {
		t.Errorf("tier d: services %v errors %v", pol.Services, errs)
	}
	if pol, errs := Evaluate(FromNomad(meta, nil, nil), Context{Namespace: "tiered", Job: "p-web"}, op); len(errs) != 1 || len(pol.Services) != 0 {
		t.Errorf("tier p: services %v errors %v, want none and one error", pol.Services, errs)
	}
}

func TestOperatorValidate(t *testing.T) {
	if err := DefaultOperator().Validate(); err != nil {
		t.Fatalf("DefaultOperator().Validate() = %v", err)
	}
	if err := testOperator().Validate(); err != nil {
		t.Fatalf("testOperator().Validate() = %v", err)
	}
	tests := []struct {
		name   string
		modify func(*Operator)
		want   string
	}{
		{"host bits in a set", func(o *Operator) { o.Peers["ops"] = prefixes("2001:db8::1/64") },
			`peers "ops": prefix 2001:db8::1/64 has bits set after /64; write 2001:db8::/64`},
		{"bad set name", func(o *Operator) { o.Peers["@ops"] = nil }, `peers "@ops": invalid set name`},
		{"bad service namespace", func(o *Operator) { o.Namespaces["x"] = Bounds{ServiceNamespaces: []string{"pr od"}} },
			`namespace "x": service_namespaces: "pr od" is not a namespace name`},
		{"bad service pattern", func(o *Operator) { o.Namespaces["x"] = Bounds{Services: []string{"shop-[a"}} },
			`namespace "x": services: "shop-[a" is not a pattern`},
		{"bound names an undefined set", func(o *Operator) { o.Namespaces["x"] = Bounds{Peers: []string{"traefk"}} },
			`namespace "x": peers: @traefk is not defined; the defined sets are @dns, @internet, @monitoring, @ops, @traefik`},
		{"internet in peers", func(o *Operator) { o.Namespaces["x"] = Bounds{Peers: []string{"internet"}} },
			`namespace "x": peers: @internet is governed by allow_internet`},
		{"prefixes defeat allow_any", func(o *Operator) {
			o.Namespaces["x"] = Bounds{AllowInternet: true, Prefixes: prefixes("::/1", "8000::/1")}
		},
			`namespace "x": prefixes cover ::/0, which allows any peer while allow_any is false`},
		{"prefixes defeat allow_internet", func(o *Operator) { o.Namespaces["x"] = Bounds{Prefixes: prefixes("2a00::/16")} },
			`namespace "x": prefix 2a00::/16 overlaps @internet while allow_internet is false`},
		{"internal prefixes fine without internet", func(o *Operator) { o.Namespaces["x"] = Bounds{Prefixes: prefixes("2001:db8:1::/48")} }, ""},
		{"reversed port bound", func(o *Operator) { o.Namespaces["x"] = Bounds{IngressPorts: []PortRange{{90, 80}}} },
			`namespace "x": ingress_ports: invalid port range 90-80`},
		{"template syntax", func(o *Operator) { o.Services.Tags = append(o.Services.Tags, "{{.Service") },
			`services: tags[3] "{{.Service": template: tags[3]:1: unclosed action`},
		{"template field", func(o *Operator) { o.Services.Tags = []string{"{{.Servce}}"} },
			`services: tags[0] "{{.Servce}}": template: tags[0]:1:2: executing "tags[0]" at <.Servce>: can't evaluate field Servce`},
		{"bad tier", func(o *Operator) { o.Services.Tiers = []string{"P"} }, `services: tiers: invalid tier "P"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			op := testOperator()
			tt.modify(&op)
			err := op.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("Validate() = %v, want nil", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("Validate() = %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

// fiftyRules is a policy of 50 rules using every peer kind.
func fiftyRules() string {
	var rules []string
	for i := 0; i < 50; i++ {
		switch i % 5 {
		case 0:
			rules = append(rules, fmt.Sprintf("tcp/%d,%d-%d from @traefik, @monitoring", 8000+i, 9000+i, 9010+i))
		case 1:
			rules = append(rules, fmt.Sprintf("udp/%d from 2001:db8:%x::/48, 2001:db8:%x::1", 5000+i, i, i+1))
		case 2:
			rules = append(rules, "icmp from @ops, job:p-api")
		case 3:
			rules = append(rules, fmt.Sprintf("tcp/%d from service:svc-%d, @internet", 100+i, i))
		default:
			rules = append(rules, "any from any")
		}
	}
	return strings.Join(rules, "; ")
}

func BenchmarkEvaluate50Rules(b *testing.B) {
	op := testOperator()
	m := FromNomad(map[string]string{"v6reg_ingress": fiftyRules(), "v6reg_services": "web:80:http, api:81:https"}, nil, nil)
	ctx := Context{Job: "p-web", Group: "web", Task: "web"}
	if _, errs := Evaluate(m, ctx, op); len(errs) > 0 {
		b.Fatal(errs)
	}
	b.ReportAllocs()
	for b.Loop() {
		Evaluate(m, ctx, op)
	}
}

func BenchmarkParse50Rules(b *testing.B) {
	s := fiftyRules()
	b.ReportAllocs()
	for b.Loop() {
		ParseRules(s, Ingress)
	}
}

func FuzzEvaluate(f *testing.F) {
	f.Add("tcp/9000 from @traefik, @monitoring; icmp from @ops", "tcp/443 to @internet; udp/53 to @dns", "cerebro:9000:http", "restricted")
	f.Add("any from any", "tcp/1-65535 to ::/0", "a:1, a:2", "")
	op := testOperator()
	f.Fuzz(func(t *testing.T, in, eg, svc, ns string) {
		pol, errs := Evaluate(FromLabels(map[string]string{"v6reg.ingress": in, "v6reg.egress": eg, "v6reg.services": svc}), Context{Namespace: ns, Job: "p-x"}, op)
		for _, e := range errs {
			if e.Key == "" || e.Msg == "" {
				t.Fatalf("error without key or message: %#v", e)
			}
		}
		for _, r := range append(pol.Ingress, pol.Egress...) {
			if _, errs := ParseRules(r.Source, Ingress); len(errs) > 0 && r.Source != "" {
				if _, errs2 := ParseRules(r.Source, Egress); len(errs2) > 0 {
					t.Fatalf("resolved rule source %q does not parse", r.Source)
				}
			}
		}
	})
}

// A value of many broken rules gives MaxErrorsPerValue errors and one that
// counts the rest, each at the value's location; another value keeps its
// own errors.
func TestEvaluateErrorsCappedPerValue(t *testing.T) {
	bad := strings.Repeat("tcp/80 from @nope; ", 25)
	_, errs := Evaluate(FromLabels(map[string]string{"v6reg.ingress": bad, "v6reg.egress": "tcp/443 too @internet"}),
		Context{Namespace: "default"}, DefaultOperator())
	var ingress, egress []*Error
	for _, e := range errs {
		switch e.Key {
		case "v6reg.ingress":
			ingress = append(ingress, e)
		case "v6reg.egress":
			egress = append(egress, e)
		default:
			t.Errorf("error with key %q: %v", e.Key, e)
		}
	}
	if len(ingress) != MaxErrorsPerValue+1 {
		t.Fatalf("ingress: %d errors, want %d + 1: %v", len(ingress), MaxErrorsPerValue, ingress)
	}
	last := ingress[MaxErrorsPerValue].Error()
	if want := `label "v6reg.ingress": 15 more errors in this value are not shown; fix the errors above first`; !strings.HasPrefix(last, want) {
		t.Errorf("last ingress error %q, want it to start with %q", last, want)
	}
	if len(egress) != 1 {
		t.Errorf("egress: %d errors, want its own 1: %v", len(egress), egress)
	}
}

// TestTagTemplatesRefuseUnsafeNames: Nomad lets a job's author put nearly
// any character in job, group and task names; a template that uses one of
// them must not let a backquote rewrite the Traefik rule it builds. The
// same template with a plain name (positive control) renders, and a
// template that does not use the field ignores it.
func TestTagTemplatesRefuseUnsafeNames(t *testing.T) {
	op := DefaultOperator()
	op.Services.Tags = []string{"traefik.http.routers.{{.Name}}.rule=Host(`{{.Job}}.{{.Domain}}`)"}
	meta := FromNomad(map[string]string{"v6reg_services": "web:80:http"}, nil, nil)
	hostile := "x`)||Host(`victim.example"
	_, errs := Evaluate(meta, Context{Job: hostile, Group: "g", Task: "t"}, op)
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), `the job name "`+hostile+`" holds '`+"`"+`'`) {
		t.Fatalf("hostile job name: errors %v, want one refusing it", errs)
	}
	// However the template reaches the field.
	for _, tpl := range []string{"x={{.}}", `x={{printf "%v" .Job}}`, "{{with .Job}}{{.}}{{end}}"} {
		op.Services.Tags = []string{tpl}
		if _, errs := Evaluate(meta, Context{Job: hostile, Group: "g", Task: "t"}, op); len(errs) != 1 {
			t.Errorf("template %q: errors %v, want the job name refused", tpl, errs)
		}
	}
	op.Services.Tags = []string{"traefik.http.routers.{{.Name}}.rule=Host(`{{.Job}}.{{.Domain}}`)"}
	pol, errs := Evaluate(meta, Context{Job: "p-web", Group: "g", Task: "t"}, op)
	if len(errs) != 0 || len(pol.Services) != 1 || pol.Services[0].Tags[0] != "traefik.http.routers.p-web.rule=Host(`p-web.cloud.example`)" {
		t.Fatalf("plain job name: %v %+v", errs, pol.Services)
	}
	op.Services.Tags = []string{"traefik.enable=true"}
	if _, errs := Evaluate(meta, Context{Job: hostile, Group: "g", Task: "t"}, op); len(errs) != 0 {
		t.Errorf("a template without .Job refused the job name: %v", errs)
	}
}
