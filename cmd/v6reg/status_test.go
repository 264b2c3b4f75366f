package main

import (
	"bytes"
	"net/netip"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/v6reg/v6reg/api"

	"github.com/v6reg/v6reg/internal/golden"
)

// healthSnapshot is a node as the status API serves it: widest host parts
// and drop counts of a /80, a service whose check passes, one that Consul
// finds critical, one it does not know, and a refused policy.
func healthSnapshot() *api.Snapshot {
	return &api.Snapshot{
		Node: "n1", Prefix: "2001:db8:1:2:3::/80", At: time.Now(), Nomad: "ok",
		Containers: []api.ContainerState{
			{ID: "aa01", Name: "web", Address: "2001:db8:1:2:3:fffe:ffff:ffff", Job: "p-cerebro-frontend", Task: "cerebro",
				AllocID: "5f3a2c1b-0000-0000-0000-000000000000", Ingress: make([]api.RuleState, 2), Egress: make([]api.RuleState, 1),
				Drops: &api.DropState{IngressPackets: 12345, EgressPackets: 7},
				Services: []api.ServiceState{
					{Name: "cerebro", Port: 9000, Check: "http", Health: "passing", Output: "HTTP GET http://[2001:db8:1:2:3:fffe:ffff:ffff]:9000/: 200 OK Output: ok"},
					{Name: "cerebro-admin", Port: 9001, Check: "tcp", Health: "critical",
						Output: "dial tcp [2001:db8:1:2:3:fffe:ffff:ffff]:9001: connect: connection refused"},
					{Name: "v6reg-jobs", Check: ""},
				}},
			{ID: "bb01", Name: "db", Address: "2001:db8:1:2:3:1:2:3", Job: "p-db", Task: "p-db", Ingress: make([]api.RuleState, 1),
				Drops:    &api.DropState{},
				Services: []api.ServiceState{{Name: "db", Port: 5432, Check: "tcp", Health: api.HealthUnknown, Output: "consul holds no check for this service (not registered yet?)"}}},
			{ID: "cc01", Name: "bad", Address: "2001:db8:1:2:3:abcd::1", Job: "p-bad", Task: "p-bad", Closed: true,
				Reason: "policy refused", Errors: []string{`v6reg.ingress:1:8: unknown word "form"; want from`},
				Drops: &api.DropState{},
				Services: []api.ServiceState{{Name: "v6reg-policy-errors", Check: "critical", Health: "critical",
					Output: "v6reg refused this container's policy; it stays closed until fixed:\nv6reg.ingress:1:8: ..."}}},
			{ID: "dd01", Name: "fetch", Address: "2001:db8:1:2:3:9::9", Job: "p-fetch", Task: "p-fetch", Egress: make([]api.RuleState, 1)},
		},
	}
}

// printedStatus is the text status of s, every line of it within 80
// columns.
func printedStatus(t *testing.T, s *api.Snapshot) string {
	t.Helper()
	var b bytes.Buffer
	printStatus(&b, s)
	got := b.String()
	for i, line := range strings.Split(got, "\n") {
		if len(line) > 80 {
			t.Errorf("line %d is %d columns (max 80): %q", i+1, len(line), line)
		}
	}
	return got
}

var reAgo = regexp.MustCompile(`reconciled \S+ ago`)

