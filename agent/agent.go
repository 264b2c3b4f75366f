// Package agent turns Docker, this node's Nomad allocations and Consul into
// one desired state, and reconciles the outputs (firewall, Consul
// registrations, IPAM store) against what is really there.
//
// Events only request a reconcile and name what to look at again; they
// never carry state. A Docker event names a container, which the next pass
// reads back (one list filtered by the IDs a pass's events named) instead
// of listing every container; the pass
// evaluates again only the policies whose container, allocation or
// operator configuration changed (desired.Memo), and sends the firewall
// and Consul only what changed. A lost event delays a change until the
// periodic full resync, which lists every source again and counts what it
// found that the events had not brought (v6reg_resync_drift_total); it
// never leaves a stale rule.
//
// Consul registration runs in its own goroutine on the newest desired
// state: Consul's agent takes registrations one at a time, in a time that
// grows with the services it holds, and the firewall must not wait for it.
//
// What is in force survives a restart while Nomad or Consul does not
// answer. The kernel table and v6reg's Consul registrations stay as they
// are when the agent stops; beside them the agent persists (KnownFile in
// the state dir, written crash-safely with a checksum) the allocations
// Nomad last listed for this node, with their namespace, job, group and
// meta and Nomad's index, and the last answer for every service:/job: peer
// set. On start, until Nomad answers, the persisted allocations stand in
// for its answer, so every running container keeps its policy and its
// registrations and the first reconcile changes nothing; until Consul
// answers for a peer set, its persisted addresses stand in, never an empty
// set. A container whose allocation was never seen (not in the persisted
// copy, not listed by Nomad since) stays closed, as without a copy. When
// Nomad and Consul answer, their answers replace the copy and the agent
// converges. A corrupt copy is reported (log, status state_error,
// v6reg_errors_total{kind="state"}), kept aside and not used.
//
// One writer to the firewall: the reconcile loop applies, and the
// firewall's own repair (Watch) restores the last state Apply took, under
// the lock Apply holds, never an older one.
package agent

import (
	"github.com/v6reg/v6reg/api"
	"github.com/v6reg/v6reg/desired"
	"github.com/v6reg/v6reg/peers"

	"github.com/v6reg/v6reg/registrar"

	"github.com/v6reg/v6reg/docker"
	"github.com/v6reg/v6reg/internal/backoff"
	"github.com/v6reg/v6reg/nomad"

	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/v6reg/v6reg/firewall"
	"github.com/v6reg/v6reg/policies"
)

// Firewall is the dataplane the agent programs; *firewall.Firewall
// satisfies it.
type Firewall interface {
	Apply(ctx context.Context, s firewall.State) (firewall.Changes, error)
	Counters(ctx context.Context) (map[string]firewall.DirCounters, error)
}

// Optional capabilities of a Firewall: the agent asks for them by type
// assertion and does without the part they serve when they are missing
// (fakes in tests). *firewall.Firewall has them all, and RepairingFirewall
// (by startWatch) too.

// RestoreCounter counts the Applies that found the table missing or its
// rules edited by someone else, and repaired it; the agent exports the
// count as v6reg_firewall_restores_total.
type RestoreCounter interface {
	Restores() uint64
}

// SpoofCounter reads the anti-spoofing drop counters split by the check
// that counted them: the bridge port (a frame from another MAC than the
// port's container) and the source (an unowned prefix address, the wrong
// link or MAC); `v6reg status` shows both.
type SpoofCounter interface {
	SpoofDropsByCheck(ctx context.Context) (bridgePort, source firewall.Counter, err error)
}

// IPAM is the address side the agent keeps in step with Docker.
type IPAM interface {
	// ReconcileWithDocker makes the lease store match the addresses Docker
	// really has in use (Docker is the truth for use, the store for
	// hold-down).
	ReconcileWithDocker(ctx context.Context) error
	// Counts reports leases held and addresses in hold-down.
	Counts() (leases, held int)
}

