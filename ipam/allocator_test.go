package ipam

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestRequestSpecific(t *testing.T) {
	const hold = time.Hour
	e := newEnv(t, "fd00:1:2:3:4::/80", hold, mustAddr("fd00:1:2:3:4::53"))
	pid := e.v6.String()
	leased, err := e.alloc.Request(pid, mustAddr("fd00:1:2:3:4::100"), "mac-a")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.alloc.Request(pid, mustAddr("fd00:1:2:3:4::200"), ""); err != nil {
		t.Fatal(err)
	}
	if err := e.alloc.Release(pid, mustAddr("fd00:1:2:3:4::200")); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(time.Minute)
	tests := []struct {
		name    string
		addr    string
		wantErr string // substring; empty means granted
		reclaim bool
	}{
		{"free", "fd00:1:2:3:4::abcd", "", false},
		{"leased is docker reclaiming", "fd00:1:2:3:4::100", "", true},
		{"subnet-router anycast", "fd00:1:2:3:4::", "reserved", false},
		{"gateway", "fd00:1:2:3:4::1", "reserved", false},
		{"operator reserved", "fd00:1:2:3:4::53", "reserved", false},
		{"outside prefix", "fd00:1:2:3:5::7", "outside pool", false},
		{"ipv4 in v6 pool", "10.9.0.7", "outside pool", false},
		{"in hold-down", "fd00:1:2:3:4::200", "hold-down until", false},
		{"last address of prefix", "fd00:1:2:3:4:ffff:ffff:ffff", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := mustAddr(tt.addr)
			l, err := e.alloc.Request(pid, a, "")
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Request(%s) err = %v, want containing %q", a, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Request(%s): %v", a, err)
			}
			if l.Addr != a {
				t.Fatalf("got %s, want %s", l.Addr, a)
			}
			if tt.reclaim && (l.Granted != leased.Granted || l.Owner != "mac-a") {
				t.Fatalf("reclaim changed the lease: %+v, was %+v", l, leased)
			}
		})
	}
}

func TestHoldDownBoundary(t *testing.T) {
	const hold = 90 * time.Minute
	e := newEnv(t, "fd00::/112", hold)
	pid := e.v6.String()
	a := mustAddr("fd00::4242")
	if _, err := e.alloc.Request(pid, a, ""); err != nil {
		t.Fatal(err)
	}
	if err := e.alloc.Release(pid, a); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(hold - time.Nanosecond)
	if _, err := e.alloc.Request(pid, a, ""); err == nil {
		t.Fatal("granted 1ns before hold-down ends")
	}
	e.reopen(t) // hold-down survives a restart
	if _, err := e.alloc.Request(pid, a, ""); err == nil {
		t.Fatal("granted after restart within hold-down")
	}
	e.clock.Advance(time.Nanosecond)
	if _, err := e.alloc.Request(pid, a, ""); err != nil {
		t.Fatalf("not granted exactly at hold-down end: %v", err)
	}
	if st, _ := e.store.Load(); len(st.Holds) != 0 {
		t.Fatalf("expired hold-down not removed from store on grant: %+v", st.Holds)
	}
}

