package peers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/v6reg/v6reg/registrar"

	consul "github.com/hashicorp/consul/api"
)

// poolConsul is a catalog with one index, blocking queries that wait for
// it to move, and a count of queries in flight (each one a connection
// in the real client).
type poolConsul struct {
	mu       sync.Mutex
	cond     *sync.Cond
	index    uint64
	entries  map[string][]*consul.ServiceEntry // by service name
	inFlight int
	maxIn    int
	calls    int
	fail     error // every query fails with it while set
}

func newPoolConsul() *poolConsul {
	p := &poolConsul{index: 1, entries: map[string][]*consul.ServiceEntry{}}
	p.cond = sync.NewCond(&p.mu)
	return p
}

// wait blocks until the index passes waitIndex or ctx ends, counting the
// query in flight meanwhile.
func (p *poolConsul) wait(ctx context.Context, waitIndex uint64) error {
	p.mu.Lock()
	p.inFlight++
	p.calls++
	p.maxIn = max(p.maxIn, p.inFlight)
	stop := context.AfterFunc(ctx, func() { p.mu.Lock(); p.cond.Broadcast(); p.mu.Unlock() })
	defer stop()
	for waitIndex != 0 && p.index <= waitIndex && ctx.Err() == nil {
		p.cond.Wait()
	}
	p.inFlight--
	p.mu.Unlock()
	return ctx.Err()
}