func TestPrintStatusHealth(t *testing.T) {
	got := printedStatus(t, healthSnapshot())
	for _, want := range []string{
		"::fffe:ffff:ffff",
		"cerebro:~ CRIT", // the worst of the container's checks, the names cut to fit
		"db:5432 ?",
		" CRIT ", // the refused policy's check, though it declares no service
		"p-cerebro-frontend/cerebro: consul cerebro-admin:9001 critical:\n    dial tcp",
		"connect: connection refused",
		"p-bad: consul v6reg-policy-errors critical: the policy error above",
		"p-db: consul db:5432 unknown:\n    consul holds no check",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("status table lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "consul cerebro:9000") {
		t.Errorf("a passing service got a note:\n%s", got)
	}
	golden.Check(t, filepath.Join("testdata", "status-health.golden"), reAgo.ReplaceAllString(got, "reconciled <dur> ago"))
}

func TestPrintStatusConsulSilent(t *testing.T) {
	s := healthSnapshot()
	s.HealthErr = `asking consul for its checks: Get "http://127.0.0.1:8500/v1/agent/checks": context deadline exceeded`
	for i := range s.Containers {
		for j := range s.Containers[i].Services {
			s.Containers[i].Services[j].Health, s.Containers[i].Services[j].Output = api.HealthUnknown, ""
		}
	}
	var b bytes.Buffer
	printStatus(&b, s)
	got := b.String()
	if !strings.Contains(got, "Consul did not answer: asking consul for its checks: ") || !strings.Contains(got, "; health unknown\n") {
		t.Errorf("status does not say Consul did not answer:\n%s", got)
	}
	if !strings.Contains(got, "cerebro:900~ ?") || !strings.Contains(got, "db:5432 ?") {
		t.Errorf("status does not show unknown health:\n%s", got)
	}
	// The line on top says why; no note per service repeats it.
	if strings.Contains(got, "cerebro-admin:9001 unknown") {
		t.Errorf("status repeats the unknown health per service:\n%s", got)
	}
}

func TestPrintStatusSpoofing(t *testing.T) {
	s := healthSnapshot()
	s.Spoofed = &api.SpoofState{BridgePortPackets: 27, SourcePackets: 1234567}
	var b bytes.Buffer
	printStatus(&b, s)
	line := "SPOOFING: 27 frames dropped at bridge ports, 1234567 packets with forged sources\n"
	if got := b.String(); !strings.Contains(got, line) {
		t.Errorf("status lacks %q:\n%s", line, got)
	}
	if len(line) > 81 {
		t.Errorf("spoofing line is %d columns (max 80)", len(line)-1)
	}
	// Nothing dropped: no line.
	s.Spoofed = &api.SpoofState{}
	b.Reset()
	printStatus(&b, s)
	if strings.Contains(b.String(), "SPOOFING") {
		t.Errorf("a spoofing line with nothing dropped:\n%s", b.String())
	}
}

func TestWrap(t *testing.T) {
	tests := []struct {
		in   string
		max  int
		want []string
	}{
		{"short", 3, []string{"    short"}},
		{"aaaa bbbb cccc", 3, []string{"    aaaa", "    bbbb", "    cccc"}},
		{"aaaa bbbb cccc dddd", 2, []string{"    aaaa", "    bbbb~"}},
		{"aaaaaaaaaaaa", 2, []string{"    aaaaaa", "    aaaaaa"}},
		{"aaaaaaaaaaaaa", 2, []string{"    aaaaaa", "    aaaaa~"}},
	}
	for _, tt := range tests {
		got := wrap(tt.in, "    ", 10, tt.max)
		if strings.Join(got, "|") != strings.Join(tt.want, "|") {
			t.Errorf("wrap(%q, max %d) = %q, want %q", tt.in, tt.max, got, tt.want)
		}
	}
}

func TestHostPart(t *testing.T) {
	for _, tc := range []struct{ prefix, addr, want string }{
		{"2001:db8:1:2:3::/80", "2001:db8:1:2:3:ef2f:140f:a512", "::ef2f:140f:a512"},
		// A first host group of ffff is not an IPv4-mapped address.
		{"2001:db8:1:2:3::/80", "2001:db8:1:2:3:ffff:102:304", "::ffff:102:304"},
		{"2001:db8:1:2:3::/80", "2001:db8:1:2:3:0:0:5", "::5"},
		{"2001:db8:1:2:3::/80", "2001:db8:1:2:3::", "::"},
		{"2001:db8:1:2::/64", "2001:db8:1:2:1:0:0:5", "::1:0:0:5"},
		{"2001:db8:1:2:3::/80", "2001:db8:9::1", "2001:db8:9::1"},
		{"2001:db8:1:2:3::/80", "banana", "-"},
	} {
		prefix := netip.MustParsePrefix(tc.prefix)
		if got := hostPart(prefix, tc.addr); got != tc.want {
			t.Errorf("hostPart(%s, %s) = %q, want %q", prefix, tc.addr, got, tc.want)
		}
	}
}
