package agent

import (
	"errors"
	"net/netip"
	"slices"
	"sync"
	"testing"

	"github.com/v6reg/v6reg/docker"

	"github.com/docker/docker/api/types/container"

	"github.com/v6reg/v6reg/firewall"
)

// fakePorts is a docker.BridgePorts that knows a port per namespace file.
type fakePorts struct {
	mu    sync.Mutex
	port  map[string]int
	calls [][]string
}

func (f *fakePorts) Ports(netns []string) ([]int, []error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, slices.Clone(netns))
	ports, errs := make([]int, len(netns)), make([]error, len(netns))
	for i, p := range netns {
		if ports[i] = f.port[p]; ports[i] == 0 {
			errs[i] = errors.New("no port")
		}
	}
	return ports, errs
}

func withEndpoint(s container.Summary, ep string) container.Summary {
	s.NetworkSettings.Networks[testNetwork].EndpointID = ep
	return s
}

// TestBridgePorts checks the port lookup's bookkeeping: one inspect per
// container start (a new endpoint), one finder call per reconcile that
// has new containers, Port 0 (and the rest unharmed) when a lookup fails,
// failures retried on full reconciles only, removed containers forgotten.
func TestBridgePorts(t *testing.T) {
	r := newRig(t, nil)
	fp := &fakePorts{port: map[string]int{"/ns/a": 7}}
	r.agent = New(Options{Node: "n1", Prefix: testPrefix, Gateway: testGateway, Network: testNetwork, IDPrefix: "v6reg",
		Operator: testOperator(), Log: testLog(t), Docker: r.docker, Firewall: r.fw, Ports: fp})
	a, b, noAddr := cid("a"), cid("b"), cid("c")
	r.docker.sandbox = map[string]string{a: "/ns/a", noAddr: "/ns/c"} // b: inspect fails
	fp.port["/ns/c"] = 8
	r.docker.set(withEndpoint(summary(a, "a", addrN(10), nil), "ep-a"), withEndpoint(summary(b, "b", addrN(11), nil), "ep-b"),
		withEndpoint(summary(noAddr, "c", netip.Addr{}, nil), "ep-c"))
	reconcile := func(full bool) map[string]int {
		t.Helper()
		if err := r.agent.reconcile(t.Context(), full); err != nil {
			t.Fatal(err)
		}
		st := r.fw.states()
		ports := map[string]int{}
		for _, c := range st[len(st)-1].Containers {
			ports[c.ID] = c.Port
			if c.ID == noAddr && !c.Closed {
				t.Errorf("the container without an address: %+v, want its port closed", c)
			}
		}
		return ports
	}
	inspects := func() []string {
		r.docker.mu.Lock()
		defer r.docker.mu.Unlock()
		out := r.docker.inspects
		r.docker.inspects = nil
		slices.Sort(out) // inspected concurrently: compare as a set
		return out
	}
	want := func(what string, got map[string]int, wantA, wantB int, wantInspects ...string) {
		t.Helper()
		if got[a] != wantA || got[b] != wantB {
			t.Errorf("%s: ports a=%d b=%d, want %d %d", what, got[a], got[b], wantA, wantB)
		}
		if in := inspects(); !slices.Equal(in, wantInspects) {
			t.Errorf("%s: inspected %v, want %v", what, in, wantInspects)
		}
	}

	// The container without an address too: its port is closed.
	start := reconcile(true)
	want("start", start, 7, 0, a, b, noAddr)
	if start[noAddr] != 8 {
		t.Errorf("start: the container without an address has port %d in the firewall state, want 8, closed", start[noAddr])
	}
	want("again", reconcile(false), 7, 0) // cached; the failure is not retried
	if len(fp.calls) != 1 || !slices.Equal(fp.calls[0], []string{"/ns/a", "/ns/c"}) {
		t.Errorf("finder calls %v, want one for /ns/a and /ns/c", fp.calls)
	}
	r.docker.sandbox[b] = "/ns/b"
	fp.port["/ns/b"] = 9
	want("b inspectable, partial reconcile", reconcile(false), 7, 0)
	want("b retried on a full reconcile", reconcile(true), 7, 9, b)
	want("nothing new on a full reconcile", reconcile(true), 7, 9)

	// a restarts: same ID, new endpoint, new veth.
	fp.port["/ns/a"] = 12
	r.docker.set(withEndpoint(summary(a, "a", addrN(10), nil), "ep-a2"), withEndpoint(summary(b, "b", addrN(11), nil), "ep-b"))
	relist(r.agent)
	want("a restarted", reconcile(false), 12, 9, a)

	// a is removed: forgotten.
	r.docker.set(withEndpoint(summary(b, "b", addrN(11), nil), "ep-b"))
	relist(r.agent)
	reconcile(false)
	if _, ok := r.agent.ports.Known(a); ok || r.agent.ports.Len() != 1 {
		t.Errorf("after a's removal the cache holds %d containers, a among them: %v", r.agent.ports.Len(), ok)
	}
}

// The firewall's finder satisfies the agent's interface.
var _ docker.BridgePorts = (*firewall.PortFinder)(nil)