func (p *poolConsul) HealthService(ctx context.Context, service, _ string, waitIndex uint64) ([]*consul.ServiceEntry, uint64, error) {
	if err := p.wait(ctx, waitIndex); err != nil {
		return nil, 0, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fail != nil {
		return nil, 0, p.fail
	}
	return p.entries[service], p.index, nil
}

func (p *poolConsul) CatalogIndex(ctx context.Context, waitIndex uint64) (uint64, error) {
	if err := p.wait(ctx, waitIndex); err != nil {
		return 0, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fail != nil {
		return 0, p.fail
	}
	return p.index, nil
}

func (p *poolConsul) Services(context.Context) (map[string]*consul.AgentService, error) {
	return nil, nil
}
func (p *poolConsul) Register(context.Context, *consul.AgentServiceRegistration) error { return nil }
func (p *poolConsul) Deregister(context.Context, string) error                         { return nil }
func (p *poolConsul) Checks(context.Context) (map[string]*consul.AgentCheck, error)    { return nil, nil }

// register adds a v6reg registration of service at addr (node n2's
// prefix), created at the next index.
func (p *poolConsul) register(service, addr string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.index++
	p.entries[service] = append(p.entries[service], &consul.ServiceEntry{Service: &consul.AgentService{
		ID: fmt.Sprintf("v6reg-n2-%012d-%s-0", p.index, service), Service: service, Address: addr, CreateIndex: p.index,
		Meta: map[string]string{registrar.MetaOwner: "n2", registrar.MetaContainer: "c", registrar.MetaPrefix: "2001:db8:0:2:2::/80", registrar.MetaNamespace: "default"},
	}})
	p.cond.Broadcast()
}

func (p *poolConsul) stats() (inFlight, maxIn, calls int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.inFlight, p.maxIn, p.calls
}

func TestPeerWatchSplit(t *testing.T) {
	for _, tc := range []struct{ conns, dedicated, workers int }{
		{32, 27, 4}, {3, 1, 1}, {8, 6, 1}, {16, 12, 3}, {150, 145, 4}, {0, 1, 1},
	} {
		d, w := peerWatchSplit(tc.conns)
		if d != tc.dedicated || w != tc.workers || (tc.conns >= MinWatchConnections && d+w+1 != tc.conns) {
			t.Errorf("split(%d) = %d dedicated %d workers, want %d %d", tc.conns, d, w, tc.dedicated, tc.workers)
		}
	}
}

// 300 keys on a budget of 16 queries: never more in flight, every key
// answered, and a change to a key without a query of its own reaches
// its set and triggers a reconcile.
func TestPeerWatchesBoundedQueries(t *testing.T) {
	const budget, keys = 16, 300
	p := newPoolConsul()
	var trigMu sync.Mutex
	var triggers []string
	w := NewWatches(Options{API: p, IDPrefix: "v6reg", Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Trigger: func(r string) { trigMu.Lock(); triggers = append(triggers, r); trigMu.Unlock() }})
	w.dedicatedMax, w.workers = peerWatchSplit(budget)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	want := map[Key]bool{}
	for i := range keys {
		want[mustKey(fmt.Sprintf("service:default/s%03d", i))] = true
	}
	started := w.Want(ctx, want)
	if len(started) != keys {
		t.Fatalf("started %d keys", len(started))
	}
	waitFor(t, func() bool {
		for k := range want {
			if _, ok := w.Get(k); !ok {
				return false
			}
		}
		return true
	}, "every key's first answer")
	// s299 is last in key order: shared.
	last := mustKey("service:default/s299")
	if pw := w.running[last.String()]; pw == nil || pw.cancel != nil {
		t.Fatalf("%s should be shared", last)
	}
	p.register("s299", "2001:db8:0:2:2::99")
	waitFor(t, func() bool { a, _ := w.Get(last); return len(a) == 1 }, "the change to a shared key")
	trigMu.Lock()
	found := false
	for _, r := range triggers {
		found = found || r == "consul: peer "+last.String()+" changed"
	}
	trigMu.Unlock()
	if !found {
		t.Errorf("no trigger for %s", last)
	}
	// And a dedicated one.
	p.register("s000", "2001:db8:0:2:2::10")
	waitFor(t, func() bool { a, _ := w.Get(mustKey("service:default/s000")); return len(a) == 1 }, "the change to a dedicated key")
	// Churn: many changes while the queue drains.
	for i := range 50 {
		p.register(fmt.Sprintf("s%03d", 100+i), "2001:db8:0:2:2::5")
	}
	waitFor(t, func() bool { a, _ := w.Get(mustKey("service:default/s149")); return len(a) == 1 }, "churn")
	_, maxIn, calls := p.stats()
	t.Logf("%d keys, budget %d: at most %d queries in flight, %d queries in all", keys, budget, maxIn, calls)
	if maxIn > budget {
		t.Fatalf("%d queries in flight at once, budget %d", maxIn, budget)
	}
	// Dropping keys frees dedicated slots for shared ones.
	less := map[Key]bool{}
	for k := range want {
		if !strings.HasPrefix(k.String(), "service:default/s00") {
			less[k] = true
		}
	}
	w.Want(ctx, less)
	w.mu.Lock()
	dedicated := 0
	for _, pw := range w.running {
		if pw.cancel != nil {
			dedicated++
		}
	}
	n := len(w.running)
	w.mu.Unlock()
	if n != keys-10 || dedicated != w.dedicatedMax {
		t.Errorf("after dropping 10 keys: %d running, %d dedicated; want %d, %d", n, dedicated, keys-10, w.dedicatedMax)
	}
	if a, ok := w.Get(last); !ok || len(a) != 1 {
		t.Errorf("a shared key lost its set: %v %v", a, ok)
	}
}

// A set over limits.peer_set_addresses keeps the registrations that came
// first, whatever their addresses: a flood cannot displace them. Resolve
// (explain's one-off answer) cuts the same way and says which were cut.
func TestPeerSetTruncatedToOldest(t *testing.T) {
	p := newPoolConsul()
	p.register("db", "2001:db8:0:2:2::ff") // first
	p.register("db", "2001:db8:0:2:2::fe") // second
	for i := range 100 {                   // a flood of lower addresses
		p.register("db", fmt.Sprintf("2001:db8:0:2:2::%x", i+1))
	}
	key := mustKey("service:default/db")
	q := queryOf(key)
	list, over, _ := q.prefixes("v6reg", p.entries["db"], 2)
	if len(over) != 100 || len(list) != 2 || list[0].Addr() != netip.MustParseAddr("2001:db8:0:2:2::fe") || list[1].Addr() != netip.MustParseAddr("2001:db8:0:2:2::ff") {
		t.Fatalf("cut = %v and %d over, want ::fe and ::ff and 100 over", list, len(over))
	}
	if !slices.IsSortedFunc(over, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) }) || over[0].Addr() != netip.MustParseAddr("2001:db8:0:2:2::1") {
		t.Errorf("over is not the flood, sorted: %v...", over[:3])
	}
	full, over, _ := q.prefixes("v6reg", p.entries["db"], 0)
	if len(full) != 102 || over != nil {
		t.Fatalf("uncut = %d, %d over", len(full), len(over))
	}
	res, err := Resolve(t.Context(), p, "v6reg", key, 2)
	if err != nil {
		t.Fatal(err)
	}
	cut, ok := res.Cut(key)
	if !ok || !slices.Equal(res.Addrs, list) || cut != (Cut{Key: key, Registrations: 102, Kept: 2, Limit: 2}) {
		t.Errorf("Resolve = %v, cut %+v %v; want the watches' cut", res.Addrs, cut, ok)
	}
	if res, _ := Resolve(t.Context(), p, "v6reg", key, 0); len(res.Addrs) != 102 || res.Over != nil {
		t.Errorf("Resolve without a limit = %d addresses, %d over", len(res.Addrs), len(res.Over))
	}
}