// TestExhaustion fills small pools completely: every address but the
// reserved ones, then the exhaustion error, then reuse only after hold-down.
func TestExhaustion(t *testing.T) {
	const hold = time.Hour
	tests := []struct {
		name     string
		pool     func(e *testEnv) netip.Prefix
		reserved []netip.Addr
		usable   int
	}{
		{"ipv6 /120", func(e *testEnv) netip.Prefix { return e.v6 }, nil, 256 - 2},
		{"ipv6 /120 with operator reservations", func(e *testEnv) netip.Prefix { return e.v6 }, []netip.Addr{mustAddr("fd00::7"), mustAddr("fd00::ff")}, 256 - 4},
		{"ipv4 /24", func(e *testEnv) netip.Prefix { return e.v4 }, nil, 256 - 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, "fd00::/120", hold, tt.reserved...)
			p := tt.pool(e)
			pid := p.String()
			seen := map[netip.Addr]bool{}
			for i := range tt.usable {
				l, err := e.alloc.Request(pid, netip.Addr{}, "")
				if err != nil {
					t.Fatalf("allocation %d of %d: %v", i+1, tt.usable, err)
				}
				if seen[l.Addr] || !p.Contains(l.Addr) || l.Addr == p.Addr() || l.Addr == offsetAddr(p, 1) || l.Addr == lastAddr(p) && p.Addr().Is4() {
					t.Fatalf("bad address %s (dup=%v)", l.Addr, seen[l.Addr])
				}
				for _, r := range tt.reserved {
					if l.Addr == r {
						t.Fatalf("reserved %s handed out", r)
					}
				}
				seen[l.Addr] = true
			}
			_, err := e.alloc.Request(pid, netip.Addr{}, "")
			var ex *ExhaustedError
			if !errors.As(err, &ex) || ex.Leased != tt.usable || ex.HeldDown != 0 {
				t.Fatalf("want ExhaustedError with %d leased, got %v", tt.usable, err)
			}
			var victim netip.Addr
			for a := range seen {
				victim = a
				break
			}
			if err := e.alloc.Release(pid, victim); err != nil {
				t.Fatal(err)
			}
			_, err = e.alloc.Request(pid, netip.Addr{}, "")
			if !errors.As(err, &ex) || ex.HeldDown != 1 || !strings.Contains(err.Error(), "1 in hold-down") {
				t.Fatalf("want exhaustion naming 1 in hold-down, got %v", err)
			}
			e.clock.Advance(hold)
			l, err := e.alloc.Request(pid, netip.Addr{}, "")
			if err != nil || l.Addr != victim {
				t.Fatalf("after hold-down got %v %v, want %s", l.Addr, err, victim)
			}
		})
	}
}

func TestCommitFailureHandsNothingOut(t *testing.T) {
	e := newEnv(t, "fd00::/120", time.Hour)
	e.store.FailNext = errors.New("disk full")
	if _, err := e.alloc.Request(e.v6.String(), mustAddr("fd00::9"), ""); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("want the store error, got %v", err)
	}
	if n := len(e.alloc.Leases()); n != 0 {
		t.Fatalf("%d leases in memory after failed commit", n)
	}
	l, err := e.alloc.Request(e.v6.String(), mustAddr("fd00::9"), "")
	if err != nil || l.Addr != mustAddr("fd00::9") {
		t.Fatalf("retry: %v %v", l, err)
	}
	e.store.FailNext = errors.New("disk full")
	if err := e.alloc.Release(e.v6.String(), l.Addr); err == nil {
		t.Fatal("release with failing store succeeded")
	}
	if len(e.alloc.Leases()) != 1 {
		t.Fatal("failed release dropped the lease in memory")
	}
}

func TestGatewayRequest(t *testing.T) {
	e := newEnv(t, "fd00::/80", time.Hour)
	for _, tt := range []struct {
		want    string
		wantErr bool
	}{{"", false}, {"fd00::1", false}, {"fd00::2", true}} {
		var w netip.Addr
		if tt.want != "" {
			w = mustAddr(tt.want)
		}
		gw, err := e.alloc.Gateway(e.v6.String(), w)
		if (err != nil) != tt.wantErr || (!tt.wantErr && gw != mustAddr("fd00::1")) {
			t.Errorf("Gateway(%q) = %v, %v", tt.want, gw, err)
		}
	}
	if err := e.alloc.Release(e.v6.String(), mustAddr("fd00::1")); err != nil {
		t.Fatal(err)
	}
	if len(e.alloc.Holds()) != 0 {
		t.Fatal("releasing the gateway put it into hold-down")
	}
}