// Options are the agent's settings and its sources and outputs. Nomad,
// Consul, Firewall and IPAM may be nil: that part is then off.
type Options struct {
	Node    string
	Prefix  netip.Prefix
	Gateway netip.Addr
	// Bridge is the Docker network's bridge interface. The firewall
	// filters everything it carries (IPv4, link-local, multicast), not
	// only the prefix; empty leaves those paths open (tests only).
	Bridge         string
	NodePorts      []firewall.Rule // node services containers may reach
	Network        string
	IDPrefix       string
	ResyncInterval time.Duration
	Operator       policies.Operator
	Log            *slog.Logger

	Docker   docker.API
	Nomad    nomad.API
	NomadID  string // this node's Nomad ID; empty asks the local agent
	Consul   ConsulAPI
	Firewall Firewall
	// Ports finds containers' bridge ports, so the firewall binds each
	// address to its container's port (nil: to its MAC only).
	Ports docker.BridgePorts
	// BridgeNetfilter, if set, is checked every second: while it fails,
	// status, /healthz and v6reg_bridge_netfilter_ok say the node is
	// unhealthy.
	BridgeNetfilter BridgeNetfilter
	IPAM            IPAM
	Metrics         *Metrics
	// StateFile persists the last known policies (Nomad's allocations and
	// Consul's peer sets) across restarts; empty: not persisted.
	StateFile string

	// CoalesceQuiet and CoalesceMax shape a burst of events into one
	// reconcile: after a trigger the loop waits until no other came for
	// CoalesceQuiet, at most CoalesceMax. Defaults 2 ms and 20 ms;
	// negative: no wait.
	CoalesceQuiet, CoalesceMax time.Duration
	// Observe, if set, is told when an output (OutputFirewall,
	// OutputConsul) has applied what an event about a container asked
	// for, with when the event arrived (benchmarks; the histograms
	// v6reg_event_to_*_seconds say the same to operators).
	Observe func(output, containerID string, eventAt time.Time)
	// PeerWatch is the peer watches' own Consul client and connection
	// budget (peerpool.go); zero: Consul and the default budget.
	PeerWatch PeerWatchOptions
}

// Outputs, as Options.Observe names them.
const (
	OutputFirewall = "firewall"
	OutputConsul   = "consul"
)

// Bounds on the calls one reconcile makes, so that a source or output that
// hangs delays the loop by at most this much instead of stopping it.
var (
	consulApplyTimeout = 5 * time.Second
)

// Agent is the reconcile loop and its state.
type Agent struct {
	o     Options
	log   *slog.Logger
	nomad *nomad.Source
	reg   *registrar.Registrar
	peers *peers.Watches
	ports *docker.PortCache // nil without Options.Ports

	trig   chan struct{}
	pendMu sync.Mutex
	pend   pendingWork

	opMu     sync.RWMutex
	operator policies.Operator
	opRev    uint64 // counts operator configurations, for the memo

	// view and memo are the reconcile loop's: Docker's containers as
	// events left them, and each one's evaluated policy.
	view     *docker.View
	memo     *desired.Memo
	elements *firewall.ElementCounter

	// regWork, while Run runs, hands the registrations to the registrar
	// goroutine (nil: reconcile applies them itself); consulErr is the
	// registrar's last error.
	regWork   *regMailbox
	consulErr atomic.Pointer[string]

	snap atomic.Pointer[api.Snapshot]
	// lastFW is the firewall state last applied successfully (readiness,
	// and the base of the next delta); fwFailed says the last apply
	// failed (the next one sends the whole state).
	lastFW   atomic.Pointer[firewall.State]
	fwFailed bool
	// lastDesired is the last reconcile's desired state, for explain.
	lastDesired atomic.Pointer[desired.Desired]

	// peerWait bounds how long a reconcile waits for Consul's first
	// answer on a newly referenced service:/job: peer.
	peerWait time.Duration

	// applied is what the firewall last took, per container ID (a digest
	// of its rules), to log one line per container that changed.
	applied map[string]string

	bridgeNFErr atomic.Pointer[string] // see keepBridgeNetfilter
	// savedNomad and savedPeers are the change counts of the sources when
	// their state was last persisted; stateErr is the last problem with
	// the persisted state (reported in the status until a save succeeds).
	savedNomad, savedPeers uint64
	stateErr               string
}

