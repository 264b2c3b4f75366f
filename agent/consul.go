package agent

import (
	"github.com/v6reg/v6reg/internal/backoff"

	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	consul "github.com/hashicorp/consul/api"
)

// ConsulAPI is what the agent asks of the local Consul agent. *ConsulClient
// adapts the real client.
type ConsulAPI interface {
	// Services lists the services registered with the local agent.
	Services(ctx context.Context) (map[string]*consul.AgentService, error)
	Register(ctx context.Context, reg *consul.AgentServiceRegistration) error
	Deregister(ctx context.Context, id string) error
	// HealthService runs one blocking query for every instance of service
	// (with tag, if not empty), returning the next index.
	HealthService(ctx context.Context, service, tag string, waitIndex uint64) ([]*consul.ServiceEntry, uint64, error)
	// Checks lists the checks of the local agent, with their live status
	// and output, for the status API.
	Checks(ctx context.Context) (map[string]*consul.AgentCheck, error)
}

// ConsulClient adapts *consul.Client to ConsulAPI.
type ConsulClient struct{ C *consul.Client }

// Services lists the local agent's services; see ConsulAPI.
func (c ConsulClient) Services(ctx context.Context) (map[string]*consul.AgentService, error) {
	return c.C.Agent().ServicesWithFilterOpts("", (&consul.QueryOptions{}).WithContext(ctx))
}

// Register registers reg with the local agent, replacing its checks
// so a changed check does not leave the old one behind.
func (c ConsulClient) Register(ctx context.Context, reg *consul.AgentServiceRegistration) error {
	return c.C.Agent().ServiceRegisterOpts(reg, consul.ServiceRegisterOpts{ReplaceExistingChecks: true}.WithContext(ctx))
}

// Deregister removes the service id from the local agent.
func (c ConsulClient) Deregister(ctx context.Context, id string) error {
	return c.C.Agent().ServiceDeregisterOpts(id, (&consul.QueryOptions{}).WithContext(ctx))
}

// HealthService runs one blocking health query (up to 5 minutes, stale
// reads allowed); see ConsulAPI.
func (c ConsulClient) HealthService(ctx context.Context, service, tag string, waitIndex uint64) ([]*consul.ServiceEntry, uint64, error) {
	q := (&consul.QueryOptions{WaitIndex: waitIndex, WaitTime: 5 * time.Minute, AllowStale: true}).WithContext(ctx)
	entries, meta, err := c.C.Health().Service(service, tag, false, q)
	if err != nil {
		return nil, 0, err
	}
	return entries, meta.LastIndex, nil
}

// Checks lists the local agent's checks; see ConsulAPI. All of them, in
// one call: a node's agent holds only its own node's checks, and a filter
// expression on the service ID prefix would need the node name quoted for
// both bexpr and a regexp. The caller keeps the ones v6reg owns.
func (c ConsulClient) Checks(ctx context.Context) (map[string]*consul.AgentCheck, error) {
	return c.C.Agent().ChecksWithFilterOpts("", (&consul.QueryOptions{}).WithContext(ctx))
}

// NewConsulClient builds a client from the agent's Consul settings.
func NewConsulClient(address, token, caFile, certFile, keyFile, datacenter string) (*consul.Client, error) {
	cfg := consul.DefaultNonPooledConfig()
	cfg.Address = address
	cfg.Token = token
	cfg.Datacenter = datacenter
	cfg.TLSConfig = consul.TLSConfig{CAFile: caFile, CertFile: certFile, KeyFile: keyFile}
	if strings.HasPrefix(address, "https://") {
		cfg.Scheme = "https"
		cfg.Address = strings.TrimPrefix(address, "https://")
	} else {
		cfg.Address = strings.TrimPrefix(address, "http://")
	}
	c, err := consul.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("consul client: %w", err)
	}
	return c, nil
}