// The watches report each set they cut (status shows them), with the
// limit applied, and forget it once the set fits or is no longer used.
func TestWatchesReportCuts(t *testing.T) {
	p := newPoolConsul()
	for i := range 5 {
		p.register("db", fmt.Sprintf("2001:db8:0:2:2::%x", 0x20-i))
	}
	p.register("web", "2001:db8:0:2:2::1")
	var limit atomic.Int64
	limit.Store(3)
	var truncated atomic.Int64
	w := NewWatches(Options{API: p, IDPrefix: "v6reg", Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		MaxAddrs: func() int { return int(limit.Load()) },
		OnBounds: func(_, _, n int) { truncated.Store(int64(n)) }})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	db, web := mustKey("service:default/db"), mustKey("service:default/web")
	w.Want(ctx, map[Key]bool{db: true, web: true})
	waitFor(t, func() bool { return len(w.Cuts()) == 1 }, "the cut of db")
	if got := w.Cuts(); got[0] != (Cut{Key: db, Registrations: 5, Kept: 3, Limit: 3}) || truncated.Load() != 1 {
		t.Fatalf("cuts = %+v, metric %d", got, truncated.Load())
	}
	// Raised: the next answer fits.
	limit.Store(10)
	p.register("db", "2001:db8:0:2:2::40")
	waitFor(t, func() bool { return len(w.Cuts()) == 0 }, "db no longer cut")
	limit.Store(2)
	p.register("db", "2001:db8:0:2:2::41")
	waitFor(t, func() bool { return len(w.Cuts()) == 1 && w.Cuts()[0].Registrations == 7 }, "db cut to 2 of 7")
	w.Want(ctx, map[Key]bool{web: true})
	if got := w.Cuts(); len(got) != 0 || truncated.Load() != 0 {
		t.Errorf("after db is no longer used: cuts %+v, metric %d", got, truncated.Load())
	}
}