// New builds an agent; Run starts it.
func New(o Options) *Agent {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.ResyncInterval <= 0 {
		o.ResyncInterval = time.Minute
	}
	if o.Metrics == nil {
		o.Metrics = NewMetrics()
	}
	if o.CoalesceQuiet == 0 {
		o.CoalesceQuiet = 2 * time.Millisecond
	}
	if o.CoalesceMax == 0 {
		o.CoalesceMax = 20 * time.Millisecond
	}
	if r, ok := o.Firewall.(RestoreCounter); ok {
		o.Metrics.Registry.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "v6reg_firewall_restores_total",
			Help: "Times the table was found deleted or altered by someone else and restored.",
		}, func() float64 { return float64(r.Restores()) }))
	}
	a := &Agent{o: o, log: o.Log, trig: make(chan struct{}, 1), operator: o.Operator, opRev: 1, peerWait: 5 * time.Second,
		view: docker.NewView(), memo: desired.NewMemo(), elements: firewall.NewElementCounter()}
	if o.Ports != nil && o.Firewall != nil {
		a.ports = docker.NewPortCache(o.Docker, o.Ports, o.Network, o.Log.With("source", "docker"))
	}
	if o.Nomad != nil {
		a.nomad = nomad.NewSource(o.Nomad, o.NomadID, o.Log.With("source", "nomad"))
	}
	if o.Consul != nil {
		a.reg = registrar.New(o.Consul, o.IDPrefix, o.Node)
		a.peers = a.newPeerWatches() // peerwatch.go
	}
	a.snap.Store(&api.Snapshot{Node: o.Node, Prefix: o.Prefix.String()})
	return a
}

// Trigger asks for a reconcile. It never blocks: a burst of triggers while
// one reconcile runs coalesces into one more.
func (a *Agent) Trigger(reason string) {
	a.pendMu.Lock()
	if a.pend.since.IsZero() {
		a.pend.since = time.Now()
	}
	a.pendMu.Unlock()
	select {
	case a.trig <- struct{}{}:
		a.log.Debug("reconcile requested", "reason", reason)
	default:
	}
}

// SetOperator replaces the operator policy configuration (SIGHUP) and
// reconciles.
func (a *Agent) SetOperator(op policies.Operator) {
	a.opMu.Lock()
	cut := a.operator.Limits.OrDefault().PeerSetAddresses != op.Limits.OrDefault().PeerSetAddresses
	a.operator = op
	a.opRev++ // every policy is evaluated again
	a.opMu.Unlock()
	if cut && a.peers != nil {
		a.peers.Recut() // now, not at each set's next change in Consul
	}
	a.Trigger("operator config reloaded")
}

// Snapshot is the last reconcile's view, served by the status API.
func (a *Agent) Snapshot() *api.Snapshot {
	s := *a.snap.Load()
	// The registrar works beside the reconcile loop: its last result,
	// not the one when the snapshot was taken.
	s.ConsulErr = a.consulProblem()
	return &s
}

// Run reconciles until ctx is done. ready is called once, after the first
// reconcile that applied everything (systemd's READY=1). Run returns nil
// when ctx ends: it leaves the firewall and registrations in place, so
// containers stay protected and reachable while the agent restarts.
func (a *Agent) Run(ctx context.Context, ready func()) error {
	if a.o.Docker == nil {
		return errors.New("agent: no Docker client")
	}
	seeded := a.loadKnown()
	// Last, once every goroutine ended: a reconcile after Run applies
	// Consul itself.
	defer func() { a.regWork = nil }()
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if a.o.BridgeNetfilter != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.keepBridgeNetfilter(ctx, a.o.BridgeNetfilter)
		}()
	}
	if a.reg != nil {
		mail := newRegMailbox()
		a.regWork = mail
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.runRegistrar(ctx, mail)
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		docker.Watch(ctx, a.o.Docker, a.o.Network, a.log.With("source", "docker"), dockerIntake{a},
			func() { a.o.Metrics.Errors.WithLabelValues("docker").Inc() }, time.After)
	}()
	if a.nomad != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.nomad.Run(ctx, a.Trigger, func() { a.o.Metrics.Errors.WithLabelValues("nomad").Inc() })
		}()
		if !seeded {
			a.waitNomad(ctx, 15*time.Second)
		}
	}
	resync := time.NewTicker(a.o.ResyncInterval)
	defer resync.Stop()
	// Capped at 10 s: a failed output (Consul down) is retried at least
	// that often, so it converges soon after coming back.
	retry := backoff.New(500*time.Millisecond, 10*time.Second)
	var retryC <-chan time.Time
	readyDone := false
	full := true
	a.Trigger("start")
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-a.trig:
			a.settle(ctx)
		case <-resync.C:
			full = true
		case <-retryC:
		}
		err := a.reconcile(ctx, full)
		if ctx.Err() != nil {
			return nil
		}
		// Ready once the firewall holds the node's state: the containers
		// are protected and reachable as their policies say. A Consul
		// that is down must not keep systemd waiting (and restarting us);
		// registration catches up on the retries.
		if !readyDone && (a.o.Firewall == nil && err == nil || a.lastFW.Load() != nil) {
			readyDone = true
			a.startWatch(ctx, &wg)
			if ready != nil {
				ready()
			}
		}
		if err != nil {
			d := retry.Next()
			a.log.Error("reconcile failed; retrying", "err", err, "retry_in", d)
			retryC = time.After(d)
			continue
		}
		retry.Reset()
		retryC = nil
		full = false
	}
}

