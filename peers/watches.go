// Package peers resolves service: and job: peers: it follows, in Consul,
// the registrations v6reg made on any node for the peers a local policy
// names, with a bounded number of connections, and keeps their addresses
// through Consul's outages.
package peers

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	consul "github.com/hashicorp/consul/api"

	"github.com/v6reg/v6reg/internal/backoff"
	"github.com/v6reg/v6reg/registrar"
)

// API is what the watches ask of Consul: one (blocking) health query for
// the instances of a service. CatalogIndexer, if the API has it, lets
// the shared watch follow the catalog's index.
type API interface {
	HealthService(ctx context.Context, service, tag string, waitIndex uint64) ([]*consul.ServiceEntry, uint64, error)
}

// BackReason starts the trigger reason of a peer watch whose Consul
// answers again after failing.
const BackReason = "consul: reachable again"

// Watches follows the instances of every service:NAME and job:NAME
// peer that a local policy uses, and only those, with a bounded number of
// connections to Consul however many peers there are (see peerpool.go):
// up to dedicatedMax keys get a blocking query each; the others are
// "shared": one blocking query on the catalog's service index says when
// anything in the catalog changed, and a few workers refresh the shared
// keys with non-blocking queries, each key queued at most once.
type Watches struct {
	api API
	// idPrefix is the service ID prefix of v6reg's registrations: only
	// entries that carry it, with the rest of what v6reg writes, are peers.
	idPrefix string
	log      *slog.Logger
	trigger  func(string)
	onError  func()
	// onIgnored reports, after every answer, how many catalog entries
	// are ignored across all watches, by reason.
	onIgnored func(map[string]int)

	// Bounds (peerpool.go): keys with a blocking query of their own, and
	// workers refreshing the shared ones. One more connection holds the
	// catalog index query.
	dedicatedMax, workers int
	// maxAddrs is limits.peer_set_addresses (nil or 0: no cut).
	maxAddrs func() int
	// onBounds reports the watches by mode and the sets cut.
	onBounds func(dedicated, shared, truncated int)
	// open reports the connections the watch client holds (nil: unknown).
	open func() int64

	mu      sync.Mutex
	running map[string]*peerWatch
	addrs   map[string][]netip.Prefix // by peer key; absent until first answer
	// ranked is, by peer key, every peer address of Consul's last answer
	// in the order the cut takes them: Recut cuts again from it.
	ranked map[string][]netip.Addr
	// seed is the last known set of each peer persisted by the agent's
	// last run, used until Consul answers for it: a restart while Consul
	// does not answer keeps the sets in force, never empty ones.
	seed map[string][]netip.Prefix
	gen  uint64 // counts changes of addrs, to persist only changes
	// ignored counts, per peer key and reason, the entries of the last
	// answer that are not v6reg's registrations.
	ignored map[string]map[string]int
	// truncated holds the keys cut to maxAddrs, and how.
	truncated map[string]Cut
	// shared keys waiting for a refresh, in order, each at most once.
	queue  []string
	queued map[string]bool
	wake   chan struct{}
	// sharedOn is set once the catalog watch and the workers run.
	sharedOn bool
	// sharedFailing: the last shared refresh failed (to say when Consul
	// is back).
	sharedFailing bool
}

// Seed starts the watches with the sets persisted by the last run.
func (w *Watches) Seed(peers map[Key][]netip.Prefix) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.seed = make(map[string][]netip.Prefix, len(peers))
	for k, v := range peers {
		w.seed[k.String()] = v
	}
}

// Known returns the last known set of every peer in use (Consul's answer,
// else the persisted one), to persist, and the change count.
func (w *Watches) Known() (map[Key][]netip.Prefix, uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make(map[Key][]netip.Prefix, len(w.addrs)+len(w.seed))
	for _, m := range []map[string][]netip.Prefix{w.seed, w.addrs} { // Consul's answer wins
		for k, v := range m {
			if key, err := ParseKey(k); err == nil {
				out[key] = v
			}
		}
	}
	return out, w.gen
}

