package agent

import (
	"slices"
	"strings"
	"testing"

	consul "github.com/hashicorp/consul/api"

	"github.com/v6reg/v6reg/firewall"
	"github.com/v6reg/v6reg/policies"
)

// The policy language refuses what the firewall cannot program: both must
// agree on how many ports one rule may name.
func TestPortLimitsAgree(t *testing.T) {
	if policies.MaxRulePorts != firewall.MaxRulePorts {
		t.Fatalf("policies.MaxRulePorts = %d, firewall.MaxRulePorts = %d", policies.MaxRulePorts, firewall.MaxRulePorts)
	}
}

// The reconcile holds the limits: a refused container gets no rules and
// critical registrations, its peers are not watched, status shows the
// error, and a set over peer_set_addresses is cut before the apply.
func TestReconcileHoldsLimits(t *testing.T) {
	r := newRig(t, nil)
	op := testOperator()
	op.Limits = policies.Limits{ContainerPeers: 1, PeerSetAddresses: 2}
	r.agent.SetOperator(op)
	r.consul.health["postgres"] = []*consul.ServiceEntry{entry("fd00:1::5"), entry("fd00:1::6"), entry("fd00:1::7")}
	r.docker.set(
		summary(cid("f1"), "ok", addrN(10), map[string]string{"v6reg.egress": "tcp/5432 to service:postgres"}),
		summary(cid("f2"), "greedy", addrN(11), map[string]string{"v6reg.egress": "tcp/5432 to service:a, service:b", "v6reg.services": "greedy:80"}),
	)
	if err := r.agent.reconcile(t.Context(), true); err != nil {
		t.Fatal(err)
	}
	st := r.fw.states()[0]
	if got := st.PeerSets["service:default/postgres"]; len(got) != 2 {
		t.Errorf("service:postgres = %v, want cut to 2", got)
	}
	for _, c := range st.Containers {
		if c.ID == cid("f2") && len(c.Ingress)+len(c.Egress) > 0 {
			t.Errorf("greedy has rules: %+v", c)
		}
	}
	r.consul.mu.Lock()
	calls := slices.Compact(slices.Sorted(slices.Values(r.consul.healthCalls)))
	reg := r.consul.checks["v6reg-n1-"+cid("f2")[:12]+"-greedy-80"]
	r.consul.mu.Unlock()
	if !slices.Equal(calls, []string{"postgres"}) {
		t.Errorf("health watches = %v, want postgres only (a refused policy starts none)", calls)
	}
	if reg == nil || reg.Status != "critical" || !strings.Contains(reg.Notes, "limits.container_peers") {
		t.Errorf("greedy's check = %+v, want critical naming limits.container_peers", reg)
	}
	for _, c := range r.agent.Snapshot().Containers {
		if c.ID == cid("f2") && (!c.Closed || !strings.Contains(strings.Join(c.Errors, " "), "the limit is 1 per container")) {
			t.Errorf("status of greedy = %+v", c)
		}
	}
}