// RepairingFirewall is a Firewall that also keeps its table equal to the
// last state it was given between Applies (*firewall.Firewall does). The
// state to restore is the firewall's own, taken under the lock Apply
// holds, so a repair never applies an older state than the last Apply.
type RepairingFirewall interface {
	Firewall
	Watch(ctx context.Context) error
}

// startWatch keeps the table equal to the last applied state between
// reconciles, so a deleted or flushed table is back within seconds. It
// starts only after the first successful apply: before that there is no
// state worth restoring.
func (a *Agent) startWatch(ctx context.Context, wg *sync.WaitGroup) {
	w, ok := a.o.Firewall.(RepairingFirewall)
	if !ok || a.lastFW.Load() == nil {
		return
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = w.Watch(ctx)
	}()
}

// loadKnown seeds the Nomad source and the peer watches with what the last
// run persisted, and reports whether the Nomad source was seeded (then the
// first reconcile need not wait for Nomad: it keeps what is in force).
func (a *Agent) loadKnown() bool {
	if a.o.StateFile == "" {
		return false
	}
	k, err := loadKnown(a.o.StateFile)
	if err != nil {
		a.o.Metrics.Errors.WithLabelValues("state").Inc()
		a.stateErr = err.Error()
		a.log.Error("persisted policies unusable", "err", err)
		return false
	}
	if k == nil {
		return false
	}
	seeded := false
	if a.nomad != nil && k.Nomad {
		a.nomad.Seed(k.Allocs, k.NomadIndex, k.NomadAt)
		seeded = true
	}
	if a.peers != nil {
		seed := make(map[peers.Key][]netip.Prefix, len(k.Peers))
		for name, set := range k.Peers {
			key, err := peers.ParseKey(name)
			if err != nil {
				a.log.Warn("persisted peer set ignored", "err", err)
				continue
			}
			seed[key] = set
		}
		a.peers.Seed(seed)
	}
	a.log.Info("using the persisted policies until Nomad and Consul answer", "file", a.o.StateFile,
		"allocs", len(k.Allocs), "nomad_index", k.NomadIndex, "nomad_answered_at", k.NomadAt, "peer_sets", len(k.Peers), "saved_at", k.SavedAt)
	return seeded
}

// saveKnown persists the sources' last known state if it changed since the
// last save. Called from the reconcile loop only: one writer to the file.
func (a *Agent) saveKnown() {
	if a.o.StateFile == "" || (a.nomad == nil && a.peers == nil) {
		return
	}
	var k knownState
	var ngen, pgen uint64
	if a.nomad != nil {
		k.Allocs, k.NomadIndex, k.NomadAt, k.Nomad, ngen = a.nomad.Known()
	}
	if a.peers != nil {
		var known map[peers.Key][]netip.Prefix
		known, pgen = a.peers.Known()
		k.Peers = make(map[string][]netip.Prefix, len(known))
		for key, set := range known {
			k.Peers[key.String()] = set
		}
	}
	if ngen == a.savedNomad && pgen == a.savedPeers {
		return
	}
	k.SavedAt = time.Now()
	if err := saveKnown(a.o.StateFile, k); err != nil {
		a.o.Metrics.Errors.WithLabelValues("state").Inc()
		a.stateErr = err.Error()
		a.log.Error("persisting the last known policies failed; a restart while Nomad does not answer would close their containers", "err", err)
		return
	}
	a.savedNomad, a.savedPeers, a.stateErr = ngen, pgen, ""
}