// Options configure the watches.
type Options struct {
	API API
	// IDPrefix is the service ID prefix of v6reg's registrations.
	IDPrefix string
	Log      *slog.Logger
	// Trigger asks the agent for a reconcile (a set changed, Consul is
	// back: BackReason).
	Trigger func(reason string)
	// OnError counts a failed query.
	OnError func()
	// OnIgnored reports, after every answer, how many catalog entries
	// are ignored across all watches, by reason.
	OnIgnored func(map[string]int)
	// Connections is the budget of connections to Consul (0:
	// DefaultWatchConnections); Open reports those the client holds
	// (nil: unknown).
	Connections int
	Open        func() int64
	// MaxAddrs is limits.peer_set_addresses (nil or 0: no cut).
	MaxAddrs func() int
	// OnBounds reports the watches by mode and the sets cut.
	OnBounds func(dedicated, shared, truncated int)
}

// NewWatches follows nothing until Want names keys.
func NewWatches(o Options) *Watches {
	conns := o.Connections
	if conns == 0 {
		conns = DefaultWatchConnections
	}
	dedicated, workers := peerWatchSplit(conns)
	nop := func() {}
	if o.OnError == nil {
		o.OnError = nop
	}
	if o.Trigger == nil {
		o.Trigger = func(string) {}
	}
	return &Watches{api: o.API, idPrefix: o.IDPrefix, log: o.Log, trigger: o.Trigger, onError: o.OnError, onIgnored: o.OnIgnored,
		dedicatedMax: dedicated, workers: workers, maxAddrs: o.MaxAddrs, onBounds: o.OnBounds, open: o.Open,
		running: map[string]*peerWatch{}, addrs: map[string][]netip.Prefix{}, ranked: map[string][]netip.Addr{}, ignored: map[string]map[string]int{},
		truncated: map[string]Cut{}, queued: map[string]bool{}, wake: make(chan struct{}, peerWatchWorkers)}
}

// OpenConnections reports the connections the watch client holds, if
// known.
func (w *Watches) OpenConnections() (int64, bool) {
	if w.open == nil {
		return 0, false
	}
	return w.open(), true
}

// Watching is how many keys are followed.
func (w *Watches) Watching() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.running)
}

// Reasons a catalog entry is not a peer, as the ignored-entries metric
// labels them.
const (
	IgnoredForeign   = "foreign"        // not registered by v6reg (no v6reg ID prefix, owner or prefix meta)
	IgnoredOutside   = "outside_prefix" // an address outside the registering node's prefix
	IgnoredNamespace = "namespace"      // registered for a container of another namespace or job
)

// IgnoredReasons are the label values of the ignored-entries metric.
var IgnoredReasons = []string{IgnoredForeign, IgnoredOutside, IgnoredNamespace}

// peerAddr returns the address of a catalog entry if it is a registration
// v6reg made for a container it manages, with the namespace and job the
// peer key asks for; else "" and why not. What proves it: the ID v6reg
// gives (ID prefix, then the owner node named in meta), the owner and
// node prefix meta v6reg writes, and an address inside that prefix. A
// Nomad service block cannot choose its ID; a v6reg on another node
// writes the same shape, so peers resolve on every node.
func peerAddr(idPrefix, namespace, job string, e *consul.ServiceEntry) (netip.Addr, string) {
	if e == nil || e.Service == nil {
		return netip.Addr{}, IgnoredForeign
	}
	s := e.Service
	owner := s.Meta[registrar.MetaOwner]
	if owner == "" || !strings.HasPrefix(s.ID, idPrefix+"-"+owner+"-") || s.Meta[registrar.MetaContainer] == "" {
		return netip.Addr{}, IgnoredForeign
	}
	prefix, err := netip.ParsePrefix(s.Meta[registrar.MetaPrefix])
	if err != nil || !prefix.Addr().Is6() || prefix.Addr().Is4In6() || prefix.Bits() < 48 || prefix != prefix.Masked() {
		return netip.Addr{}, IgnoredForeign
	}
	a, err := netip.ParseAddr(s.Address)
	if err != nil || !a.Is6() || a.Is4In6() || a.Zone() != "" || !prefix.Contains(a) || a == prefix.Addr() {
		return netip.Addr{}, IgnoredOutside
	}
	if s.Meta[registrar.MetaNamespace] != namespace || (job != "" && s.Meta[registrar.MetaJob] != job) {
		return netip.Addr{}, IgnoredNamespace
	}
	return a, ""
}

