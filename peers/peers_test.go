package peers

import (
	"testing"

	consul "github.com/hashicorp/consul/api"

	"github.com/v6reg/v6reg/peers/peerstest"
	"github.com/v6reg/v6reg/registrar"
)

// TestPeerAddrOwnership: only what a v6reg registers for a container it
// manages is a peer; each part of the proof is needed.
func TestPeerAddrOwnership(t *testing.T) {
	mod := func(f func(s *consul.AgentService)) *consul.ServiceEntry {
		e := peerstest.NamespaceEntry("default", "fd00:1::5")
		f(e.Service)
		return e
	}
	for _, tc := range []struct {
		name    string
		e       *consul.ServiceEntry
		ns, job string
		why     string
	}{
		{name: "another node's v6reg registration (positive control)", e: peerstest.Entry("fd00:1::5"), ns: "default"},
		{name: "job: peer with the job's meta (positive control)", e: peerstest.Entry("fd00:1::5"), ns: "default", job: "p-db"},
		{name: "a Nomad service block", e: peerstest.ForeignEntry("fd00:1::5"), ns: "default", why: IgnoredForeign},
		{name: "no owner meta", e: mod(func(s *consul.AgentService) { delete(s.Meta, registrar.MetaOwner) }), ns: "default", why: IgnoredForeign},
		{name: "ID of another prefix", e: mod(func(s *consul.AgentService) { s.ID = "other-n2-0123456789ab-svc-5432" }), ns: "default", why: IgnoredForeign},
		{name: "ID names another node than the owner meta", e: mod(func(s *consul.AgentService) { s.Meta[registrar.MetaOwner] = "n3" }), ns: "default", why: IgnoredForeign},
		{name: "no node prefix meta", e: mod(func(s *consul.AgentService) { delete(s.Meta, registrar.MetaPrefix) }), ns: "default", why: IgnoredForeign},
		{name: "a node prefix of ::/0", e: mod(func(s *consul.AgentService) { s.Meta[registrar.MetaPrefix] = "::/0" }), ns: "default", why: IgnoredForeign},
		{name: "no container meta", e: mod(func(s *consul.AgentService) { delete(s.Meta, registrar.MetaContainer) }), ns: "default", why: IgnoredForeign},
		{name: "address outside the node prefix", e: mod(func(s *consul.AgentService) { s.Address = "2001:db8::5" }), ns: "default", why: IgnoredOutside},
		{name: "IPv4 address", e: mod(func(s *consul.AgentService) { s.Address = "10.0.0.5" }), ns: "default", why: IgnoredOutside},
		{name: "no address (Consul would use the node's)", e: mod(func(s *consul.AgentService) { s.Address = "" }), ns: "default", why: IgnoredOutside},
		{name: "another namespace", e: peerstest.Entry("fd00:1::5"), ns: "prod", why: IgnoredNamespace},
		{name: "another job", e: peerstest.Entry("fd00:1::5"), ns: "default", job: "p-other", why: IgnoredNamespace},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, why := peerAddr("v6reg", tc.ns, tc.job, tc.e)
			if why != tc.why {
				t.Fatalf("why = %q, want %q", why, tc.why)
			}
			if tc.why == "" && a.String() != "fd00:1::5" {
				t.Errorf("addr = %v", a)
			}
		})
	}
}
