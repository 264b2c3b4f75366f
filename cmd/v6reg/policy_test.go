package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/v6reg/v6reg/internal/golden"
	"github.com/v6reg/v6reg/policies"
)

// The sample jobs and the expected outputs live with the policies package.
const (
	jobsDir   = "../../policies/testdata/jobs"
	goldenDir = "../../policies/testdata/check"
)

// restrictedOperator stands in for a config file: it keeps the default sets
// and bounds and adds a narrow namespace "restricted".
func restrictedOperator(string) (policies.Operator, error) {
	op := policies.DefaultOperator()
	op.Internal = []netip.Prefix{netip.MustParsePrefix("2001:db8::/32")}
	op.Namespaces["restricted"] = policies.Bounds{
		Peers:        []string{"traefik", "monitoring"},
		Prefixes:     []netip.Prefix{netip.MustParsePrefix("2001:db8:100::/48")},
		IngressPorts: []policies.PortRange{{From: 8000, To: 8999}},
		EgressPorts:  []policies.PortRange{{From: 443, To: 443}},
	}
	return op, nil
}

// limitsOperator stands in for a config file with a limits block.
func limitsOperator(string) (policies.Operator, error) {
	op := policies.DefaultOperator()
	op.Limits = policies.Limits{ContainerElements: 50, ContainerPeers: 1, NodeElements: 1000, NodePeerSets: 10, PeerSetAddresses: 10}
	return op, nil
}

func TestPolicyCheck(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		stdin    string // a file in jobsDir piped to standard input
		config   func(string) (policies.Operator, error)
		wantExit int
	}{
		{name: "fixture", args: []string{"check", jobsDir + "/fixture-api.json"}, wantExit: 0},
		{name: "fixture-json", args: []string{"check", "-format", "json", jobsDir + "/fixture-api.json"}, wantExit: 0},
		{name: "clean-wrapped-stdin", args: []string{"check", "-"}, stdin: "clean-wrapped.json", wantExit: 0},
		{name: "clean-wrapped-json", args: []string{"check", "-format=json"}, stdin: "clean-wrapped.json", wantExit: 0},
		{name: "syntax-errors", args: []string{"check", jobsDir + "/syntax-errors.json"}, wantExit: 1},
		{name: "syntax-errors-json", args: []string{"check", jobsDir + "/syntax-errors.json", "-format", "json"}, wantExit: 1},
		{name: "out-of-bounds", args: []string{"check", jobsDir + "/out-of-bounds.json"}, wantExit: 1},
		{name: "tenants", args: []string{"check", jobsDir + "/tenants.json"}, wantExit: 1},
		{name: "restricted-default-config", args: []string{"check", jobsDir + "/restricted.json"}, wantExit: 0},
		{name: "restricted-config", args: []string{"check", "-config", "/etc/v6reg/v6reg.hcl", jobsDir + "/restricted.json"}, config: restrictedOperator, wantExit: 1},
		{name: "namespace-flag", args: []string{"check", "-namespace", "restricted", "-config", "x.hcl", jobsDir + "/clean-wrapped.json"}, config: restrictedOperator, wantExit: 1},
		{name: "config-unavailable", args: []string{"check", "-config", "/etc/v6reg/v6reg.hcl", jobsDir + "/fixture-api.json"}, wantExit: 2},
		{name: "config-error", args: []string{"check", "-config", "bad.hcl", jobsDir + "/fixture-api.json"},
			config: func(string) (policies.Operator, error) {
				return policies.Operator{}, errors.New("bad.hcl:3,1: unexpected token")
			}, wantExit: 2},
		{name: "config-invalid", args: []string{"check", "-config", "bad.hcl", jobsDir + "/fixture-api.json"},
			config: func(string) (policies.Operator, error) {
				op := policies.DefaultOperator()
				op.Services.Tags = []string{"{{.Nope}}"}
				return op, nil
			}, wantExit: 2},
		{name: "limits-default", args: []string{"check", jobsDir + "/limits.json"}, wantExit: 1},
		{name: "limits-config", args: []string{"check", "-config", "v6reg.hcl", jobsDir + "/limits.json"}, config: limitsOperator, wantExit: 1},
		{name: "limits-config-json", args: []string{"check", "-format", "json", "-config", "v6reg.hcl", jobsDir + "/limits.json"}, config: limitsOperator, wantExit: 1},
		{name: "broken-json", args: []string{"check", jobsDir + "/broken.json"}, wantExit: 2},
		{name: "wrong-type", args: []string{"check", jobsDir + "/wrong-type.json"}, wantExit: 2},
		{name: "hcl", args: []string{"check", jobsDir + "/job.nomad.hcl"}, wantExit: 2},
		{name: "not-a-job", args: []string{"check", jobsDir + "/not-a-job.json"}, wantExit: 2},
		{name: "no-groups", args: []string{"check", jobsDir + "/no-groups.json"}, wantExit: 2},
		{name: "missing-file", args: []string{"check", jobsDir + "/does-not-exist.json"}, wantExit: 2},
		{name: "empty-stdin", args: []string{"check"}, stdin: "/dev/null", wantExit: 2},
		{name: "bad-format", args: []string{"check", "-format", "yaml", "x.json"}, wantExit: 2},
		{name: "two-files", args: []string{"check", "a.json", "b.json"}, wantExit: 2},
		{name: "unknown-subcommand", args: []string{"lint"}, wantExit: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			saved := loadOperatorConfig
			loadOperatorConfig = tt.config
			t.Cleanup(func() { loadOperatorConfig = saved })
			var stdin bytes.Buffer
			if tt.stdin != "" {
				path := tt.stdin
				if !filepath.IsAbs(path) {
					path = filepath.Join(jobsDir, path)
				}
				data, err := os.ReadFile(path)
				if err != nil {
					t.Fatal(err)
				}
				stdin.Write(data)
			}
			var stdout, stderr bytes.Buffer
			exit := runPolicy(tt.args, &stdin, &stdout, &stderr)
			if exit != tt.wantExit {
				t.Errorf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", exit, tt.wantExit, &stdout, &stderr)
			}
			if exit == 2 && stderr.Len() == 0 {
				t.Error("exit 2 without a message on stderr")
			}
			if (strings.Contains(strings.Join(tt.args, " "), "-format json") || strings.Contains(strings.Join(tt.args, " "), "-format=json")) && exit != 2 {
				var v map[string]any
				if err := json.Unmarshal(stdout.Bytes(), &v); err != nil {
					t.Errorf("-format json output is not JSON: %v", err)
				}
			}
			got := fmt.Sprintf("exit %d\n--- stdout\n%s--- stderr\n%s", exit, &stdout, &stderr)
			golden.Check(t, filepath.Join(goldenDir, tt.name+".golden"), got)
		})
	}
}