// waitNomad gives Nomad a bounded time to answer before the first
// reconcile, so that an agent restart does not close containers whose
// allocation is merely not read yet. Only without a persisted copy.
func (a *Agent) waitNomad(ctx context.Context, limit time.Duration) {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if synced, _, _ := a.nomad.State(); synced {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	a.log.Warn("nomad has not answered; containers of unknown allocations stay closed until it does", "waited", limit)
}

// settle lets a burst of triggers end before the reconcile that serves
// them: it returns when none came for CoalesceQuiet, or after
// CoalesceMax. A start of 100 containers is then a few reconciles, not a
// hundred, and the first container of a burst waits at most CoalesceMax.
func (a *Agent) settle(ctx context.Context) {
	if a.o.CoalesceQuiet < 0 || a.o.CoalesceMax < 0 {
		return
	}
	limit := time.NewTimer(a.o.CoalesceMax)
	defer limit.Stop()
	quiet := time.NewTimer(a.o.CoalesceQuiet)
	defer quiet.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-limit.C:
			return
		case <-quiet.C:
			return
		case <-a.trig:
			quiet.Reset(a.o.CoalesceQuiet)
		}
	}
}

// consulTrigger is the peer watches' trigger: a Consul that answers again
// after failing may have lost registrations (a restarted agent holds
// none), so the next reconcile lists its services again.
func (a *Agent) consulTrigger(reason string) {
	if strings.HasPrefix(reason, peers.BackReason) {
		a.pendMu.Lock()
		a.pend.consul = true
		a.pendMu.Unlock()
	}
	a.Trigger(reason)
}

func (a *Agent) input(containers []docker.Container) desired.Input {
	a.opMu.RLock()
	op, opRev := a.operator, a.opRev
	a.opMu.RUnlock()
	in := desired.Input{
		Node: a.o.Node, IDPrefix: a.o.IDPrefix, Prefix: a.o.Prefix, Gateway: a.o.Gateway, Bridge: a.o.Bridge, NodePorts: a.o.NodePorts,
		Operator: op, OperatorRev: opRev, Memo: a.memo, Elements: a.elements, Containers: containers, Nomad: a.nomad != nil,
		Lookup: func(string) (nomad.Alloc, bool) { return nomad.Alloc{}, false },
		Peers:  func(peers.Key) ([]netip.Prefix, bool) { return nil, false },
	}
	if a.nomad != nil {
		in.Lookup = a.nomad.Lookup
	}
	if last := a.lastDesired.Load(); last != nil {
		in.Holders = last.Holders()
	}
	if a.peers != nil {
		in.Peers = a.peers.Get
	}
	return in
}

