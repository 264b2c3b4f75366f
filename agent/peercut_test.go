package agent

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	consul "github.com/hashicorp/consul/api"

	"github.com/v6reg/v6reg/api"
	"github.com/v6reg/v6reg/policies"
)

// peerCutRig runs web (egress to service:postgres) and other (ingress
// from service:postgres) with three instances of postgres in Consul and
// limits.peer_set_addresses = 2: ::5, registered last, is cut though its
// address is the lowest.
func peerCutRig(t *testing.T) *rig {
	t.Helper()
	r := newRig(t, nil)
	op := testOperator()
	op.Limits = policies.Limits{PeerSetAddresses: 2}
	r.agent.SetOperator(op)
	created := func(addr string, index uint64) *consul.ServiceEntry {
		e := entry(addr)
		e.Service.CreateIndex = index
		return e
	}
	r.consul.health["postgres"] = []*consul.ServiceEntry{created("fd00:1::5", 30), created("fd00:1::6", 10), created("fd00:1::7", 20)}
	r.docker.set(
		summary(cid("aa01"), "web", addrN(10), map[string]string{"v6reg.egress": "tcp/5432 to service:postgres"}),
		summary(cid("bb01"), "other", addrN(11), map[string]string{"v6reg.ingress": "tcp/9000 from service:postgres"}),
		summary(cid("cc01"), "alone", addrN(12), nil),
	)
	if err := r.agent.reconcile(t.Context(), true); err != nil {
		t.Fatal(err)
	}
	return r
}

// Status lists the cut set, with the containers that use it.
func TestStatusShowsPeerSetCut(t *testing.T) {
	r := peerCutRig(t)
	got := r.agent.Status(t.Context()).PeerSetsCut
	want := []api.PeerSetCut{{Peer: "service:default/postgres", Registrations: 3, Kept: 2, Limit: 2, Containers: []string{cid("aa01"), cid("bb01")}}}
	if len(got) != 1 || got[0].Peer != want[0].Peer || got[0].Registrations != 3 || got[0].Kept != 2 || got[0].Limit != 2 ||
		!slices.Equal(got[0].Containers, want[0].Containers) {
		t.Fatalf("peer sets cut = %+v, want %+v", got, want)
	}
	// Room made: the next answer fits, and status says nothing.
	r.consul.mu.Lock()
	kept := r.consul.health["postgres"][1:]
	r.consul.mu.Unlock()
	r.consul.setHealth("postgres", kept...)
	for deadline := time.Now().Add(5 * time.Second); len(r.agent.Status(t.Context()).PeerSetsCut) > 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("status still lists the cut: %+v", r.agent.Status(t.Context()).PeerSetsCut)
		}
	}
}

// A SIGHUP that changes limits.peer_set_addresses cuts the sets again at
// once, from Consul's last answer: nothing changes in Consul, and the
// next pass gives the firewall the set the new limit allows.
func TestReloadedLimitRecutsPeerSets(t *testing.T) {
	r := peerCutRig(t)
	peerSet := func() []netip.Prefix {
		st := r.fw.states()
		return st[len(st)-1].PeerSets["service:default/postgres"]
	}
	if got := peerSet(); len(got) != 2 {
		t.Fatalf("before: firewall set %v, want the 2 registered first", got)
	}
	op := testOperator()
	op.Limits = policies.Limits{PeerSetAddresses: 3}
	r.agent.SetOperator(op)
	if err := r.agent.reconcile(t.Context(), false); err != nil {
		t.Fatal(err)
	}
	if got := peerSet(); len(got) != 3 || len(r.agent.Status(t.Context()).PeerSetsCut) != 0 {
		t.Fatalf("after the limit rose to 3: firewall set %v, cut %+v; want all 3, none cut", got, r.agent.Status(t.Context()).PeerSetsCut)
	}
	op.Limits = policies.Limits{PeerSetAddresses: 1}
	r.agent.SetOperator(op)
	if err := r.agent.reconcile(t.Context(), false); err != nil {
		t.Fatal(err)
	}
	if got := peerSet(); len(got) != 1 || got[0].Addr().String() != "fd00:1::6" {
		t.Fatalf("after the limit fell to 1: firewall set %v, want fd00:1::6 (registered first)", got)
	}
}

// Explain denies what the firewall's cut set denies, and says the set was
// cut when the address is one of the registrations past the limit.
func TestExplainPeerSetCut(t *testing.T) {
	r := peerCutRig(t)
	for _, tt := range []struct {
		name    string
		q       api.ExplainQuery
		verdict string
		reason  []string // substrings
		cut     bool
	}{
		{name: "registered first: allowed", q: api.ExplainQuery{Target: "web", Direction: "to", Peer: "fd00:1::6", Port: 5432},
			verdict: "allow", reason: []string{"instance of Consul service postgres"}},
		{name: "registered past the limit: denied, and why", q: api.ExplainQuery{Target: "web", Direction: "to", Peer: "fd00:1::5", Port: 5432},
			verdict: "deny", cut: true, reason: []string{
				"no egress rule allows to fd00:1::5 port 5432/tcp",
				`rule "tcp/5432 to service:postgres" would admit it, but service:default/postgres has 3 addresses in Consul; limits.peer_set_addresses keeps the first 2 registered: fd00:1::5 is not among them`}},
		{name: "ingress too", q: api.ExplainQuery{Target: "other", Direction: "from", Peer: "fd00:1::5", Port: 9000},
			verdict: "deny", cut: true, reason: []string{"keeps the first 2 registered: fd00:1::5 is not among them"}},
		{name: "another port: the cut does not matter", q: api.ExplainQuery{Target: "web", Direction: "to", Peer: "fd00:1::5", Port: 5433},
			verdict: "deny", reason: []string{"no egress rule allows"}},
		{name: "not in Consul at all", q: api.ExplainQuery{Target: "web", Direction: "to", Peer: "fd00:1::9", Port: 5432},
			verdict: "deny", reason: []string{"no egress rule allows"}},
		{name: "the peer by name: allowed, the set cut", q: api.ExplainQuery{Target: "web", Direction: "to", Peer: "service:postgres", Port: 5432},
			verdict: "allow", cut: true, reason: []string{"the rule names service:postgres; but service:default/postgres has 3 addresses in Consul"}},
		{name: "no rules", q: api.ExplainQuery{Target: "alone", Direction: "to", Peer: "fd00:1::5", Port: 5432},
			verdict: "deny", reason: []string{"has no egress rules"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ans, err := r.agent.Explain(t.Context(), tt.q)
			if err != nil {
				t.Fatal(err)
			}
			if ans.Verdict != tt.verdict {
				t.Errorf("verdict %q, want %q (%s)", ans.Verdict, tt.verdict, ans.Reason)
			}
			for _, s := range tt.reason {
				if !strings.Contains(ans.Reason, s) {
					t.Errorf("reason %q lacks %q", ans.Reason, s)
				}
			}
			if tt.cut != (ans.PeerCut != nil) {
				t.Errorf("peer cut = %+v, want one: %v", ans.PeerCut, tt.cut)
			}
			if pc := ans.PeerCut; pc != nil && (pc.Peer != "service:default/postgres" || pc.Registrations != 3 || pc.Kept != 2 || pc.Limit != 2 || pc.Containers != nil) {
				t.Errorf("peer cut = %+v", *ans.PeerCut)
			}
			if !tt.cut && strings.Contains(ans.Reason, "peer_set_addresses") {
				t.Errorf("reason names the cut: %q", ans.Reason)
			}
		})
	}
}
