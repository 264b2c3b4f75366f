// Package peerstest makes Consul catalog entries as the peer watches see
// them: another node's v6reg registration, and a foreign one (a Nomad
// service block), for the tests of the peers and of the agent.
package peerstest

import (
	"net/netip"

	consul "github.com/hashicorp/consul/api"

	"github.com/v6reg/v6reg/registrar"
)

// Entry is an instance as another node's v6reg registers it for a
// container of namespace "default" (job p-db), its address in that node's
// prefix (the /80 around it).
func Entry(addr string) *consul.ServiceEntry {
	return NamespaceEntry("default", addr)
}

// NamespaceEntry is Entry for a container of namespace ns.
func NamespaceEntry(ns, addr string) *consul.ServiceEntry {
	prefix := "fd00::/80"
	if a, err := netip.ParseAddr(addr); err == nil && a.Is6() {
		prefix = netip.PrefixFrom(a, 80).Masked().String()
	}
	return &consul.ServiceEntry{
		Service: &consul.AgentService{ID: "v6reg-n2-0123456789ab-svc-5432", Address: addr,
			Meta: map[string]string{registrar.MetaOwner: "n2", registrar.MetaContainer: "0123456789ab", registrar.MetaPrefix: prefix, registrar.MetaNamespace: ns, registrar.MetaJob: "p-db"}},
		Node: &consul.Node{Node: "n2", Address: "192.0.2.1"},
	}
}

// ForeignEntry is an instance as a Nomad service block registers it:
// Nomad's ID, no v6reg meta, any address.
func ForeignEntry(addr string) *consul.ServiceEntry {
	return &consul.ServiceEntry{Service: &consul.AgentService{ID: "_nomad-task-1234-web-postgres-5432", Address: addr,
		Meta: map[string]string{"external-source": "nomad"}}, Node: &consul.Node{Node: "n3", Address: "192.0.2.3"}}
}