// peerQuery is what a peer key asks Consul, and of its answer.
type peerQuery struct{ service, tag, namespace, job string }

func peerQueryOf(key string) (peerQuery, bool) {
	k, err := ParseKey(key)
	if err != nil {
		return peerQuery{}, false
	}
	return queryOf(k), true
}

// queryOf is what a key asks Consul.
func queryOf(k Key) peerQuery {
	q := peerQuery{namespace: k.Namespace}
	switch k.Kind {
	case Service:
		q.service = k.Name
	case Job:
		q.job = k.Name
		q.service, q.tag = registrar.JobsService, registrar.JobTag(q.namespace, q.job)
	}
	return q
}

// prefixes keeps the addresses of the entries that are peers, sorted, and
// counts the others by reason (nil if none). With limit > 0 and more peers
// than that, it keeps the limit registered first (lowest create index, then
// address: the same choice on every node, and stable while they stay);
// over holds the others, sorted. The watches and Resolve both cut here,
// so that what explain says is what the firewall holds.
func (q peerQuery) prefixes(idPrefix string, entries []*consul.ServiceEntry, limit int) (kept, over []netip.Prefix, ignored map[string]int) {
	ranked, ignored := q.rank(idPrefix, entries)
	kept, over = cutRanked(ranked, limit)
	return kept, over, ignored
}

// rank returns the addresses of the entries that are peers in the order
// the cut takes them (lowest create index, then address), and counts the
// others by reason (nil if none).
func (q peerQuery) rank(idPrefix string, entries []*consul.ServiceEntry) (ranked []netip.Addr, ignored map[string]int) {
	first := map[netip.Addr]uint64{} // address -> lowest create index
	for _, e := range entries {
		a, why := peerAddr(idPrefix, q.namespace, q.job, e)
		if why != "" {
			if ignored == nil {
				ignored = map[string]int{}
			}
			ignored[why]++
			continue
		}
		if ci, ok := first[a]; !ok || e.Service.CreateIndex < ci {
			first[a] = e.Service.CreateIndex
		}
	}
	ranked = make([]netip.Addr, 0, len(first))
	for a := range first {
		ranked = append(ranked, a)
	}
	sort.Slice(ranked, func(i, j int) bool {
		if first[ranked[i]] != first[ranked[j]] {
			return first[ranked[i]] < first[ranked[j]]
		}
		return ranked[i].Less(ranked[j])
	})
	return ranked, ignored
}

// cutRanked keeps the first limit of ranked (all with limit <= 0), sorted,
// and returns the others, sorted, as over (nil unless cut).
func cutRanked(ranked []netip.Addr, limit int) (kept, over []netip.Prefix) {
	addrs := slices.Clone(ranked)
	var cut []netip.Addr
	if limit > 0 && len(addrs) > limit {
		addrs, cut = addrs[:limit], addrs[limit:]
	}
	return hostPrefixes(addrs), hostPrefixes(cut)
}

// hostPrefixes sorts addrs and writes each as a /128 (nil if none).
func hostPrefixes(addrs []netip.Addr) []netip.Prefix {
	if addrs == nil {
		return nil
	}
	sort.Slice(addrs, func(i, j int) bool { return addrs[i].Less(addrs[j]) })
	out := make([]netip.Prefix, len(addrs))
	for i, a := range addrs {
		out[i] = netip.PrefixFrom(a, 128)
	}
	return out
}

// setIgnored records the ignored counts of one key and reports the sum.
// Called with w.mu held.
func (w *Watches) setIgnored(key string, counts map[string]int) {
	if counts == nil {
		delete(w.ignored, key)
	} else {
		w.ignored[key] = counts
	}
	if w.onIgnored == nil {
		return
	}
	sum := map[string]int{}
	for _, r := range IgnoredReasons {
		sum[r] = 0
	}
	for _, c := range w.ignored {
		for r, n := range c {
			sum[r] += n
		}
	}
	w.onIgnored(sum)
}

