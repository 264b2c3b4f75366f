package ipam

import (
	"math/rand/v2"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// fakeClock is a settable clock shared by allocator and test.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *fakeClock { return &fakeClock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func seeded(seed uint64) *rand.ChaCha8 {
	var s [32]byte
	for i := range 8 {
		s[i] = byte(seed >> (8 * i))
	}
	return rand.NewChaCha8(s)
}

func mustPrefix(t testing.TB, s string) netip.Prefix {
	t.Helper()
	p, err := netip.ParsePrefix(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

type testEnv struct {
	clock *fakeClock
	store *MemStore
	alloc *Allocator
	v6    netip.Prefix
	v4    netip.Prefix
	pools []PoolConfig
	hold  time.Duration
	seed  uint64
}

// newEnv builds an allocator on prefix v6 (gateway ::1) and 10.9.0.0/24,
// seeded and on a fake clock.
func newEnv(t testing.TB, v6 string, hold time.Duration, reserved ...netip.Addr) *testEnv {
	t.Helper()
	e := &testEnv{clock: newClock(), store: NewMemStore(), v6: mustPrefix(t, v6), v4: mustPrefix(t, "10.9.0.0/24"), hold: hold, seed: 1}
	e.pools = []PoolConfig{
		{Prefix: e.v6, Gateway: offsetAddr(e.v6, 1), Reserved: reserved},
		{Prefix: e.v4, Gateway: offsetAddr(e.v4, 1), Reserved: reserved},
	}
	e.reopen(t)
	return e
}

// reopen builds a fresh allocator on the same store, as an agent restart.
func (e *testEnv) reopen(t testing.TB) {
	t.Helper()
	e.seed++
	a, err := NewAllocator(e.store, e.pools, AllocatorOptions{HoldDown: e.hold, Now: e.clock.Now, Rand: seeded(e.seed)})
	if err != nil {
		t.Fatal(err)
	}
	e.alloc = a
}
