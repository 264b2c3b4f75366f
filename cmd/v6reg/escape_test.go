package main

import (
	"bytes"
	"strings"
	"testing"
	"time"
	"unicode"

	"github.com/v6reg/v6reg/api"
)

func TestEscapeText(t *testing.T) {
	for in, want := range map[string]string{
		"web-1":              "web-1", // positive control: untouched
		"grüße":              "grüße",
		"a\x1b[2Jb":          `a\x1b[2Jb`,
		"ok\rFAKE":           `ok\x0dFAKE`,
		"line\nnext\tcol":    `line\x0anext\x09col`,
		"\u202eevil":         `\u202eevil`,
		"bad\xffutf8":        `bad\xffutf8`,
		"del\x7f c1\u009b x": `del\x7f c1\x9b x`,
	} {
		if got := escapeText(in); got != want {
			t.Errorf("escapeText(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestStatusExplainEscape: names, reasons, errors and Consul output that a
// container controls reach the terminal without a control character.
func TestStatusExplainEscape(t *testing.T) {
	evil := "x\x1b]0;owned\x07\r\u202e"
	c := api.ContainerState{ID: "0123456789abcdef", Name: "n" + evil, Address: "2001:db8::5", Source: "labels",
		Namespace: "default", Job: "j" + evil, Task: "t" + evil, Closed: true, Reason: "r" + evil, Errors: []string{"e" + evil},
		Ingress:  []api.RuleState{{Rule: "tcp/80 from @ops"}},
		Services: []api.ServiceState{{Name: "web", Port: 80, Check: "http", Health: "critical", Output: "HTTP GET: " + evil}}}
	var b bytes.Buffer
	printStatus(&b, &api.Snapshot{Node: "n1", Prefix: "2001:db8::/80", At: time.Now(), Containers: []api.ContainerState{c}})
	printExplain(&b, &api.ExplainAnswer{Container: c, Verdict: "deny", Reason: "no rule " + evil})
	out := b.String()
	for _, r := range out {
		if r != '\n' && (unicode.IsControl(r) || r == '\u202e') {
			t.Fatalf("output holds %U:\n%s", r, out)
		}
	}
	if !strings.Contains(out, `\x1b]0;owned\x07\x0d\u202e`) {
		t.Errorf("escaped text missing:\n%s", out)
	}
}
