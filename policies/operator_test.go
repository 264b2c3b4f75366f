package policies

import (
	"net/netip"
	"strings"
	"testing"
)

// TestExposures: the agent says what a valid configuration still lets
// one namespace do to another: unbounded service names and tiers, and
// @internet without internal_prefixes. Bounded (positive control):
// nothing to say.
func TestExposures(t *testing.T) {
	op := DefaultOperator()
	op.Namespaces = map[string]Bounds{"*": {AllowInternet: true}, "prod": {Tiers: []string{"p"}}, "dev": {}}
	got := op.Exposures()
	if len(got) != 3 || !strings.Contains(got[0], `namespace "*", "dev" may register any service name with any tier`) ||
		!strings.Contains(got[1], `namespace "prod" may register any service name: a job there can join another namespace's Consul service`) ||
		!strings.Contains(got[2], `namespace "*" may use @internet and internal_prefixes is empty`) {
		t.Fatalf("exposures = %q", got)
	}
	op.Namespaces = map[string]Bounds{"*": {AllowInternet: true, Services: []string{"web-*"}}, "prod": {Services: []string{"shop-*"}, Tiers: []string{"p"}}}
	op.Internal = []netip.Prefix{netip.MustParsePrefix("2001:db8::/32")}
	if got := op.Exposures(); len(got) != 0 {
		t.Errorf("bounded: exposures = %q, want none", got)
	}
}
