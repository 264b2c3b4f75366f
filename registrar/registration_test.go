package registrar

import (
	"net/netip"
	"testing"
)

// TestHashForms: the hashes of registrations whose form did not change
// stay what earlier versions wrote in Consul (an upgrade re-registers
// nothing for them); an http(s) check's changed with DisableRedirects, so
// an upgrade registers it again without the redirects.
func TestHashForms(t *testing.T) {
	a := netip.MustParseAddr("2001:db8::5")
	for _, tt := range []struct {
		kind, old string
		same      bool
	}{
		{"tcp", "3593b53a03b7669a", true},
		{"critical", "95312cbf78403af0", true},
		{"", "d9155f16400e160a", true},
		{"http", "120527244318bb56", false},
		{"https", "badc03775053d013", false},
	} {
		r := Registration{ID: "v6reg-n1-aaaaaaaaaaaa-web-80", Name: "web", Addr: a, Port: 80, Tags: []string{"x"},
			Meta: map[string]string{"k": "v"}, Check: Check{Kind: tt.kind, Path: "/"}}
		if got := r.Hash(); (got == tt.old) != tt.same {
			t.Errorf("check %q: hash %s, the hash before redirects were refused %s: same = %v, want %v", tt.kind, got, tt.old, got == tt.old, tt.same)
		}
	}
}