func TestReconcile(t *testing.T) {
	const hold = time.Hour
	e := newEnv(t, "fd00::/80", hold)
	pid := e.v6.String()
	for _, s := range []string{"fd00::a", "fd00::b", "fd00::c"} {
		if _, err := e.alloc.Request(pid, mustAddr(s), ""); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.alloc.Release(pid, mustAddr("fd00::c")); err != nil { // held, Docker still uses it
		t.Fatal(err)
	}
	if _, err := e.alloc.Request(pid, mustAddr("fd00::d"), ""); err != nil {
		t.Fatal(err)
	}
	if err := e.alloc.Release(pid, mustAddr("fd00::d")); err != nil { // expires before reconcile
		t.Fatal(err)
	}
	e.clock.Advance(hold + time.Second)
	inUse := map[netip.Addr]string{
		mustAddr("fd00::a"):     "c1", // leased, kept
		mustAddr("fd00::c"):     "c2", // held -> adopted
		mustAddr("fd00::e"):     "c3", // unknown -> adopted
		mustAddr("fd00::1"):     "",   // gateway: not a lease, not reported
		mustAddr("2001:db8::5"): "c4", // not ours
		mustAddr("10.9.0.9"):    "c1", // the IPv4 pool
	}
	res, err := e.alloc.Reconcile(inUse)
	if err != nil {
		t.Fatal(err)
	}
	want := ReconcileResult{
		Adopted:  []netip.Addr{mustAddr("10.9.0.9"), mustAddr("fd00::c"), mustAddr("fd00::e")},
		Released: []netip.Addr{mustAddr("fd00::b")},
		Pruned:   1,
		Ignored:  []netip.Addr{mustAddr("2001:db8::5")},
	}
	if fmt.Sprint(res) != fmt.Sprint(want) {
		t.Fatalf("Reconcile = %+v\nwant %+v", res, want)
	}
	var leased []string
	for _, l := range e.alloc.Leases() {
		leased = append(leased, l.Addr.String())
	}
	if got := strings.Join(leased, " "); got != "10.9.0.9 fd00::a fd00::c fd00::e" {
		t.Fatalf("leases after reconcile: %s", got)
	}
	if hs := e.alloc.Holds(); len(hs) != 1 || hs[0].Addr != mustAddr("fd00::b") {
		t.Fatalf("holds after reconcile: %+v", hs)
	}
	if _, err := e.alloc.Request(pid, mustAddr("fd00::b"), ""); err == nil {
		t.Fatal("address released by reconcile is not in hold-down")
	}
	again, err := e.alloc.Reconcile(inUse)
	if err != nil || len(again.Adopted)+len(again.Released)+again.Pruned != 0 {
		t.Fatalf("second reconcile changed things: %+v %v", again, err)
	}
	e.reopen(t)
	if got := len(e.alloc.Leases()); got != 4 {
		t.Fatalf("reconcile not persisted: %d leases after reopen", got)
	}
}

// TestNeverDuplicateModel runs thousands of random operations (allocate,
// specific requests, release, reconcile, clock steps, restarts) on a small
// prefix and checks every answer against a simple model.
func TestNeverDuplicateModel(t *testing.T) {
	const hold = 10 * time.Minute
	for seed := uint64(1); seed <= 4; seed++ {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			e := newEnv(t, "fd00::/118", hold, mustAddr("fd00::3"))
			pid := e.v6.String()
			r := rand.New(rand.NewPCG(seed, 42))
			leased := map[netip.Addr]bool{}
			released := map[netip.Addr]time.Time{}
			reserved := map[netip.Addr]bool{mustAddr("fd00::"): true, mustAddr("fd00::1"): true, mustAddr("fd00::3"): true}
			held := func(a netip.Addr) bool {
				at, ok := released[a]
				return ok && e.clock.Now().Before(at.Add(hold))
			}
			randAddr := func() netip.Addr { return offsetAddr(e.v6, r.Uint64N(1024)) }
			leasedList := func() []netip.Addr {
				var out []netip.Addr
				for a := range leased {
					out = append(out, a)
				}
				return out
			}
			for op := range 6000 {
				switch k := r.IntN(100); {
				case k < 40:
					l, err := e.alloc.Request(pid, netip.Addr{}, "")
					var ex *ExhaustedError
					if errors.As(err, &ex) {
						free := 0
						for i := range uint64(1024) {
							a := offsetAddr(e.v6, i)
							if !leased[a] && !reserved[a] && !held(a) {
								free++
							}
						}
						if free != 0 {
							t.Fatalf("op %d: exhausted with %d free", op, free)
						}
						continue
					}
					if err != nil {
						t.Fatalf("op %d: %v", op, err)
					}
					if leased[l.Addr] || reserved[l.Addr] || held(l.Addr) || !e.v6.Contains(l.Addr) {
						t.Fatalf("op %d: handed out %s (leased=%v reserved=%v held=%v)", op, l.Addr, leased[l.Addr], reserved[l.Addr], held(l.Addr))
					}
					leased[l.Addr] = true
				case k < 55:
					a := randAddr()
					wantOK := !reserved[a] && (leased[a] || !held(a))
					_, err := e.alloc.Request(pid, a, "")
					if (err == nil) != wantOK {
						t.Fatalf("op %d: specific %s: err=%v, model says ok=%v", op, a, err, wantOK)
					}
					if err == nil {
						leased[a] = true
					}
				case k < 85:
					ls := leasedList()
					if len(ls) == 0 {
						continue
					}
					a := ls[r.IntN(len(ls))]
					if err := e.alloc.Release(pid, a); err != nil {
						t.Fatalf("op %d: %v", op, err)
					}
					delete(leased, a)
					released[a] = e.clock.Now()
				case k < 88:
					// Docker's view: most leases, minus some, plus a few unknown.
					inUse := map[netip.Addr]string{}
					for _, a := range leasedList() {
						if r.IntN(10) > 0 {
							inUse[a] = ""
						}
					}
					for range 3 {
						if a := randAddr(); !reserved[a] {
							inUse[a] = ""
						}
					}
					if _, err := e.alloc.Reconcile(inUse); err != nil {
						t.Fatal(err)
					}
					for a := range leased {
						if _, ok := inUse[a]; !ok {
							released[a] = e.clock.Now()
						}
					}
					leased = map[netip.Addr]bool{}
					for a := range inUse {
						leased[a] = true
					}
				case k < 98:
					e.clock.Advance(time.Duration(r.IntN(120)) * time.Second)
				default:
					e.reopen(t)
				}
				if got := len(e.alloc.Leases()); got != len(leased) {
					t.Fatalf("op %d: allocator has %d leases, model %d", op, got, len(leased))
				}
			}
		})
	}
}