// reconcile brings every output to the desired state. Incremental by
// default: the containers events named are inspected (one call each), the
// others come from the view, and only the policies whose inputs changed
// are evaluated again; the firewall and Consul get only what changed.
// full is the periodic backstop: it lists every container and Consul
// service, counts what the incremental passes had missed
// (v6reg_resync_drift_total), and sweeps the IPAM store.
func (a *Agent) reconcile(ctx context.Context, full bool) error {
	start := time.Now()
	a.pendMu.Lock()
	p := a.pend
	a.pend = pendingWork{}
	a.pendMu.Unlock()

	list := full || p.relist || !a.view.Listed
	if !list && len(p.containers) > 0 {
		ids := slices.Sorted(maps.Keys(p.containers))
		if err := a.view.Refresh(ctx, a.o.Docker, a.o.Network, ids); err != nil {
			a.o.Metrics.Errors.WithLabelValues("docker").Inc()
			a.log.Warn("reading the containers events named failed; listing all of them instead", "err", err)
			list = true
		}
	}
	if list {
		wasListed := a.view.Listed
		lctx, cancel := context.WithTimeout(ctx, docker.CallTimeout)
		containers, err := docker.List(lctx, a.o.Docker, a.o.Network)
		cancel()
		if err != nil {
			a.o.Metrics.Errors.WithLabelValues("docker").Inc()
			// Without Docker's list nothing can be decided; applying a
			// partial state would remove what is right. Keep everything
			// as it is, and the work for the retry.
			p.relist = true
			a.requeue(p)
			return err
		}
		drift := a.view.Replace(containers)
		if full && wasListed && !p.relist {
			a.countDockerDrift(drift, p)
		}
	}
	containers := slices.Clone(a.view.Containers())
	if a.ports != nil {
		// New endpoints only (one inspect each, of a running
		// container); the periodic full reconcile retries the ones whose
		// port was not found.
		a.ports.Fill(ctx, containers, full)
	}
	keep := make(map[string]bool, len(containers))
	for _, c := range containers {
		keep[c.ID] = true
	}
	a.memo.Forget(keep)
	in := a.input(containers)
	d := desired.Build(in)
	a.holdLimits(&d, in)
	if a.peers != nil {
		// Wait only for watches this pass started: a peer whose Consul
		// stays silent must not add the wait to every later reconcile.
		// Rebuild whenever a watch started, even if it answered before
		// waitPeers looked: d was built before that answer. The rebuild
		// evaluates nothing again: only the peer sets are looked up.
		if started := a.peers.Want(ctx, d.PeerKeys); len(started) > 0 {
			a.waitPeers(ctx, started, a.peerWait)
			d = desired.Build(in) // now with the peers' addresses
			a.holdLimits(&d, in)
		}
	}
	var errs []error
	snap := &api.Snapshot{Node: a.o.Node, Prefix: a.o.Prefix.String(), At: time.Now(), BridgeNetfilterErr: a.bridgeNFProblem()}
	fwOK, consulOK := true, true
	if a.o.Firewall != nil {
		// After a failed apply the firewall's own state is not lastFW:
		// the next pass sends the whole state, not a delta from it.
		ch, err := a.applyFirewall(ctx, a.lastFW.Load(), d.Firewall, d.PeerUsers, full || a.fwFailed)
		a.fwFailed = err != nil
		if err != nil {
			fwOK = false
			a.o.Metrics.Errors.WithLabelValues("netlink").Inc()
			errs = append(errs, fmt.Errorf("applying firewall: %w", err))
		} else if !ch.Empty() {
			a.logFirewall(d, ch)
		}
		if err == nil {
			st := d.Firewall
			a.lastFW.Store(&st)
			a.observe(OutputFirewall, p.containers, a.o.Metrics.EventToFirewall)
		}
		snap.FirewallErr = errString(err)
	}
	if a.reg != nil {
		job := regJob{want: d.Registrations, hashes: d.RegHashes, list: full || p.consul, full: full, events: p.containers}
		if a.regWork != nil {
			// Consul's agent takes each registration in a time that
			// grows with the services it holds (several ms at 2,000):
			// the firewall must not wait for it. The registrar works
			// beside this loop, always on the newest desired state.
			a.regWork.post(job)
		} else if err := a.applyConsul(ctx, &job); err != nil {
			consulOK = false
			errs = append(errs, err)
		}
	}
	snap.ConsulErr = a.consulProblem()
	if !fwOK {
		// The retry must still report these events when it applies them.
		a.requeue(pendingWork{containers: p.containers})
	} else if !consulOK {
		a.requeue(pendingWork{containers: p.containers, consul: true})
	}
	if full && a.o.IPAM != nil {
		if err := a.o.IPAM.ReconcileWithDocker(ctx); err != nil {
			a.o.Metrics.Errors.WithLabelValues("docker").Inc()
			errs = append(errs, fmt.Errorf("reconciling leases with docker: %w", err))
		}
	}
	policyErrs := 0
	for _, w := range d.Workloads {
		if len(w.Errors) > 0 {
			policyErrs++
		}
	}
	a.o.Metrics.observe(d, a.o.IPAM, policyErrs)
	a.o.Metrics.ReconcileSeconds.Observe(time.Since(start).Seconds())
	if len(errs) == 0 && !p.since.IsZero() {
		a.o.Metrics.EventToApplied.Observe(time.Since(p.since).Seconds())
	}
	a.saveKnown()
	snap.StateErr = a.stateErr
	fillSnapshot(snap, d, a.nomad)
	a.lastDesired.Store(&d)
	a.snap.Store(snap)
	return errors.Join(errs...)
}