// A changed limit (SIGHUP) cuts every set again at once, from Consul's
// last answer: nothing in Consul changes, and the sets follow the limit
// down and back up, keeping the registrations that came first.
func TestRecutFollowsTheLimitWithoutConsul(t *testing.T) {
	p := newPoolConsul()
	for i := range 5 {
		p.register("db", fmt.Sprintf("2001:db8:0:2:2::%x", 0x20-i)) // ::20 first, ::1c last
	}
	var limit atomic.Int64
	limit.Store(10)
	var trigMu sync.Mutex
	var triggers []string
	w := NewWatches(Options{API: p, IDPrefix: "v6reg", Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		MaxAddrs: func() int { return int(limit.Load()) },
		Trigger:  func(r string) { trigMu.Lock(); triggers = append(triggers, r); trigMu.Unlock() }})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	db := mustKey("service:default/db")
	w.Want(ctx, map[Key]bool{db: true})
	waitFor(t, func() bool { a, ok := w.Get(db); return ok && len(a) == 5 }, "db's five addresses")
	trigMu.Lock()
	before := len(triggers)
	trigMu.Unlock()

	limit.Store(2)
	w.Recut()
	got, _ := w.Get(db)
	want := []netip.Prefix{netip.MustParsePrefix("2001:db8:0:2:2::1f/128"), netip.MustParsePrefix("2001:db8:0:2:2::20/128")}
	if !slices.Equal(got, want) {
		t.Fatalf("after the limit fell to 2: %v, want the two registered first %v", got, want)
	}
	if c := w.Cuts(); len(c) != 1 || c[0] != (Cut{Key: db, Registrations: 5, Kept: 2, Limit: 2}) {
		t.Errorf("cuts = %+v", c)
	}
	trigMu.Lock()
	if len(triggers) != before+1 {
		t.Errorf("triggers after the recut: %v, want one more than %d", triggers, before)
	}
	trigMu.Unlock()

	w.Recut() // the same limit: nothing changes, no reconcile
	trigMu.Lock()
	if len(triggers) != before+1 {
		t.Errorf("a recut at the same limit triggered: %v", triggers)
	}
	trigMu.Unlock()

	limit.Store(10)
	w.Recut()
	if got, _ := w.Get(db); len(got) != 5 || len(w.Cuts()) != 0 {
		t.Errorf("after the limit rose to 10: %v, cuts %+v; want all five, none cut", got, w.Cuts())
	}
}

func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A shared key keeps its persisted set while Consul fails, and takes
// Consul's answer, with a reconcile, once it is back.
func TestSharedPeerKeepsSeedWhileConsulFails(t *testing.T) {
	p := newPoolConsul()
	p.fail = errors.New("connection refused")
	var trigMu sync.Mutex
	var triggers []string
	w := NewWatches(Options{API: p, IDPrefix: "v6reg", Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Trigger: func(r string) { trigMu.Lock(); triggers = append(triggers, r); trigMu.Unlock() }})
	w.dedicatedMax, w.workers = 1, 1 // s0 dedicated, s1 shared
	seed := []netip.Prefix{netip.MustParsePrefix("2001:db8:0:2:2::1/128")}
	w.Seed(map[Key][]netip.Prefix{mustKey("service:default/s1"): seed})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	w.Want(ctx, map[Key]bool{mustKey("service:default/s0"): true, mustKey("service:default/s1"): true})
	time.Sleep(300 * time.Millisecond)
	if got, ok := w.Get(mustKey("service:default/s1")); !ok || !prefixesEqual(got, seed) {
		t.Fatalf("while Consul fails: %v %v, want the persisted set", got, ok)
	}
	p.mu.Lock()
	p.fail = nil
	p.mu.Unlock()
	p.register("s1", "2001:db8:0:2:2::2")
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, _ := w.Get(mustKey("service:default/s1"))
		if len(got) == 1 && got[0].Addr() == netip.MustParseAddr("2001:db8:0:2:2::2") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Consul's answer never replaced the persisted set: %v", got)
		}
		time.Sleep(10 * time.Millisecond)
	}
	trigMu.Lock()
	defer trigMu.Unlock()
	if !slices.Contains(triggers, "consul: peer service:default/s1 changed") {
		t.Errorf("triggers = %v", triggers)
	}
}

func mustKey(s string) Key {
	k, err := ParseKey(s)
	if err != nil {
		panic(err)
	}
	return k
}
