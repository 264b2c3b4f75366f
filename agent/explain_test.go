package agent

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/v6reg/v6reg/api"

	consul "github.com/hashicorp/consul/api"
)

// explainRig reconciles three label containers: web (ingress from
// @traefik, egress to service:postgres), bad (policy refused) and two
// whose IDs share a prefix.
func explainRig(t *testing.T) *rig {
	r := newRig(t, nil)
	r.consul.health["postgres"] = []*consul.ServiceEntry{entry("fd00:1::5")}
	r.docker.set(
		summary(cid("aa01"), "web", addrN(10), map[string]string{
			"v6reg.ingress": "tcp/80,443 from @traefik; icmp from @ops",
			"v6reg.egress":  "tcp/5432 to service:postgres",
		}),
		summary(cid("bb01"), "bad", addrN(11), map[string]string{"v6reg.ingress": "tcp/80 form @traefik"}),
		summary(cid("cc001"), "twin1", addrN(12), nil),
		summary(cid("cc002"), "twin2", addrN(13), nil),
	)
	return r
}

func TestExplain(t *testing.T) {
	r := explainRig(t)
	if _, err := r.agent.Explain(t.Context(), api.ExplainQuery{Target: "web"}); err == nil || !strings.Contains(err.Error(), "no reconcile") {
		t.Errorf("explain before any reconcile: %v", err)
	}
	if err := r.agent.reconcile(t.Context(), false); err != nil {
		t.Fatal(err)
	}
	web := addrN(10).String()
	tests := []struct {
		name    string
		q       api.ExplainQuery
		verdict string
		rule    string
		reason  string // substring
		err     string // substring; the query fails
	}{
		{name: "allowed by a prefix rule", q: api.ExplainQuery{Target: web, Direction: "from", Peer: "fd00:aa::5", Port: 443},
			verdict: "allow", rule: "tcp/80,443 from @traefik", reason: "fd00:aa::5 is in fd00:aa::/64"},
		{name: "allowed by a service: peer address", q: api.ExplainQuery{Target: "web", Direction: "to", Peer: "fd00:1::5", Port: 5432, Proto: "tcp"},
			verdict: "allow", rule: "tcp/5432 to service:postgres", reason: "instance of Consul service postgres"},
		{name: "allowed by name", q: api.ExplainQuery{Target: cid("aa01")[:12], Direction: "from", Peer: "@ops", Proto: "icmp"},
			verdict: "allow", rule: "icmp from @ops", reason: "the rule names @ops"},
		{name: "denied: other peer", q: api.ExplainQuery{Target: web, Direction: "from", Peer: "fd00:bb::1", Port: 80},
			verdict: "deny", reason: "no ingress rule allows from fd00:bb::1 port 80/tcp"},
		{name: "denied: IPv4 ingress, even from a set's IPv4 prefix", q: api.ExplainQuery{Target: web, Direction: "from", Peer: "10.1.2.3", Port: 443},
			verdict: "deny", reason: "containers take IPv6-only ingress"},
		{name: "denied: other port", q: api.ExplainQuery{Target: web, Direction: "from", Peer: "fd00:aa::5", Port: 8080},
			verdict: "deny", reason: "no ingress rule allows"},
		{name: "denied: other protocol", q: api.ExplainQuery{Target: web, Direction: "from", Peer: "fd00:aa::5", Port: 80, Proto: "udp"},
			verdict: "deny", reason: "no ingress rule allows"},
		{name: "denied: no egress rule for this service", q: api.ExplainQuery{Target: web, Direction: "to", Peer: "fd00:1::6", Port: 5432},
			verdict: "deny", reason: "no egress rule allows"},
		{name: "denied: no rules in that direction", q: api.ExplainQuery{Target: "twin1", Direction: "from", Peer: "fd00:aa::5", Port: 80},
			verdict: "deny", reason: "has no ingress rules (set v6reg_ingress)"},
		{name: "closed container", q: api.ExplainQuery{Target: "bad", Direction: "from", Peer: "fd00:aa::5", Port: 80},
			verdict: "deny", reason: "the container is closed: policy refused"},
		{name: "rules listing of a closed container", q: api.ExplainQuery{Target: "bad"}, reason: "closed: policy refused"},
		{name: "ID prefix too short to mean anything", q: api.ExplainQuery{Target: "cc0", Direction: "from"}, err: "no managed container"},
		{name: "ambiguous ID prefix", q: api.ExplainQuery{Target: "cc00", Direction: "from"}, err: `"cc00" matches 2 containers (twin1, twin2)`},
		{name: "whole name wins over an ID prefix", q: api.ExplainQuery{Target: "twin2"}, reason: "rules listed"},
		{name: "unknown target", q: api.ExplainQuery{Target: "fd00:f1::1:0:0:99"}, err: "no managed container"},
		{name: "bad direction", q: api.ExplainQuery{Target: "web", Direction: "sideways"}, err: "use from (ingress) or to (egress)"},
		{name: "bad protocol", q: api.ExplainQuery{Target: "web", Direction: "from", Proto: "sctp"}, err: `protocol "sctp"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ans, err := r.agent.Explain(t.Context(), tt.q)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if ans.Verdict != tt.verdict || ans.Rule != tt.rule || !strings.Contains(ans.Reason, tt.reason) {
				t.Errorf("answer = verdict %q rule %q reason %q; want %q %q %q", ans.Verdict, ans.Rule, ans.Reason, tt.verdict, tt.rule, tt.reason)
			}
			if ans.Container.ID == "" {
				t.Errorf("answer carries no container")
			}
			if tt.verdict == "allow" && ans.Source == "" {
				t.Errorf("an allow names no source")
			}
		})
	}
}

func TestExplainHandler(t *testing.T) {
	r := explainRig(t)
	if err := r.agent.reconcile(t.Context(), false); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(api.Handler(r.agent))
	defer srv.Close()
	get := func(q string) (*http.Response, string) {
		t.Helper()
		resp, err := srv.Client().Get(srv.URL + "/v1/explain?" + q)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp, string(b)
	}
	resp, body := get("target=web&direction=from&peer=fd00:aa::5&port=80&proto=tcp")
	var ans api.ExplainAnswer
	if resp.StatusCode != 200 || json.Unmarshal([]byte(body), &ans) != nil || ans.Verdict != "allow" || ans.Source != `label "v6reg.ingress"` {
		t.Errorf("GET explain = %d %s", resp.StatusCode, body)
	}
	if resp, body := get("target=web&port=http"); resp.StatusCode != 400 || !strings.Contains(body, "not a port number") {
		t.Errorf("bad port = %d %s", resp.StatusCode, body)
	}
	if resp, _ := get("target=nothere"); resp.StatusCode != 404 {
		t.Errorf("unknown target = %d", resp.StatusCode)
	}
}
