package policies

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/v6reg/v6reg/internal/golden"
)

// stripCols zeroes the positions, which are not part of a rule's meaning.
func stripCols(rules []Rule) []Rule {
	out := make([]Rule, len(rules))
	for i, r := range rules {
		r.Col, r.PortsCol = 0, 0
		peers := make([]Peer, len(r.Peers))
		for j, p := range r.Peers {
			p.Col = 0
			peers[j] = p
		}
		r.Peers = peers
		out[i] = r
	}
	return out
}

func errTexts(errs []*Error) []string {
	var s []string
	for _, e := range errs {
		s = append(s, e.Detail())
	}
	return s
}

func TestParseRules(t *testing.T) {
	tests := []struct {
		name, in string
		dir      Direction
		want     string // canonical print; "" with wantErrs
		wantErrs int
	}{
		{"proposal ingress", "tcp/9000 from @traefik, @monitoring; icmp from @ops", Ingress, "tcp/9000 from @traefik, @monitoring; icmp from @ops", 0},
		{"proposal egress", "tcp/5432 to service:postgres; tcp/443 to @internet; udp/53 to @dns", Egress, "tcp/5432 to service:postgres; tcp/443 to @internet; udp/53 to @dns", 0},
		{"empty", "", Ingress, "", 0},
		{"blank and stray semicolons", " ; ;\n", Ingress, "", 0},
		{"trailing semicolon", "tcp/80 from any;", Ingress, "tcp/80 from any", 0},
		{"no ports means all", "tcp from @a", Ingress, "tcp from @a", 0},
		{"all ports written", "udp/1-65535 from @a", Ingress, "udp from @a", 0},
		{"range", "tcp/8000-8100 from @a", Ingress, "tcp/8000-8100 from @a", 0},
		{"port list", "tcp/443,80 from @a", Ingress, "tcp/80,443 from @a", 0},
		{"port list with spaces", "tcp/443, 80 ,8080 from @a, @b", Ingress, "tcp/80,443,8080 from @a, @b", 0},
		{"ports merged", "tcp/80,81,82-90,85 from @a", Ingress, "tcp/80-90 from @a", 0},
		{"duplicate port", "tcp/80,80 from @a", Ingress, "tcp/80 from @a", 0},
		{"tabs and newlines", "tcp/80\tfrom\n@a ,\n@b", Ingress, "tcp/80 from @a, @b", 0},
		{"peers without spaces", "tcp/80 from @a,@b,any", Ingress, "tcp/80 from @a, @b, any", 0},
		{"address is /128", "tcp/22 from 2001:db8::1", Ingress, "tcp/22 from 2001:db8::1", 0},
		{"address as /128", "tcp/22 from 2001:db8::1/128", Ingress, "tcp/22 from 2001:db8::1", 0},
		{"prefix", "tcp/22 from 2001:DB8::/32", Ingress, "tcp/22 from 2001:db8::/32", 0},
		{"all peer kinds", "any to ::/0, @x, service:db, job:p-web, any", Egress, "any to ::/0, @x, service:db, job:p-web, any", 0},
		{"icmp", "icmp to @ops", Egress, "icmp to @ops", 0},
		{"names with dots", "tcp/80 to service:a.b_c-d, job:x.y", Egress, "tcp/80 to service:a.b_c-d, job:x.y", 0},
		{"every rule reported", "tcp/80 form @a; udp/70000 from @b; tcp/80 from @ok", Ingress, "tcp/80 from @ok", 2},
		{"to in ingress", "tcp/80 to @a", Ingress, "", 1},
		{"from in egress", "tcp/80 from @a", Egress, "", 1},
		{"missing direction", "tcp/80 @a", Ingress, "", 1},
		{"missing peers", "tcp/80 from", Ingress, "", 1},
		{"trailing comma in peers", "tcp/80 from @a,", Ingress, "", 1},
		{"two peers without comma", "tcp/80 from @a @b", Ingress, "", 1},
		{"port zero", "tcp/0 from @a", Ingress, "", 1},
		{"port too big", "tcp/65536 from @a", Ingress, "", 1},
		{"reversed range", "tcp/90-80 from @a", Ingress, "", 1},
		{"icmp ports", "icmp/8 from @a", Ingress, "", 1},
		{"any ports", "any/80 from @a", Ingress, "", 1},
		{"unknown proto", "sctp/80 from @a", Ingress, "", 1},
		{"upper case proto", "TCP/80 from @a", Ingress, "", 1},
		{"ipv4 peer", "tcp/80 from 10.0.0.0/8", Ingress, "", 1},
		{"host bits", "tcp/80 from 2001:db8::1/32", Ingress, "", 1},
		{"zone", "tcp/80 from fe80::1%eth0", Ingress, "", 1},
		{"bare name", "tcp/80 from traefik", Ingress, "", 1},
		{"empty set name", "tcp/80 from @", Ingress, "", 1},
		{"bad service name", "tcp/80 to service:-x", Egress, "", 1},
		{"empty port", "tcp/ from @a", Ingress, "", 1},
		{"dangling port comma", "tcp/80, from @a", Ingress, "", 1},
		{"leading comma", ", tcp/80 from @a", Ingress, "", 1},
		{"space in range", "tcp/8000 - 8100 from @a", Ingress, "", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rules, errs := ParseRules(tt.in, tt.dir)
			if len(errs) != tt.wantErrs {
				t.Fatalf("ParseRules(%q): %d errors %q, want %d", tt.in, len(errs), errTexts(errs), tt.wantErrs)
			}
			if got := FormatRules(rules); got != tt.want {
				t.Errorf("ParseRules(%q) prints %q, want %q", tt.in, got, tt.want)
			}
			for _, e := range errs {
				if e.Column < 1 || e.Column > len([]rune(tt.in))+1 {
					t.Errorf("error %q: column %d outside the value (length %d)", e.Detail(), e.Column, len(tt.in))
				}
			}
		})
	}
}

