package agent

import (
	"net"
	"net/netip"
	"testing"

	"github.com/v6reg/v6reg/firewall"
)

// TestFirewallDeltaClosesAndReopens: a container closed for a conflict,
// and later reopened, is one upsert of the same ID each way (never a
// removal and an addition), so the firewall swaps its port_closed
// element and its bindings in one batch.
func TestFirewallDeltaClosesAndReopens(t *testing.T) {
	prefix := netip.MustParsePrefix("2001:db8:1:2:3::/80")
	bound := firewall.Container{ID: "c1", Addr: netip.MustParseAddr("2001:db8:1:2:3::c1"),
		MAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, Port: 7}
	closed := firewall.Container{ID: "c1", Port: 7, Closed: true}
	st := func(c firewall.Container) *firewall.State {
		return &firewall.State{Prefix: prefix, Containers: []firewall.Container{c}}
	}
	for _, c := range []struct {
		name     string
		from, to firewall.Container
	}{{"closed", bound, closed}, {"reopened", closed, bound}} {
		d := firewallDelta(st(c.from), st(c.to))
		if len(d.Remove) != 0 || len(d.Upsert) != 1 || !firewall.SameContainer(&d.Upsert[0], &c.to) {
			t.Errorf("%s: delta %+v, want one upsert of %+v", c.name, d, c.to)
		}
	}
	if d := firewallDelta(st(closed), st(closed)); !d.Empty() {
		t.Errorf("still closed: delta %+v, want none", d)
	}
}