// Want starts watches for keys not yet followed and stops the others. It
// returns the keys it started. New keys get a blocking query of their own
// while fewer than dedicatedMax run (in key order, so the choice is
// stable), the rest are shared; a dedicated slot freed goes to a shared
// key.
func (w *Watches) Want(ctx context.Context, want map[Key]bool) []Key {
	keys := make(map[string]bool, len(want))
	for k := range want {
		keys[k.String()] = true
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for k, pw := range w.running {
		if !keys[k] {
			if pw.cancel != nil {
				pw.cancel()
			}
			delete(w.running, k)
			delete(w.addrs, k)
			delete(w.ranked, k)
			delete(w.truncated, k)
			w.setIgnored(k, nil)
			w.gen++
		}
	}
	for k := range w.seed {
		if !keys[k] {
			delete(w.seed, k) // no longer used: not worth keeping
			w.gen++
		}
	}
	dedicated := 0
	var shared []string
	for k, pw := range w.running {
		if pw.cancel != nil {
			dedicated++
		} else {
			shared = append(shared, k)
		}
	}
	// Promote shared keys into free dedicated slots.
	sort.Strings(shared)
	for len(shared) > 0 && dedicated < w.dedicatedMax {
		k := shared[0]
		shared = shared[1:]
		w.startDedicated(ctx, k)
		dedicated++
	}
	var started []Key
	var fresh []string
	for k := range keys {
		if _, ok := w.running[string(k)]; !ok {
			fresh = append(fresh, k)
		}
	}
	sort.Strings(fresh)
	for _, k := range fresh {
		if key, err := ParseKey(k); err == nil {
			started = append(started, key)
		}
		if dedicated < w.dedicatedMax {
			w.startDedicated(ctx, k)
			dedicated++
			continue
		}
		w.running[k] = &peerWatch{backoff: backoff.New(500*time.Millisecond, 30*time.Second)}
		shared = append(shared, k)
		w.enqueueAt(k, true)
	}
	if len(shared) > 0 && !w.sharedOn {
		w.sharedOn = true
		w.startShared(ctx)
	}
	w.reportBounds()
	return started
}

// startDedicated runs a blocking query for key. Called with w.mu held.
func (w *Watches) startDedicated(ctx context.Context, key string) {
	cctx, cancel := context.WithCancel(ctx)
	pw := &peerWatch{cancel: cancel}
	w.running[key] = pw
	go w.follow(cctx, key, pw)
}

// reportBounds reports the watches by mode and the sets cut. Called with
// w.mu held.
func (w *Watches) reportBounds() {
	if w.onBounds == nil {
		return
	}
	dedicated := 0
	for _, pw := range w.running {
		if pw.cancel != nil {
			dedicated++
		}
	}
	w.onBounds(dedicated, len(w.running)-dedicated, len(w.truncated))
}

// Get returns the addresses of a peer and whether they are known: Consul
// has answered, or the last run persisted them and Consul has not answered
// since.
func (w *Watches) Get(key Key) ([]netip.Prefix, bool) {
	k := key.String()
	w.mu.Lock()
	defer w.mu.Unlock()
	if a, ok := w.addrs[k]; ok {
		return a, ok
	}
	a, ok := w.seed[k]
	return a, ok
}

// peerWatch is one running watch; its identity tells a stopped watch from
// a newer one of the same key. A dedicated watch has cancel; a shared one
// has the backoff of its retries.
type peerWatch struct {
	cancel  context.CancelFunc
	backoff *backoff.Backoff
}

func (w *Watches) follow(ctx context.Context, key string, me *peerWatch) {
	q, ok := peerQueryOf(key)
	if !ok {
		return
	}
	b := backoff.New(500*time.Millisecond, 30*time.Second)
	var index uint64
	failing := false
	for ctx.Err() == nil {
		entries, next, err := w.api.HealthService(ctx, q.service, q.tag, index)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			failing = true
			w.onError()
			d := b.Next()
			w.log.Warn("consul watch failed; keeping last known peers", "peer", key, "err", err, "retry_in", d)
			select {
			case <-ctx.Done():
				return
			case <-time.After(d):
			}
			continue
		}
		b.Reset()
		if failing {
			// Consul is back: registrations failed meanwhile may be
			// missing there (a restarted dev agent has none), so
			// reconcile now rather than at the next retry or resync.
			failing = false
			w.trigger(BackReason + " (" + key + ")")
		}
		if next < index {
			next = 0
		}
		index = next
		if !w.store(key, me, q, entries) {
			return
		}
	}
}