// Meta keys on every registration v6reg owns.
const (
	metaOwner     = "v6reg_node" // the node that registered it: only that node removes it
	metaHash      = "v6reg_hash" // of the desired registration, to see changes without diffing checks
	metaContainer = "v6reg_container"
	metaAlloc     = "nomad_alloc"
	metaJob       = "nomad_job"
	metaTask      = "nomad_task"
	metaNamespace = "nomad_namespace"
	// metaPrefix is the registering node's prefix: a peer address outside
	// it is refused, so a registration cannot claim another node's address.
	metaPrefix = "v6reg_prefix"

	// jobsService carries one instance per container of a job, tagged
	// "job=NAMESPACE/JOB", so that job:NAME peers resolve on every node.
	jobsService = "v6reg-jobs"
	// policyErrorService carries containers whose policy is refused and
	// that declare no service of their own, so the error shows in Consul.
	policyErrorService = "v6reg-policy-errors"
)

// Registration is one Consul service v6reg wants registered.
type Registration struct {
	ID    string
	Name  string
	Addr  netip.Addr
	Port  int
	Tags  []string
	Meta  map[string]string
	Check Check
}

// Check is the health check of a registration.
type Check struct {
	Kind string // "tcp", "http", "https", "critical" (policy error), "" (none)
	Path string // for http(s)
	// Notes is shown in the Consul UI; for "critical" it is the policy error.
	Notes string
}

func jobTag(namespace, job string) string { return "job=" + namespace + "/" + job }

// serviceID is the ID of a registration v6reg owns: prefix, node,
// container, name and port, so two nodes or two containers never collide.
func serviceID(prefix, node, containerID, name string, port int) string {
	short := containerID
	if len(short) > 12 {
		short = short[:12]
	}
	return fmt.Sprintf("%s-%s-%s-%s-%d", prefix, node, short, name, port)
}

