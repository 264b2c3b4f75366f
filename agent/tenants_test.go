package agent

import (
	"github.com/v6reg/v6reg/peers"

	"maps"
	"slices"
	"testing"
	"time"

	consul "github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
)

// TestForeignPeersIgnoredAndCounted: a service: peer's set holds only
// v6reg's registrations of the policy's namespace; the others are counted
// in v6reg_peer_entries_ignored, and the count follows the catalog.
func TestForeignPeersIgnoredAndCounted(t *testing.T) {
	r := newRig(t, nil)
	r.consul.health["postgres"] = []*consul.ServiceEntry{
		entry("fd00:1::5"),                     // positive control
		foreignEntry("fd00:1::66"),             // a Nomad service block named postgres
		nsEntry("prod", "fd00:2::7"),           // v6reg's, but for a container of prod
		mod(entry("fd00:1::8"), "2001:db8::8"), // a v6reg-shaped entry outside its prefix
	}
	id, l := webSummary("a1")
	r.docker.set(summary(id, "web1", addrN(10), l))
	if err := r.agent.reconcile(t.Context(), true); err != nil {
		t.Fatal(err)
	}
	st := r.fw.states()
	got := []string{}
	for _, p := range st[len(st)-1].PeerSets["service:default/postgres"] {
		got = append(got, p.String())
	}
	if !slices.Equal(got, []string{"fd00:1::5/128"}) {
		t.Errorf("service:default/postgres = %v, want only the v6reg registration of namespace default", got)
	}
	m := r.agent.o.Metrics.PeerEntriesIgnored
	counts := map[string]float64{}
	for _, reason := range peers.IgnoredReasons {
		counts[reason] = gaugeValue(t, m, reason)
	}
	if want := map[string]float64{peers.IgnoredForeign: 1, peers.IgnoredNamespace: 1, peers.IgnoredOutside: 1}; !maps.Equal(counts, want) {
		t.Errorf("ignored = %v, want %v", counts, want)
	}
	// The set is the same without them, so nothing triggers; the count
	// follows the answer all the same.
	r.consul.setHealth("postgres", entry("fd00:1::5"))
	deadline := time.Now().Add(5 * time.Second)
	for gaugeValue(t, m, peers.IgnoredForeign) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("ignored foreign stays > 0 after the foreign entry left")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// mod moves e's address (and nothing else).
func mod(e *consul.ServiceEntry, addr string) *consul.ServiceEntry {
	e.Service.Address = addr
	return e
}

// gaugeValue reads one child of a gauge vector through its registry's
// wire form, as a scrape would.
func gaugeValue(t *testing.T, m *prometheus.GaugeVec, label string) float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(m)
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		for _, mm := range f.GetMetric() {
			for _, lp := range mm.GetLabel() {
				if lp.GetValue() == label {
					return mm.GetGauge().GetValue()
				}
			}
		}
	}
	t.Fatalf("no child %q", label)
	return 0
}