// TestPolicyCheckReportsJobErrorOnce: an error in job meta applies to every
// task but is one mistake; it must be printed once.
func TestPolicyCheckReportsJobErrorOnce(t *testing.T) {
	job := `{"ID":"p-x","Meta":{"v6reg_egress":"tcp/443 too @internet"},"TaskGroups":[` +
		`{"Name":"a","Tasks":[{"Name":"a1"},{"Name":"a2"}]},{"Name":"b","Tasks":[{"Name":"b1"}]}]}`
	var stdout, stderr bytes.Buffer
	if exit := runPolicy([]string{"check"}, strings.NewReader(job), &stdout, &stderr); exit != 1 {
		t.Fatalf("exit %d, want 1; stderr %s", exit, &stderr)
	}
	if n := strings.Count(stdout.String(), "too"); n != 1 {
		t.Errorf("the job-level error is printed %d times, want once:\n%s", n, &stdout)
	}
}

// bigJob is a job with n groups of two tasks each, with policies at every
// level.
func bigJob(n int) []byte {
	var groups []string
	for i := 0; i < n; i++ {
		groups = append(groups, fmt.Sprintf(`{"Name":"g%d","Meta":{"v6reg_ingress":"tcp/%d from @traefik, @monitoring; icmp from @ops"},"Tasks":[`+
			`{"Name":"main","Meta":{"v6reg_services":"svc%d:%d:http"}},{"Name":"side","Meta":{"v6reg_egress":"tcp/5432 to service:db%d; tcp/443 to @internet"}}]}`, i, 8000+i, i, 8000+i, i))
	}
	return []byte(`{"Job":{"ID":"p-big","Name":"p-big","Meta":{"v6reg_egress":"tcp/443 to @internet; udp/53 to @dns"},"TaskGroups":[` + strings.Join(groups, ",") + `]}}`)
}

func BenchmarkPolicyCheck20Groups(b *testing.B) {
	job := bigJob(20)
	var out bytes.Buffer
	if exit := runPolicy([]string{"check"}, bytes.NewReader(job), &out, &out); exit != 0 {
		b.Fatalf("exit %d: %s", exit, &out)
	}
	b.ReportAllocs()
	for b.Loop() {
		out.Reset()
		runPolicy([]string{"check"}, bytes.NewReader(job), &out, &out)
	}
}

// FuzzPolicyCheck feeds arbitrary input to the command: it must not panic,
// and exit 2 always comes with a message.
func FuzzPolicyCheck(f *testing.F) {
	for _, name := range []string{"fixture-api.json", "clean-wrapped.json", "syntax-errors.json", "broken.json", "wrong-type.json"} {
		data, err := os.ReadFile(filepath.Join(jobsDir, name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var stdout, stderr bytes.Buffer
		exit := runPolicy([]string{"check", "-format", "json"}, bytes.NewReader(data), &stdout, &stderr)
		switch exit {
		case 0, 1:
			var v map[string]any
			if err := json.Unmarshal(stdout.Bytes(), &v); err != nil {
				t.Fatalf("exit %d with output that is not JSON: %v", exit, err)
			}
		case 2:
			if stderr.Len() == 0 {
				t.Fatal("exit 2 without a message")
			}
		default:
			t.Fatalf("exit %d", exit)
		}
	})
}
