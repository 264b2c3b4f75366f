package firewall

import (
	"errors"
	"testing"

	"github.com/v6reg/v6reg/internal/netns"
)

// TestPortFinder finds the bridge ports of C1 and C2 from the node's
// namespace, by their namespace files, as the agent does with Docker's
// SandboxKey: no setns. ClientIn's namespace has no port on the bridge
// (its veth goes to the router), and a path that is no namespace is an
// error of its own, not of the others.
func TestPortFinder(t *testing.T) {
	tp := netns.NewTopology(t)
	idx := func(name string) int {
		l, err := tp.Node.Handle().LinkByName(name)
		must(t, err)
		return l.Attrs().Index
	}
	pf := NewPortFinder(tp.Node.Handle(), tp.Gateway)
	paths := []string{tp.C1.Path(), tp.C2.Path(), tp.ClientIn.Path(), "/nonexistent/netns/x", "/proc/self/status"}
	ports, errs := pf.Ports(paths)
	if ports[0] != idx("vc1") || errs[0] != nil || ports[1] != idx("vc2") || errs[1] != nil {
		t.Errorf("c1, c2: got ports %v errors %v, want %d, %d", ports[:2], errs[:2], idx("vc1"), idx("vc2"))
	}
	if !errors.Is(errs[2], ErrNoPort) || ports[2] != 0 {
		t.Errorf("client-in: got port %d, error %v; want 0 and ErrNoPort", ports[2], errs[2])
	}
	for i := 3; i < len(paths); i++ {
		if errs[i] == nil || ports[i] != 0 {
			t.Errorf("%s: got port %d, error %v; want an error", paths[i], ports[i], errs[i])
		}
		t.Logf("%s: %v", paths[i], errs[i])
	}

	// Without the gateway on a link there is no bridge to look at.
	_, errs = NewPortFinder(tp.Node.Handle(), tp.C1Addr).Ports(paths[:1])
	if errs[0] == nil {
		t.Error("no link holds the gateway: got no error")
	}
}
