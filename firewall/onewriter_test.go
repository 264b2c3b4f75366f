package firewall

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/v6reg/v6reg/internal/netns"
)

// gatedGen blocks the first generation read after arm until release: Apply
// reads the generation right after it takes the firewall's lock, so an
// armed gate holds an Apply in the middle, lock taken.
type gatedGen struct {
	inner   interface{ read() (uint32, error) }
	mu      sync.Mutex
	gate    chan struct{}
	entered chan struct{}
}

func (g *gatedGen) arm() (entered chan struct{}, release func()) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.gate, g.entered = make(chan struct{}), make(chan struct{})
	gate := g.gate
	return g.entered, func() { close(gate) }
}

func (g *gatedGen) read() (uint32, error) {
	g.mu.Lock()
	gate, entered := g.gate, g.entered
	g.gate, g.entered = nil, nil
	g.mu.Unlock()
	if gate != nil {
		close(entered)
		<-gate
	}
	return g.inner.read()
}

// liveIDs lists the containers table inet v6reg holds, read through a
// separate conn (not the Firewall under test).
func liveIDs(t *testing.T, ns *netns.NS) map[string]bool {
	t.Helper()
	conn, err := nftables.New(nftables.WithNetNSFd(ns.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(conn, ns.Fd(), testLogger(t)).Counters(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]bool{}
	for id := range c {
		ids[id] = true
	}
	return ids
}

// A repair tick that fires while an Apply holds the lock must not put the
// state before that Apply back once it is done (issue 16: the watch read
// the state to restore before taking the lock, so after a SIGHUP that
// closed a container the repair reopened it for a tick). The interleaving
// is forced: the newer Apply is held in the middle, lock taken, for longer
// than a watch interval. Against the old Watch(ctx, state), with state
// returning what the caller published after Apply returned (as the agent
// did), this test failed: "the table holds map[c1:true c2:true]".
func TestRepairNeverAppliesAnOlderState(t *testing.T) {
	ns := netns.New(t, "onew")
	f := newFirewall(t, ns)
	g := &gatedGen{inner: f.gen}
	f.gen = g
	ctx, cancel := context.WithCancel(context.Background())
	older := smallState()
	newer := smallState()
	newer.Containers = newer.Containers[:1] // c2 closed and removed
	if _, err := f.Apply(ctx, older); err != nil {
		t.Fatal(err)
	}
	watchDone := make(chan error, 1)
	go func() { watchDone <- f.Watch(ctx) }()
	t.Cleanup(func() { cancel(); <-watchDone })

	entered, release := g.arm()
	applied := make(chan error, 1)
	go func() {
		_, err := f.Apply(ctx, newer)
		applied <- err
	}()
	<-entered
	// At least one repair tick fires while the newer Apply holds the lock.
	time.Sleep(WatchInterval + WatchInterval/2)
	release()
	if err := <-applied; err != nil {
		t.Fatal(err)
	}
	// Whatever the waiting tick does, and the ticks after it, the table
	// must keep the newer state.
	deadline := time.Now().Add(2*WatchInterval + WatchInterval/2)
	for time.Now().Before(deadline) {
		if ids := liveIDs(t, ns); ids["c2"] || !ids["c1"] {
			t.Fatalf("after Apply(newer) returned the table holds %v: a repair re-applied the older state (c2 is closed in the newer one)", ids)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
