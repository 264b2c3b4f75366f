package ipam

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// PoolConfig describes one pool of the allocator.
type PoolConfig struct {
	Prefix   netip.Prefix
	Gateway  netip.Addr // reserved and granted only for gateway requests
	Reserved []netip.Addr
}

// AllocatorOptions are the allocator's injectable parts.
type AllocatorOptions struct {
	HoldDown time.Duration    // 0 means DefaultHoldDown
	Now      func() time.Time // nil means time.Now
	Rand     io.Reader        // nil means crypto/rand
	Log      *slog.Logger     // nil discards
}

// Allocator hands out addresses of its pools. Every change is committed to
// the Store before it is applied in memory and before the caller gets an
// answer, so a crash never loses a grant.
type Allocator struct {
	mu    sync.Mutex
	pools map[string]*pool
	order []*pool
	store Store
	now   func() time.Time
	rand  io.Reader
	log   *slog.Logger
}

// ErrUnknownPool is returned for a pool ID the allocator does not serve.
var ErrUnknownPool = errors.New("unknown pool")

// NewAllocator loads the store's leases and hold-downs into the pools.
// Records for addresses outside every pool stay in the store untouched
// (a prefix change must not silently drop them) and are logged.
func NewAllocator(store Store, pools []PoolConfig, o AllocatorOptions) (*Allocator, error) {
	if o.HoldDown == 0 {
		o.HoldDown = DefaultHoldDown
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	// Times as the store keeps them: no monotonic reading, UTC, so a lease
	// in memory equals the same lease read back after a restart.
	clock := o.Now
	o.Now = func() time.Time { return clock().Round(0).UTC() }
	if o.Rand == nil {
		o.Rand = rand.Reader
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	a := &Allocator{pools: map[string]*pool{}, store: store, now: o.Now, rand: o.Rand, log: o.Log}
	for _, pc := range pools {
		if !pc.Prefix.IsValid() {
			return nil, errors.New("allocator pool prefix is not set")
		}
		p := newPool(pc.Prefix.Addr(), pc.Gateway, pc.Prefix.Bits(), pc.Reserved, o.HoldDown)
		for _, q := range a.order {
			if q.prefix.Overlaps(p.prefix) {
				return nil, fmt.Errorf("allocator pools %s and %s overlap: configure disjoint prefixes", q.id, p.id)
			}
		}
		a.pools[p.id] = p
		a.order = append(a.order, p)
	}
	st, err := store.Load()
	if err != nil {
		return nil, err
	}
	var orphans int
	for _, l := range st.Leases {
		if p := a.poolOf(l.Addr); p != nil {
			l.Pool = p.id
			p.leases[l.Addr] = l
		} else {
			orphans++
		}
	}
	for _, h := range st.Holds {
		if p := a.poolOf(h.Addr); p != nil {
			if _, leased := p.leases[h.Addr]; !leased {
				h.Pool = p.id
				p.holds[h.Addr] = h
			}
		} else {
			orphans++
		}
	}
	if orphans > 0 {
		a.log.Warn("ipam store holds records outside the configured pools; kept on disk, ignored", "records", orphans)
	}
	return a, nil
}

func (a *Allocator) poolOf(addr netip.Addr) *pool {
	for _, p := range a.order {
		if p.contains(addr) {
			return p
		}
	}
	return nil
}

func (a *Allocator) pool(id string) (*pool, error) {
	if p, ok := a.pools[id]; ok {
		return p, nil
	}
	ids := make([]string, 0, len(a.order))
	for _, p := range a.order {
		ids = append(ids, p.id)
	}
	return nil, fmt.Errorf("pool %q: %w (served: %v)", id, ErrUnknownPool, ids)
}

// Request leases an address of poolID: want if valid (granted when free or
// already leased, i.e. Docker re-claiming its own), otherwise an
// unpredictable free one.
func (a *Allocator) Request(poolID string, want netip.Addr, owner string) (Lease, error) {
	return a.RequestFor(poolID, want, owner, "")
}

// RequestFor is Request from a named endpoint (Docker 29+ sends the
// endpoint's name, which is the container's name, with every request; 28
// and older send none, and endpoint is empty). An address that endpoint
// released is still its own during hold-down: asked for no address, the
// endpoint gets it back (a container restarting keeps its address, so
// DNS, Traefik and peers' caches stay right), and asked for it by
// address, it is granted. Any other endpoint is refused it until the
// hold-down ends.
func (a *Allocator) RequestFor(poolID string, want netip.Addr, owner, endpoint string) (Lease, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	p, err := a.pool(poolID)
	if err != nil {
		return Lease{}, err
	}
	now := a.now()
	addr := want
	if h, ok := p.heldFor(endpoint); endpoint != "" && ok && (!want.IsValid() || want == h.Addr) {
		addr = h.Addr
		a.log.Info("ipam address returned to its endpoint from hold-down", "addr", addr, "pool", p.id, "endpoint", endpoint, "released", h.Released)
	} else if want.IsValid() {
		if l, ok := p.leases[want]; ok && endpoint != "" && l.Endpoint != "" && l.Endpoint != endpoint {
			return Lease{}, fmt.Errorf("address %s of pool %s is leased to endpoint %q, not %q: request another address or none", want, p.id, l.Endpoint, endpoint)
		}
		// Engines before Docker 29 send no endpoint name (and no MAC: the
		// driver does not ask for one), so a leased address requested by
		// another container is granted as a re-claim here; desired.Build
		// then keeps the address with the container in force, else the
		// older one, and closes the other.
		reclaim, err := p.checkSpecific(want, now)
		if err != nil {
			return Lease{}, err
		}
		if reclaim {
			l := p.leases[want]
			a.log.Info("ipam address re-claimed", "addr", want, "pool", p.id, "granted", l.Granted)
			return l, nil
		}
	} else if addr, err = p.pick(now, a.rand); err != nil {
		return Lease{}, err
	}
	l := Lease{Addr: addr, Pool: p.id, Granted: now, Owner: owner, Endpoint: endpoint}
	c := Change{PutLeases: []Lease{l}}
	if _, ok := p.holds[addr]; ok { // an expired hold-down
		c.DeleteHolds = []netip.Addr{addr}
	}
	if err := a.store.Commit(c); err != nil {
		return Lease{}, fmt.Errorf("lease %s: %w", addr, err)
	}
	p.leases[addr] = l
	delete(p.holds, addr)
	return l, nil
}

// Gateway returns the gateway of poolID for Docker's gateway request; a
// different specific address is refused.
func (a *Allocator) Gateway(poolID string, want netip.Addr) (netip.Addr, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	p, err := a.pool(poolID)
	if err != nil {
		return netip.Addr{}, err
	}
	if !p.gateway.IsValid() {
		return netip.Addr{}, fmt.Errorf("pool %s has no gateway configured", p.id)
	}
	if want.IsValid() && want != p.gateway {
		return netip.Addr{}, fmt.Errorf("gateway %s requested for pool %s, but v6reg is configured with gateway %s: create the network with --gateway %s or change the v6reg gateway", want, p.id, p.gateway, p.gateway)
	}
	return p.gateway, nil
}

// Release ends the lease of addr and puts it into hold-down. Releasing an
// address that is not leased still records a hold-down (the store may have
// been rebuilt), except for reserved addresses such as the gateway.
func (a *Allocator) Release(poolID string, addr netip.Addr) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	p, err := a.pool(poolID)
	if err != nil {
		return err
	}
	if !p.contains(addr) {
		return fmt.Errorf("address %s is outside pool %s", addr, p.id)
	}
	if _, ok := p.reserved[addr]; ok {
		return nil
	}
	h := Hold{Addr: addr, Pool: p.id, Released: a.now(), Endpoint: p.leases[addr].Endpoint}
	if err := a.store.Commit(Change{DeleteLeases: []netip.Addr{addr}, PutHolds: []Hold{h}}); err != nil {
		return fmt.Errorf("release %s: %w", addr, err)
	}
	delete(p.leases, addr)
	p.holds[addr] = h
	return nil
}

// ReconcileResult says what Reconcile changed.
type ReconcileResult struct {
	Adopted  []netip.Addr // in use by Docker, missing from the store
	Released []netip.Addr // leased in the store, not in use by Docker: now in hold-down
	Pruned   int          // expired hold-downs removed
	Ignored  []netip.Addr // in use by Docker but outside every pool or reserved
}

// Reconcile makes the leases equal to inUse (address -> owner hint), the
// addresses Docker really has. Docker is the truth for what is in use; the
// store stays the truth for hold-down, so released leases go into hold-down
// rather than becoming free. Expired hold-downs are pruned. One commit.
func (a *Allocator) Reconcile(inUse map[netip.Addr]string) (ReconcileResult, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.now()
	var res ReconcileResult
	var c Change
	adopt := map[*pool][]Lease{}
	for addr, owner := range inUse {
		p := a.poolOf(addr)
		if p == nil {
			res.Ignored = append(res.Ignored, addr)
			continue
		}
		if _, ok := p.reserved[addr]; ok {
			if addr != p.gateway {
				res.Ignored = append(res.Ignored, addr)
			}
			continue
		}
		if _, ok := p.leases[addr]; ok {
			continue
		}
		l := Lease{Addr: addr, Pool: p.id, Granted: now, Owner: owner}
		adopt[p] = append(adopt[p], l)
		c.PutLeases = append(c.PutLeases, l)
		if _, ok := p.holds[addr]; ok {
			c.DeleteHolds = append(c.DeleteHolds, addr)
		}
		res.Adopted = append(res.Adopted, addr)
	}
	var release []Hold
	for _, p := range a.order {
		for addr := range p.leases {
			if _, ok := inUse[addr]; !ok {
				h := Hold{Addr: addr, Pool: p.id, Released: now}
				release = append(release, h)
				c.DeleteLeases = append(c.DeleteLeases, addr)
				c.PutHolds = append(c.PutHolds, h)
				res.Released = append(res.Released, addr)
			}
		}
		for addr, h := range p.holds {
			if !now.Before(h.Released.Add(p.holdDown)) {
				if _, adopted := inUse[addr]; !adopted { // adoption deletes it already
					c.DeleteHolds = append(c.DeleteHolds, addr)
					res.Pruned++
				}
			}
		}
	}
	if err := a.store.Commit(c); err != nil {
		return ReconcileResult{}, fmt.Errorf("reconcile: %w", err)
	}
	for p, ls := range adopt {
		for _, l := range ls {
			p.leases[l.Addr] = l
			delete(p.holds, l.Addr)
		}
	}
	for _, h := range release {
		p := a.pools[h.Pool]
		delete(p.leases, h.Addr)
		p.holds[h.Addr] = h
	}
	for _, addr := range c.DeleteHolds {
		if p := a.poolOf(addr); p != nil {
			delete(p.holds, addr)
		}
	}
	for _, s := range [][]netip.Addr{res.Adopted, res.Released, res.Ignored} {
		slices.SortFunc(s, func(x, y netip.Addr) int { return x.Compare(y) })
	}
	return res, nil
}

// PruneHolds forgets hold-downs that have expired, so the hold list does not
// grow without bound on a busy node.
func (a *Allocator) PruneHolds() (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.now()
	var del []netip.Addr
	for _, p := range a.order {
		for addr, h := range p.holds {
			if !now.Before(h.Released.Add(p.holdDown)) {
				del = append(del, addr)
			}
		}
	}
	if err := a.store.Commit(Change{DeleteHolds: del}); err != nil {
		return 0, fmt.Errorf("prune hold-downs: %w", err)
	}
	for _, addr := range del {
		delete(a.poolOf(addr).holds, addr)
	}
	return len(del), nil
}

// Leases returns all leases, sorted by address.
func (a *Allocator) Leases() []Lease {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []Lease
	for _, p := range a.order {
		for _, l := range p.leases {
			out = append(out, l)
		}
	}
	slices.SortFunc(out, func(x, y Lease) int { return x.Addr.Compare(y.Addr) })
	return out
}

// Holds returns the hold-downs still in effect, sorted by address.
func (a *Allocator) Holds() []Hold {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.now()
	var out []Hold
	for _, p := range a.order {
		for addr := range p.holds {
			if h, ok := p.heldAt(addr, now); ok {
				out = append(out, h)
			}
		}
	}
	slices.SortFunc(out, func(x, y Hold) int { return x.Addr.Compare(y.Addr) })
	return out
}

// PoolIDs lists the pools, in configuration order.
func (a *Allocator) PoolIDs() []string {
	ids := make([]string, 0, len(a.order))
	for _, p := range a.order {
		ids = append(ids, p.id)
	}
	return ids
}