func TestNewAllocatorRejectsOverlap(t *testing.T) {
	_, err := NewAllocator(NewMemStore(), []PoolConfig{{Prefix: mustPrefix(t, "fd00::/80")}, {Prefix: mustPrefix(t, "fd00::/96")}}, AllocatorOptions{})
	if err == nil || !strings.Contains(err.Error(), "overlap") {
		t.Fatalf("want overlap error, got %v", err)
	}
}

func TestUnpredictable(t *testing.T) {
	// Real crypto/rand: successive picks in a /80 are not neighbours.
	a, err := NewAllocator(NewMemStore(), []PoolConfig{{Prefix: mustPrefix(t, "fd00::/80"), Gateway: mustAddr("fd00::1")}}, AllocatorOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var prev netip.Addr
	adjacent := 0
	for range 100 {
		l, err := a.Request("fd00::/80", netip.Addr{}, "")
		if err != nil {
			t.Fatal(err)
		}
		if prev.IsValid() && (l.Addr.Next() == prev || prev.Next() == l.Addr) {
			adjacent++
		}
		prev = l.Addr
	}
	if adjacent > 0 {
		t.Fatalf("%d of 100 picks were adjacent to the previous one", adjacent)
	}
}

func benchmarkAllocate(b *testing.B, held int) {
	a, err := NewAllocator(NewMemStore(), []PoolConfig{{Prefix: mustPrefix(b, "fd00::/80"), Gateway: mustAddr("fd00::1")}}, AllocatorOptions{})
	if err != nil {
		b.Fatal(err)
	}
	for range held {
		if _, err := a.Request("fd00::/80", netip.Addr{}, ""); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for b.Loop() {
		l, err := a.Request("fd00::/80", netip.Addr{}, "")
		if err != nil {
			b.Fatal(err)
		}
		if err := a.Release("fd00::/80", l.Addr); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAllocate10k(b *testing.B)  { benchmarkAllocate(b, 10_000) }
func BenchmarkAllocate100k(b *testing.B) { benchmarkAllocate(b, 100_000) }

// BenchmarkAllocateSmallNearlyFull is the worst case: a /112 with 60k of
// 65k addresses used, so random probes often miss and the scan runs.
func BenchmarkAllocateSmallNearlyFull(b *testing.B) {
	a, err := NewAllocator(NewMemStore(), []PoolConfig{{Prefix: mustPrefix(b, "fd00::/112"), Gateway: mustAddr("fd00::1")}}, AllocatorOptions{HoldDown: time.Nanosecond})
	if err != nil {
		b.Fatal(err)
	}
	for range 60_000 {
		if _, err := a.Request("fd00::/112", netip.Addr{}, ""); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for b.Loop() {
		l, err := a.Request("fd00::/112", netip.Addr{}, "")
		if err != nil {
			b.Fatal(err)
		}
		if err := a.Release("fd00::/112", l.Addr); err != nil {
			b.Fatal(err)
		}
	}
}
