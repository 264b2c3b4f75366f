package firewall

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/v6reg/v6reg/internal/netns"
)

// The agent shares one lasting netlink conn between Apply (the reconcile
// and the watch) and Counters (the status API, /metrics). Unserialised,
// their replies interleaved ("unexpected header type") and a receive hung
// the agent; the fault suite caught it. Apply and the readers must take
// turns.
func TestConcurrentApplyAndCounters(t *testing.T) {
	ns := netns.New(t, "conc")
	f := newFirewall(t, ns)
	ctx := context.Background()
	base := smallState()
	if _, err := f.Apply(ctx, base); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 3)
	wg.Add(3)
	go func() {
		defer wg.Done()
		for i := range 60 {
			s := base
			s.Containers = append([]Container(nil), base.Containers...)
			if i%2 == 0 {
				s.Containers = append(s.Containers, Container{ID: fmt.Sprintf("extra%d", i),
					Addr: netip.AddrFrom16(addExtra(base.Prefix, i)), Ingress: []Rule{{Peer: PeerAny, Proto: TCP, Ports: ports(80)}}})
			}
			if _, err := f.Apply(ctx, s); err != nil {
				errs <- fmt.Errorf("apply %d: %w", i, err)
				return
			}
		}
	}()
	for range 2 {
		go func() {
			defer wg.Done()
			for i := range 150 {
				if _, err := f.Counters(ctx); err != nil {
					errs <- fmt.Errorf("counters %d: %w", i, err)
					return
				}
				if _, err := f.SpoofDrops(ctx); err != nil {
					errs <- fmt.Errorf("spoof drops %d: %w", i, err)
					return
				}
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("Apply and Counters deadlocked on the shared netlink conn")
	}
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func addExtra(p netip.Prefix, i int) [16]byte {
	b := p.Addr().As16()
	b[13], b[14], b[15] = 0xee, byte(i>>8), byte(i)+1
	return b
}