// store records an answer for key from watch me, and triggers a
// reconcile if the set changed. It returns false if me no longer watches
// key (stopped, or replaced by a newer watch of the same key): the answer
// is not its to store.
func (w *Watches) store(key string, me *peerWatch, q peerQuery, entries []*consul.ServiceEntry) bool {
	ranked, ignored := q.rank(w.idPrefix, entries)
	w.mu.Lock()
	// The limit is read under the lock: a Recut for a new limit either
	// comes after this and cuts ranked again, or came before and this
	// reads the new limit.
	limit := 0
	if w.maxAddrs != nil {
		limit = w.maxAddrs()
	}
	list, over := cutRanked(ranked, limit)
	old, seen := w.addrs[key]
	if w.running[key] != me {
		w.mu.Unlock()
		return false
	}
	w.addrs[key] = list
	w.ranked[key] = ranked
	if !maps.Equal(ignored, w.ignored[key]) {
		w.log.Warn("consul: entries ignored for peer; only v6reg's own registrations are peers", "peer", key, "ignored", ignored)
	}
	w.setIgnored(key, ignored)
	w.setCut(key, list, over, limit)
	w.reportBounds()
	seed, seeded := w.seed[key]
	delete(w.seed, key)
	changed := !seen || !prefixesEqual(old, list)
	if changed {
		w.gen++
	}
	w.mu.Unlock()
	if seeded && !seen && prefixesEqual(seed, list) {
		changed = false // the set in force already
	}
	if changed {
		w.trigger("consul: peer " + key + " changed")
	}
	return true
}

// setCut records whether key's set was cut, and how. Called with w.mu
// held.
func (w *Watches) setCut(key string, kept, over []netip.Prefix, limit int) {
	if len(over) == 0 {
		delete(w.truncated, key)
		return
	}
	k, _ := ParseKey(key) // a watched key parses: peerQueryOf did
	c := Cut{Key: k, Registrations: len(kept) + len(over), Kept: len(kept), Limit: limit}
	if w.truncated[key] != c {
		w.log.Warn("consul: peer set truncated to limits.peer_set_addresses; the registrations that came first are kept",
			"peer", key, "registrations", c.Registrations, "kept", c.Kept)
	}
	w.truncated[key] = c
}

// Recut applies limits.peer_set_addresses as it is now to every set
// Consul has answered, from that answer: a changed limit (SIGHUP) takes
// effect at once, not at each set's next change in Consul, which for a
// quiet set can be minutes away. It triggers a reconcile if a set
// changed.
func (w *Watches) Recut() {
	var changed []string
	w.mu.Lock()
	limit := 0
	if w.maxAddrs != nil {
		limit = w.maxAddrs()
	}
	for _, key := range slices.Sorted(maps.Keys(w.ranked)) {
		list, over := cutRanked(w.ranked[key], limit)
		w.setCut(key, list, over, limit)
		if !prefixesEqual(w.addrs[key], list) {
			w.addrs[key] = list
			w.gen++
			changed = append(changed, key)
		}
	}
	w.reportBounds()
	w.mu.Unlock()
	if len(changed) > 0 {
		w.trigger(fmt.Sprintf("limits.peer_set_addresses is %d now: %d peer sets cut again", limit, len(changed)))
	}
}

func prefixesEqual(a, b []netip.Prefix) bool { return slices.Equal(a, b) }