func (r Registration) hash() string {
	b, _ := json.Marshal(r)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

func (r Registration) toConsul(node, hash string) *consul.AgentServiceRegistration {
	meta := map[string]string{metaOwner: node, metaHash: hash}
	for k, v := range r.Meta {
		meta[k] = v
	}
	reg := &consul.AgentServiceRegistration{
		ID: r.ID, Name: r.Name, Address: r.Addr.String(), Port: r.Port,
		Tags: r.Tags, Meta: meta,
	}
	hostport := net.JoinHostPort(r.Addr.String(), strconv.Itoa(r.Port))
	c := &consul.AgentServiceCheck{CheckID: r.ID + "-check", Interval: "10s", Timeout: "2s", Notes: r.Check.Notes}
	switch r.Check.Kind {
	case "tcp":
		c.Name = "tcp " + hostport
		c.TCP = hostport
	case "http", "https":
		c.Name = r.Check.Kind + " " + hostport + r.Check.Path
		c.HTTP = r.Check.Kind + "://" + hostport + r.Check.Path
		c.TLSSkipVerify = r.Check.Kind == "https"
	case "critical":
		// A TTL check that is never passed: it stays critical with the
		// error as its notes until the policy is fixed.
		c = &consul.AgentServiceCheck{CheckID: r.ID + "-policy", Name: "v6reg policy", TTL: "87600h", Status: consul.HealthCritical, Notes: r.Check.Notes}
	default:
		c = nil
	}
	reg.Check = c
	return reg
}

// consulBackReason starts the trigger reason of a peer watch whose Consul
// answers again after failing.
const consulBackReason = "consul: reachable again"

// consulRegistrar makes the local Consul agent hold exactly the desired
// registrations among those v6reg owns on this node.
//
// It keeps what it last wrote (ID and hash of every registration it owns)
// and, between full passes, sends Consul only the differences: one
// register or deregister per changed service, no list. A full pass, a
// failed call, or a Consul that came back lists the local agent's
// services again.
type consulRegistrar struct {
	api    ConsulAPI
	prefix string
	node   string
	log    *slog.Logger

	have  map[string]string // owned registration ID -> hash, as in Consul
	valid bool              // have is known to match Consul
}

func (r *consulRegistrar) owned(id string, s *consul.AgentService) bool {
	return strings.HasPrefix(id, r.prefix+"-"+r.node+"-") && s.Meta[metaOwner] == r.node
}

// ConsulChange is one registration change applied.
type ConsulChange struct {
	Op  string // "register" or "deregister"
	ID  string
	Reg Registration
}

// apply registers what is missing or changed and deregisters what v6reg
// owns but no longer wants. Deregistrations go first so that a stopping
// allocation leaves Traefik before anything else happens. hashes, if it
// has an ID, is that registration's hash (computed once per evaluation).
// list reads Consul's services first; drift is then how many of v6reg's
// registrations there differed from what the registrar last wrote.
//
// first orders the registrations: those of the containers it names (by
// short ID) go first, oldest event first, and done is called for each of
// them once all its registrations of this pass are in (nil: no order, no
// report).
func (r *consulRegistrar) apply(ctx context.Context, want map[string]Registration, hashes map[string]string, list bool,
	first map[string]time.Time, done func(container string)) (changes []ConsulChange, drift int, err error) {
	if list || !r.valid {
		svcs, err := r.api.Services(ctx)
		if err != nil {
			r.valid = false
			return nil, 0, fmt.Errorf("listing consul services: %w", err)
		}
		have := make(map[string]string, len(svcs))
		for id, s := range svcs {
			if r.owned(id, s) {
				have[id] = s.Meta[metaHash]
			}
		}
		if r.valid {
			for id, h := range have {
				if r.have[id] != h {
					drift++
				}
			}
			for id := range r.have {
				if _, ok := have[id]; !ok {
					drift++
				}
			}
		}
		r.have, r.valid = have, true
	}
	var gone []string
	for _, id := range slices.Sorted(maps.Keys(r.have)) {
		if _, ok := want[id]; !ok {
			gone = append(gone, id)
		}
	}
	var regs []string
	regHash := map[string]string{}
	left := map[string]int{} // registrations left, by container in first
	for _, id := range slices.Sorted(maps.Keys(want)) {
		h, ok := hashes[id]
		if !ok {
			h = want[id].hash()
		}
		if cur, ok := r.have[id]; !ok || cur != h {
			regs = append(regs, id)
			regHash[id] = h
			if c := want[id].Meta[metaContainer]; !first[c].IsZero() {
				left[c]++
			}
		}
	}
	if len(first) > 0 {
		at := func(id string) time.Time { return first[want[id].Meta[metaContainer]] }
		slices.SortStableFunc(regs, func(x, y string) int {
			tx, ty := at(x), at(y)
			switch {
			case tx.IsZero() != ty.IsZero():
				if tx.IsZero() {
					return 1
				}
				return -1
			case !tx.Equal(ty):
				return tx.Compare(ty)
			}
			return 0
		})
	}
	// Deregistrations first, all of them, so that a stopping allocation
	// leaves Traefik before anything else happens.
	errs := r.each(ctx, gone, func(id string) error {
		if err := r.api.Deregister(ctx, id); err != nil {
			return fmt.Errorf("deregistering consul service %s: %w", id, err)
		}
		return nil
	})
	for _, id := range gone {
		if _, failed := errs[id]; !failed {
			delete(r.have, id)
			changes = append(changes, ConsulChange{Op: "deregister", ID: id})
		}
	}
	regErrs := r.each(ctx, regs, func(id string) error {
		if err := r.api.Register(ctx, want[id].toConsul(r.node, regHash[id])); err != nil {
			return fmt.Errorf("registering consul service %s: %w", id, err)
		}
		if c := want[id].Meta[metaContainer]; done != nil && left[c] > 0 {
			if left[c]--; left[c] == 0 {
				done(c)
			}
		}
		return nil
	})
	for _, id := range regs {
		if _, failed := regErrs[id]; !failed {
			r.have[id] = regHash[id]
			changes = append(changes, ConsulChange{Op: "register", ID: id, Reg: want[id]})
		}
	}
	var all []error
	for _, id := range gone {
		if err := errs[id]; err != nil {
			all = append(all, err)
		}
	}
	for _, id := range regs {
		if err := regErrs[id]; err != nil {
			all = append(all, err)
		}
	}
	if len(all) > 0 {
		// What Consul holds after a failed call is not known: list it
		// on the next pass.
		r.valid = false
	}
	return changes, drift, errors.Join(all...)
}

// each calls f for every id, in order, and returns the errors by id. One
// at a time: the local Consul agent takes registrations under one lock,
// and measured with 2,000 services on it, 4 calls in flight took 11 ms a
// registration against 8 ms one by one (BenchmarkBurst100At1000).
func (r *consulRegistrar) each(ctx context.Context, ids []string, f func(id string) error) map[string]error {
	errs := map[string]error{}
	for _, id := range ids {
		if ctx.Err() != nil {
			errs[id] = ctx.Err()
			continue
		}
		if err := f(id); err != nil {
			errs[id] = err
		}
	}
	return errs
}

// peerWatches follows the instances of every service:NAME and job:NAME
// peer that a local policy uses, and only those, with a bounded number of
// connections to Consul however many peers there are (see peerpool.go):
// up to dedicatedMax keys get a blocking query each; the others are
// "shared": one blocking query on the catalog's service index says when
// anything in the catalog changed, and a few workers refresh the shared
// keys with non-blocking queries, each key queued at most once.
type peerWatches struct {
	api ConsulAPI
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
	// seed is the last known set of each peer persisted by the agent's
	// last run, used until Consul answers for it: a restart while Consul
	// does not answer keeps the sets in force, never empty ones.
	seed map[string][]netip.Prefix
	gen  uint64 // counts changes of addrs, to persist only changes
	// ignored counts, per peer key and reason, the entries of the last
	// answer that are not v6reg's registrations.
	ignored map[string]map[string]int
	// truncated holds, per key cut to maxAddrs, how many peers it had.
	truncated map[string]int
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

// seedKnown starts the watches with the sets persisted by the last run.
func (w *peerWatches) seedKnown(peers map[PeerKey][]netip.Prefix) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.seed = make(map[string][]netip.Prefix, len(peers))
	for k, v := range peers {
		w.seed[string(k)] = v
	}
}

// known returns the last known set of every peer in use (Consul's answer,
// else the persisted one), to persist, and the change count.
func (w *peerWatches) known() (map[PeerKey][]netip.Prefix, uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make(map[PeerKey][]netip.Prefix, len(w.addrs)+len(w.seed))
	for k, v := range w.seed {
		out[PeerKey(k)] = v
	}
	for k, v := range w.addrs {
		out[PeerKey(k)] = v
	}
	return out, w.gen
}

func newPeerWatches(api ConsulAPI, idPrefix string, log *slog.Logger, trigger func(string), onError func(), onIgnored func(map[string]int)) *peerWatches {
	dedicated, workers := peerWatchSplit(DefaultWatchConnections)
	return &peerWatches{api: api, idPrefix: idPrefix, log: log, trigger: trigger, onError: onError, onIgnored: onIgnored,
		dedicatedMax: dedicated, workers: workers,
		running: map[string]*peerWatch{}, addrs: map[string][]netip.Prefix{}, ignored: map[string]map[string]int{},
		truncated: map[string]int{}, queued: map[string]bool{}, wake: make(chan struct{}, peerWatchWorkers)}
}

// Reasons a catalog entry is not a peer, as the ignored-entries metric
// labels them.
const (
	ignoredForeign   = "foreign"        // not registered by v6reg (no v6reg ID prefix, owner or prefix meta)
	ignoredOutside   = "outside_prefix" // an address outside the registering node's prefix
	ignoredNamespace = "namespace"      // registered for a container of another namespace or job
)

// IgnoredReasons are the label values of the ignored-entries metric.
var IgnoredReasons = []string{ignoredForeign, ignoredOutside, ignoredNamespace}

// peerAddr returns the address of a catalog entry if it is a registration
// v6reg made for a container it manages, with the namespace and job the
// peer key asks for; else "" and why not. What proves it: the ID v6reg
// gives (ID prefix, then the owner node named in meta), the owner and
// node prefix meta v6reg writes, and an address inside that prefix. A
// Nomad service block cannot choose its ID; a v6reg on another node
// writes the same shape, so peers resolve on every node.
func peerAddr(idPrefix, namespace, job string, e *consul.ServiceEntry) (netip.Addr, string) {
	if e == nil || e.Service == nil {
		return netip.Addr{}, ignoredForeign
	}
	s := e.Service
	owner := s.Meta[metaOwner]
	if owner == "" || !strings.HasPrefix(s.ID, idPrefix+"-"+owner+"-") || s.Meta[metaContainer] == "" {
		return netip.Addr{}, ignoredForeign
	}
	prefix, err := netip.ParsePrefix(s.Meta[metaPrefix])
	if err != nil || !prefix.Addr().Is6() || prefix.Addr().Is4In6() || prefix.Bits() < 48 || prefix != prefix.Masked() {
		return netip.Addr{}, ignoredForeign
	}
	a, err := netip.ParseAddr(s.Address)
	if err != nil || !a.Is6() || a.Is4In6() || a.Zone() != "" || !prefix.Contains(a) || a == prefix.Addr() {
		return netip.Addr{}, ignoredOutside
	}
	if s.Meta[metaNamespace] != namespace || (job != "" && s.Meta[metaJob] != job) {
		return netip.Addr{}, ignoredNamespace
	}
	return a, ""
}

// peerQuery is what a peer key asks Consul, and of its answer.
type peerQuery struct{ service, tag, namespace, job string }

func peerQueryOf(key string) (peerQuery, bool) {
	var q peerQuery
	switch {
	case strings.HasPrefix(key, "service:"):
		q.namespace, q.service, _ = strings.Cut(strings.TrimPrefix(key, "service:"), "/")
	case strings.HasPrefix(key, "job:"):
		q.namespace, q.job, _ = strings.Cut(strings.TrimPrefix(key, "job:"), "/")
		q.service, q.tag = jobsService, jobTag(q.namespace, q.job)
	}
	return q, q.service != "" && q.namespace != "" && (q.tag == "" || q.job != "")
}

// prefixes keeps the addresses of the entries that are peers, sorted, and
// counts the others by reason (nil if none). With limit > 0 and more peers
// than that, it keeps the limit registered first (lowest create index, then
// address: the same choice on every node, and stable while they stay)
// and returns how many there were; else total is len(list).
func (q peerQuery) prefixes(idPrefix string, entries []*consul.ServiceEntry, limit int) (list []netip.Prefix, ignored map[string]int, total int) {
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
	addrs := make([]netip.Addr, 0, len(first))
	for a := range first {
		addrs = append(addrs, a)
	}
	total = len(addrs)
	if limit > 0 && total > limit {
		sort.Slice(addrs, func(i, j int) bool {
			if first[addrs[i]] != first[addrs[j]] {
				return first[addrs[i]] < first[addrs[j]]
			}
			return addrs[i].Less(addrs[j])
		})
		addrs = addrs[:limit]
	}
	sort.Slice(addrs, func(i, j int) bool { return addrs[i].Less(addrs[j]) })
	list = make([]netip.Prefix, len(addrs))
	for i, a := range addrs {
		list[i] = netip.PrefixFrom(a, 128)
	}
	return list, ignored, total
}

// ResolvePeer answers, once, what a peer key (service:NAMESPACE/NAME or
// job:NAMESPACE/NAME) resolves to in Consul now, exactly as the agent's
// watches do, with the entries ignored by reason.
func ResolvePeer(ctx context.Context, api ConsulAPI, idPrefix string, key PeerKey) ([]netip.Prefix, map[string]int, error) {
	q, ok := peerQueryOf(string(key))
	if !ok {
		return nil, nil, fmt.Errorf("peer key %q: want service:NAMESPACE/NAME or job:NAMESPACE/NAME", key)
	}
	entries, _, err := api.HealthService(ctx, q.service, q.tag, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("consul query for %s: %w", key, err)
	}
	list, ignored, _ := q.prefixes(idPrefix, entries, 0)
	return list, ignored, nil
}

// setIgnored records the ignored counts of one key and reports the sum.
// Called with w.mu held.
func (w *peerWatches) setIgnored(key string, counts map[string]int) {
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

// PeerKey names a Consul-backed peer set: "service:NAME" or
// "job:NAMESPACE/NAME".
type PeerKey string

// want starts watches for keys not yet followed and stops the others. It
// returns the keys it started. New keys get a blocking query of their own
// while fewer than dedicatedMax run (in key order, so the choice is
// stable), the rest are shared; a dedicated slot freed goes to a shared
// key.
func (w *peerWatches) want(ctx context.Context, keys map[PeerKey]bool) []PeerKey {
	w.mu.Lock()
	defer w.mu.Unlock()
	for k, pw := range w.running {
		if !keys[PeerKey(k)] {
			if pw.cancel != nil {
				pw.cancel()
			}
			delete(w.running, k)
			delete(w.addrs, k)
			delete(w.truncated, k)
			w.setIgnored(k, nil)
			w.gen++
		}
	}
	for k := range w.seed {
		if !keys[PeerKey(k)] {
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
	var started []PeerKey
	var fresh []string
	for k := range keys {
		if _, ok := w.running[string(k)]; !ok {
			fresh = append(fresh, string(k))
		}
	}
	sort.Strings(fresh)
	for _, k := range fresh {
		started = append(started, PeerKey(k))
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
func (w *peerWatches) startDedicated(ctx context.Context, key string) {
	cctx, cancel := context.WithCancel(ctx)
	pw := &peerWatch{cancel: cancel}
	w.running[key] = pw
	go w.follow(cctx, key, pw)
}

// reportBounds reports the watches by mode and the sets cut. Called with
// w.mu held.
func (w *peerWatches) reportBounds() {
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

// get returns the addresses of a peer and whether they are known: Consul
// has answered, or the last run persisted them and Consul has not answered
// since.
func (w *peerWatches) get(k PeerKey) ([]netip.Prefix, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if a, ok := w.addrs[string(k)]; ok {
		return a, ok
	}
	a, ok := w.seed[string(k)]
	return a, ok
}

// peerWatch is one running watch; its identity tells a stopped watch from
// a newer one of the same key. A dedicated watch has cancel; a shared one
// has the backoff of its retries.
type peerWatch struct {
	cancel  context.CancelFunc
	backoff *backoff.Backoff
}

func (w *peerWatches) follow(ctx context.Context, key string, me *peerWatch) {
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
			w.trigger(consulBackReason + " (" + key + ")")
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
func (w *peerWatches) store(key string, me *peerWatch, q peerQuery, entries []*consul.ServiceEntry) bool {
	limit := 0
	if w.maxAddrs != nil {
		limit = w.maxAddrs()
	}
	list, ignored, total := q.prefixes(w.idPrefix, entries, limit)
	w.mu.Lock()
	old, seen := w.addrs[key]
	if w.running[key] != me {
		w.mu.Unlock()
		return false
	}
	w.addrs[key] = list
	if !maps.Equal(ignored, w.ignored[key]) {
		w.log.Warn("consul: entries ignored for peer; only v6reg's own registrations are peers", "peer", key, "ignored", ignored)
	}
	w.setIgnored(key, ignored)
	if total > len(list) {
		if w.truncated[key] != total {
			w.log.Warn("consul: peer set truncated to limits.peer_set_addresses; the registrations that came first are kept",
				"peer", key, "registrations", total, "kept", len(list))
		}
		w.truncated[key] = total
	} else {
		delete(w.truncated, key)
	}
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

func prefixesEqual(a, b []netip.Prefix) bool { return slices.Equal(a, b) }