// requeue puts work back for the next pass, keeping the older event
// times.
func (a *Agent) requeue(p pendingWork) {
	a.pendMu.Lock()
	defer a.pendMu.Unlock()
	for id, t := range p.containers {
		if a.pend.containers == nil {
			a.pend.containers = map[string]time.Time{}
		}
		if old, ok := a.pend.containers[id]; !ok || t.Before(old) {
			a.pend.containers[id] = t
		}
	}
	a.pend.relist = a.pend.relist || p.relist
	a.pend.consul = a.pend.consul || p.consul
	if !p.since.IsZero() && (a.pend.since.IsZero() || p.since.Before(a.pend.since)) {
		a.pend.since = p.since
	}
}

// countDockerDrift counts the containers a resync's list found different
// from the view that events kept, leaving out those an event is in
// flight for (named before or during the list: not missed).
func (a *Agent) countDockerDrift(drift []string, p pendingWork) {
	a.pendMu.Lock()
	n := 0
	for _, id := range drift {
		_, before := p.containers[id]
		_, during := a.pend.containers[id]
		if !before && !during {
			n++
		}
	}
	a.pendMu.Unlock()
	if n > 0 {
		a.o.Metrics.ResyncDrift.WithLabelValues("docker").Add(float64(n))
		a.log.Warn("resync found containers that events had not brought", "containers", n)
	}
}

// observe reports that an output applied what the events asked for.
func (a *Agent) observe(output string, events map[string]time.Time, h prometheus.Histogram) {
	if len(events) == 0 {
		return
	}
	now := time.Now()
	for id, t := range events {
		h.Observe(now.Sub(t).Seconds())
		if a.o.Observe != nil {
			a.o.Observe(output, id, t)
		}
	}
}

// waitPeers waits (bounded) until Consul has answered for every peer key,
// so that a start or a new reference does not first apply an empty set.
func (a *Agent) waitPeers(ctx context.Context, keys []peers.Key, limit time.Duration) {
	missing := func() bool {
		for _, k := range keys {
			if _, ok := a.peers.Get(k); !ok {
				return true
			}
		}
		return false
	}
	deadline := time.Now().Add(limit)
	for missing() && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(5 * time.Millisecond)
	}
}

// logFirewall writes one line per container whose firewall changed, with
// its container, alloc and job, so the log reads as what happened.
func (a *Agent) logFirewall(d desired.Desired, ch firewall.Changes) {
	next := make(map[string]string, len(d.Firewall.Containers))
	byID := make(map[string]*desired.Workload, len(d.Workloads))
	for i := range d.Workloads {
		byID[d.Workloads[i].Container.ID] = &d.Workloads[i]
	}
	for _, c := range d.Firewall.Containers {
		digest := c.Addr.String() + " " + d.Digests[c.ID]
		if c.Closed {
			digest = fmt.Sprintf("port %d closed", c.Port)
		}
		next[c.ID] = digest
		old, had := a.applied[c.ID]
		if had && old == digest {
			continue
		}
		w := byID[c.ID]
		verb := "firewall opened"
		if had {
			verb = "firewall updated"
		}
		if w != nil && w.Closed {
			verb = "firewall closed"
		}
		attrs := []any{"container", docker.ShortID(c.ID), "address", c.Addr, "ingress_rules", len(c.Ingress), "egress_rules", len(c.Egress)}
		if c.Closed {
			// No address of its own (another's, or none): its bridge
			// port drops everything.
			verb = "firewall closed the bridge port"
			attrs = []any{"container", docker.ShortID(c.ID), "bridge_port", c.Port}
		}
		if w != nil {
			attrs = append(attrs, "alloc", w.Container.AllocID, "job", w.Job, "task", w.Task)
			if w.Closed {
				attrs = append(attrs, "reason", w.Reason)
			}
		}
		a.log.Info(verb, attrs...)
	}
	for id := range a.applied {
		if _, ok := next[id]; !ok {
			a.log.Info("firewall removed", "container", docker.ShortID(id))
		}
	}
	a.applied = next
	a.log.Debug("firewall batch", "changes", fmt.Sprintf("%+v", ch))
}

func (a *Agent) logConsul(c registrar.Change) {
	attrs := []any{"id", c.ID}
	if c.Op == "register" {
		attrs = append(attrs, "service", c.Reg.Name, "address", c.Reg.Addr, "port", c.Reg.Port,
			"container", c.Reg.Meta[registrar.MetaContainer], "alloc", c.Reg.Meta[registrar.MetaAlloc], "job", c.Reg.Meta[registrar.MetaJob])
	}
	a.log.Info("consul "+c.Op, attrs...)
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