func TestParseRulesStructure(t *testing.T) {
	rules, errs := ParseRules("tcp/80,8000-8100 from 2001:db8::/48, @traefik; icmp from job:p-ops", Ingress)
	if len(errs) > 0 {
		t.Fatal(errTexts(errs))
	}
	want := []Rule{
		{Proto: TCP, Ports: []PortRange{{80, 80}, {8000, 8100}}, Dir: Ingress, Col: 1, PortsCol: 5, Peers: []Peer{
			{Kind: PeerPrefix, Prefix: mustPrefix("2001:db8::/48"), Col: 23}, {Kind: PeerSet, Name: "traefik", Col: 38}}},
		{Proto: ICMP, Dir: Ingress, Col: 48, Peers: []Peer{{Kind: PeerJob, Name: "p-ops", Col: 58}}},
	}
	if !reflect.DeepEqual(rules, want) {
		t.Errorf("got  %+v\nwant %+v", rules, want)
	}
}

func TestParseServices(t *testing.T) {
	tests := []struct {
		in       string
		want     string
		wantErrs int
	}{
		{"cerebro:9000:http", "cerebro:9000:http", 0},
		{"web:80", "web:80:tcp", 0},
		{"a:1:tcp, b:2:https; c:3:http", "a:1:tcp, b:2:https, c:3:http", 0},
		{" a:1 ,, ;", "a:1:tcp", 0},
		{"", "", 0},
		{"web", "", 1},
		{"web:", "", 1},
		{"web:0", "", 1},
		{"web:65536:http", "", 1},
		{"web:80:grpc", "", 1},
		{"web:80:HTTP", "", 1},
		{"Web:80", "", 1},
		{"web_api:80", "", 1},
		{"-web:80", "", 1},
		{"web:80:http:/health", "", 1},
		{"web:80:http/healthz", "web:80:http/healthz", 0},
		{"web:80:https/api/v1/health?full=1", "web:80:https/api/v1/health?full=1", 0},
		{"web:80:http/", "web:80:http", 0},
		{"web:80:http/a%2Cb", "web:80:http/a%2Cb", 0},
		{"web:80:tcp/health", "", 1},
		{"web:80/x:http", "", 1},
		{"web:80:http/a%zz", "", 1},
		{"web:80:http/a#frag", "", 1},
		{"web:80:http/a\"b", "", 1},
		{"web:80:http/" + strings.Repeat("a", 256), "", 1},
		{"web:80:http/a,b:81", "web:80:http/a, b:81:tcp", 0}, // a comma ends the entry
		{"web:80 http", "", 1},
		{"web:80, web:81", "web:80:tcp", 1},
		{strings.Repeat("a", 64) + ":80", "", 1},
		{strings.Repeat("a", 63) + ":80", strings.Repeat("a", 63) + ":80:tcp", 0},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			svcs, errs := ParseServices(tt.in)
			if len(errs) != tt.wantErrs {
				t.Fatalf("ParseServices(%q): errors %q, want %d", tt.in, errTexts(errs), tt.wantErrs)
			}
			if got := FormatServices(svcs); got != tt.want {
				t.Errorf("ParseServices(%q) prints %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

// TestErrorMessagesGolden pins the exact text of parse errors: they are
// the user interface. Run with -update to rewrite testdata/errors.golden.
func TestErrorMessagesGolden(t *testing.T) {
	inputs := []struct{ kind, in string }{
		{"ingress", "tcp/80 form @traefik"},
		{"ingress", "tcp/80 to @traefik"},
		{"egress", "tcp/443 from @internet"},
		{"ingress", "tcp/80 From @traefik"},
		{"ingress", "tcp/80 @traefik"},
		{"ingress", "tcp/80"},
		{"ingress", "tcp/80 from"},
		{"ingress", "tcp/80 from @a,"},
		{"ingress", "tcp/80 from @a @b"},
		{"ingress", "tcp/80 from @a from @b"},
		{"ingress", "tcp/70000 from @a"},
		{"ingress", "tcp/0 from @a"},
		{"ingress", "tcp/8100-8000 from @a"},
		{"ingress", "tcp/80-x from @a"},
		{"ingress", "tcp/80,udp/53 from @a"},
		{"ingress", "tcp/ from @a"},
		{"ingress", "tcp/80, from @a"},
		{"ingress", "tcp/8000 - 8100 from @a"},
		{"ingress", "tcp /80 from @a"},
		{"ingress", "icmp/8 from @ops"},
		{"ingress", "any/80 from @a"},
		{"ingress", "tpc/80 from @a"},
		{"ingress", "TCP/80 from @a"},
		{"ingress", "icmpv6 from @ops"},
		{"ingress", "sctp/80 from @a"},
		{"ingress", ", tcp/80 from @a"},
		{"ingress", "tcp/80 from traefik"},
		{"ingress", "tcp/80 from ANY"},
		{"ingress", "tcp/80 from @"},
		{"ingress", "tcp/80 from @bad!name"},
		{"egress", "tcp/80 to service:"},
		{"egress", "tcp/80 to Service:db"},
		{"egress", "tcp/80 to job:-x"},
		{"ingress", "tcp/80 from 10.0.0.0/8"},
		{"ingress", "tcp/80 from 2001:db8::1/32"},
		{"ingress", "tcp/80 from fe80::1%eth0"},
		{"ingress", "tcp/80 from 2001:db8::zz"},
		{"ingress", "tcp/80 from @ä; tcp/22 form ü"},
		{"ingress", "tcp/80 from service:pr_od/db"},
		{"ingress", "tcp/80 from service:prod/"},
		{"ingress", "tcp/80 from service:prod/-db"},
		{"services", "web"},
		{"services", "web:"},
		{"services", "web:99999"},
		{"services", "web:80:grpc"},
		{"services", "web:80:HTTP"},
		{"services", "Web:80"},
		{"services", "web:80 http"},
		{"services", "web:80, web:81"},
	}
	var b strings.Builder
	for _, in := range inputs {
		var errs []*Error
		switch in.kind {
		case "ingress":
			_, errs = ParseRules(in.in, Ingress)
		case "egress":
			_, errs = ParseRules(in.in, Egress)
		case "services":
			_, errs = ParseServices(in.in)
		}
		if len(errs) == 0 {
			t.Errorf("%s %q: no error", in.kind, in.in)
		}
		fmt.Fprintf(&b, "%s %q\n", in.kind, in.in)
		for _, e := range errs {
			fmt.Fprintf(&b, "\t%s\n", e.Detail())
		}
	}
	golden.Check(t, "testdata/errors.golden", b.String())
}

// checkRoundTrip asserts that whatever parses prints to a canonical form that
// parses to the same rules and prints the same again.
func checkRoundTrip(t *testing.T, in string, dir Direction) {
	rules, errs := ParseRules(in, dir)
	for _, e := range errs {
		if e.Column < 1 {
			t.Fatalf("ParseRules(%q): error without column: %q", in, e.Detail())
		}
	}
	printed := FormatRules(rules)
	again, errs := ParseRules(printed, dir)
	if len(errs) > 0 {
		t.Fatalf("ParseRules(%q) printed %q, which does not parse: %q", in, printed, errTexts(errs))
	}
	if !reflect.DeepEqual(stripCols(rules), stripCols(again)) {
		t.Fatalf("ParseRules(%q) printed %q, which parses to something else:\n%+v\n%+v", in, printed, rules, again)
	}
	if p2 := FormatRules(again); p2 != printed {
		t.Fatalf("printing is not stable: %q then %q", printed, p2)
	}
}

func FuzzParseRules(f *testing.F) {
	for _, s := range []string{
		"tcp/9000 from @traefik, @monitoring; icmp from @ops",
		"tcp/5432 to service:postgres; tcp/443 to @internet; udp/53 to @dns",
		"tcp/80,443,8000-8100 from 2001:db8::/32, ::1, any, job:x",
		"any to ::/0", "tcp/80 form @a", "udp/1-65535 from @a;;", "tcp/80 from 2001:db8::1/32",
		"tcp/65535,1 from @a.b", "icmp from ::ffff:1.2.3.4",
	} {
		f.Add(s, true)
		f.Add(s, false)
	}
	f.Fuzz(func(t *testing.T, in string, ingress bool) {
		dir := Egress
		if ingress {
			dir = Ingress
		}
		start := time.Now()
		checkRoundTrip(t, in, dir)
		if d := time.Since(start); d > time.Second && len(in) < 1<<16 {
			t.Fatalf("parsing %d bytes took %v", len(in), d)
		}
	})
}

func FuzzParseServices(f *testing.F) {
	for _, s := range []string{"cerebro:9000:http", "a:1, b:2:https; c:3:tcp", "web:80:grpc", "web:80, web:81", "", "web:80:http/", "web:80:https/a/b?c=%2C", "web:80:tcp/x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		svcs, _ := ParseServices(in)
		printed := FormatServices(svcs)
		again, errs := ParseServices(printed)
		if len(errs) > 0 {
			t.Fatalf("ParseServices(%q) printed %q, which does not parse: %q", in, printed, errTexts(errs))
		}
		for i := range svcs {
			svcs[i].Col = 0
		}
		for i := range again {
			again[i].Col = 0
		}
		if !reflect.DeepEqual(svcs, again) {
			t.Fatalf("ParseServices(%q) printed %q, which parses to something else", in, printed)
		}
	})
}

// TestParseLargeInputs: long values stay linear and errors stay bounded.
func TestParseLargeInputs(t *testing.T) {
	for _, in := range []string{
		strings.Repeat("x;", MaxValueLen/2),
		strings.Repeat("tcp/80 from @a, ", MaxValueLen/16),
		strings.Repeat("ü", MaxValueLen/2),
		strings.Repeat("tcp/1,", MaxValueLen/6) + " from @a",
	} {
		start := time.Now()
		_, errs := ParseRules(in, Ingress)
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("parsing %d bytes took %v", len(in), d)
		}
		if len(errs) > maxErrors+1 {
			t.Errorf("%d errors for one value, want at most %d", len(errs), maxErrors+1)
		}
	}
	_, errs := ParseRules(strings.Repeat(" ", MaxValueLen+1), Ingress)
	if len(errs) != 1 || !strings.Contains(errs[0].Msg, "at most 65536") {
		t.Errorf("over-long value: %v", errTexts(errs))
	}
	_, errs = ParseServices(strings.Repeat(",", MaxValueLen+1))
	if len(errs) != 1 {
		t.Errorf("over-long services value: %v", errTexts(errs))
	}
}
