package agent

import (
	"github.com/v6reg/v6reg/registrar"

	"context"
	"errors"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/v6reg/v6reg/docker"

	"github.com/v6reg/v6reg/internal/testwait"

	"github.com/v6reg/v6reg/nomad"

	"github.com/docker/docker/api/types/events"
	consul "github.com/hashicorp/consul/api"
	napi "github.com/hashicorp/nomad/api"

	"github.com/v6reg/v6reg/firewall"
)

type rig struct {
	docker *fakeDocker
	fw     *fakeFirewall
	consul *fakeConsul
	ipam   *fakeIPAM
	agent  *Agent
}

func newRig(t *testing.T, nomadAPI nomad.API) *rig {
	r := &rig{docker: &fakeDocker{}, fw: &fakeFirewall{}, consul: newFakeConsul(), ipam: &fakeIPAM{}}
	o := Options{
		Node: "n1", Prefix: testPrefix, Gateway: testGateway, Network: testNetwork, IDPrefix: "v6reg",
		Operator: testOperator(), Log: testLog(t),
		Docker: r.docker, Consul: r.consul, Firewall: r.fw, IPAM: r.ipam,
	}
	if nomadAPI != nil {
		o.Nomad = nomadAPI
	}
	r.agent = New(o)
	return r
}

// run runs the agent until the returned stop is called, and returns once
// its first reconcile is done (ready).
func (r *rig) run(t *testing.T) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error)
	ready := make(chan struct{})
	go func() { done <- r.agent.Run(ctx, func() { close(ready) }) }()
	testwait.Recv(t, ready, "the first reconcile")
	return func() { cancel(); testwait.Recv(t, done, "Run to return") }
}

func webSummary(tag string) (string, map[string]string) {
	return cid(tag), map[string]string{
		"v6reg.ingress":  "tcp/80 from @traefik",
		"v6reg.egress":   "tcp/5432 to service:postgres",
		"v6reg.services": "web:80:http",
		"v6reg.job":      "p-web",
	}
}

func TestReconcileIsIdempotent(t *testing.T) {
	r := newRig(t, nil)
	r.consul.health["postgres"] = []*consul.ServiceEntry{entry("fd00:1::5"), entry("10.0.0.5")}
	id1, l1 := webSummary("a1")
	id2, l2 := webSummary("a2")
	r.docker.set(summary(id1, "web1", addrN(10), l1), summary(id2, "web2", addrN(11), l2))
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()

	if err := r.agent.reconcile(ctx, true); err != nil {
		t.Fatal(err)
	}
	regs1, deregs1 := r.consul.counts()
	if regs1 != 4 || deregs1 != 0 {
		t.Fatalf("first reconcile: %d registers, %d deregisters; want 4 (2 services, 2 v6reg-jobs), 0", regs1, deregs1)
	}
	states := r.fw.states()
	if len(states) != 1 {
		t.Fatalf("firewall applies = %d", len(states))
	}
	// The Consul watch answered before the apply: the set holds the
	// instance's IPv6 address, not an empty set and not its IPv4 one.
	if got := states[0].PeerSets["service:default/postgres"]; len(got) != 1 || got[0].String() != "fd00:1::5/128" {
		t.Errorf("service:postgres = %v", got)
	}
	if r.ipam.calls != 1 {
		t.Errorf("IPAM reconciles = %d, want 1 on a full pass", r.ipam.calls)
	}

	if err := r.agent.reconcile(ctx, false); err != nil {
		t.Fatal(err)
	}
	states = r.fw.states()
	if !reflect.DeepEqual(states[0], states[1]) {
		t.Errorf("second apply sent a different state:\n%+v\n%+v", states[0], states[1])
	}
	if regs, deregs := r.consul.counts(); regs != regs1 || deregs != 0 {
		t.Errorf("second reconcile registered %d, deregistered %d; want nothing new", regs-regs1, deregs)
	}
	if r.ipam.calls != 1 {
		t.Errorf("IPAM reconciles = %d, want none on a non-full pass", r.ipam.calls)
	}
	// Only the referenced service is watched.
	r.consul.mu.Lock()
	calls := slices.Compact(slices.Sorted(slices.Values(r.consul.healthCalls)))
	r.consul.mu.Unlock()
	if !slices.Equal(calls, []string{"postgres"}) {
		t.Errorf("health watches = %v, want only postgres", calls)
	}
}

func TestReconcileRemovesOnlyOwnedRegistrations(t *testing.T) {
	r := newRig(t, nil)
	id1, l1 := webSummary("a1")
	r.docker.set(summary(id1, "web1", addrN(10), l1))
	delete(l1, "v6reg.egress")
	// Orphans of this node (the container is gone), and foreign ones.
	r.consul.put("v6reg-n1-deadbeef0000-web-80", &consul.AgentService{Service: "web", Meta: map[string]string{registrar.MetaOwner: "n1"}})
	r.consul.put("v6reg-n1-deadbeef0000-job-0", &consul.AgentService{Service: registrar.JobsService, Meta: map[string]string{registrar.MetaOwner: "n1"}})
	r.consul.put("other-n1-deadbeef0000-web-80", &consul.AgentService{Service: "web", Meta: map[string]string{registrar.MetaOwner: "n1"}})
	r.consul.put("v6reg-n1-cafe00000000-web-80", &consul.AgentService{Service: "web", Meta: map[string]string{registrar.MetaOwner: "n2"}})
	r.consul.put("v6reg-n12-cafe00000000-web-80", &consul.AgentService{Service: "web", Meta: map[string]string{registrar.MetaOwner: "n12"}})
	r.consul.put("redis", &consul.AgentService{Service: "redis"})
	if err := r.agent.reconcile(t.Context(), true); err != nil {
		t.Fatal(err)
	}
	r.consul.mu.Lock()
	deregs := slices.Sorted(slices.Values(r.consul.deregisters))
	r.consul.mu.Unlock()
	if want := []string{"v6reg-n1-deadbeef0000-job-0", "v6reg-n1-deadbeef0000-web-80"}; !slices.Equal(deregs, want) {
		t.Errorf("deregistered %v, want %v", deregs, want)
	}
	want := []string{
		"other-n1-deadbeef0000-web-80", "redis",
		"v6reg-n1-" + id1[:12] + "-job-0", "v6reg-n1-" + id1[:12] + "-web-80",
		"v6reg-n1-cafe00000000-web-80", "v6reg-n12-cafe00000000-web-80",
	}
	if got := r.consul.ids(); !slices.Equal(got, want) {
		t.Errorf("consul holds %v, want %v", got, want)
	}
	// The container stops: its registrations go, the foreign ones stay.
	r.docker.set()
	started(r.agent, id1)
	if err := r.agent.reconcile(t.Context(), false); err != nil {
		t.Fatal(err)
	}
	if got := r.consul.ids(); len(got) != 4 || slices.ContainsFunc(got, func(s string) bool { return strings.Contains(s, id1[:12]) }) {
		t.Errorf("after the container stopped consul holds %v", got)
	}
	st := r.fw.states()
	if last := st[len(st)-1]; len(last.Containers) != 0 {
		t.Errorf("firewall still holds %+v", last.Containers)
	}
}

func TestReconcileDockerErrorAppliesNothing(t *testing.T) {
	r := newRig(t, nil)
	r.consul.put("v6reg-n1-deadbeef0000-web-80", &consul.AgentService{Service: "web", Meta: map[string]string{registrar.MetaOwner: "n1"}})
	r.docker.listErr = errors.New("docker: Cannot connect to the Docker daemon")
	err := r.agent.reconcile(t.Context(), true)
	if err == nil || !strings.Contains(err.Error(), "listing containers on network v6") {
		t.Fatalf("err = %v", err)
	}
	if n := len(r.fw.states()); n != 0 {
		t.Errorf("firewall applies = %d, want 0", n)
	}
	if regs, deregs := r.consul.counts(); regs+deregs != 0 {
		t.Errorf("consul changes = %d/%d, want none (an empty list must not remove what is right)", regs, deregs)
	}
	if r.ipam.calls != 0 {
		t.Errorf("IPAM reconciled %d times", r.ipam.calls)
	}
}

func TestReconcileConsulErrorSurfacesAndRetries(t *testing.T) {
	r := newRig(t, nil)
	id1, l1 := webSummary("a1")
	delete(l1, "v6reg.egress")
	r.docker.set(summary(id1, "web1", addrN(10), l1))
	r.consul.registerErr = errors.New("connection refused")
	// No docker event arrives (the subscription never returns), so only
	// the retry can catch up once Consul is back.
	r.docker.events = func(ctx context.Context, _ events.ListOptions) (<-chan events.Message, <-chan error) {
		<-ctx.Done()
		return make(chan events.Message), make(chan error)
	}

	var readyCalls atomic.Int32
	readyCh := make(chan struct{}, 4)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error)
	go func() {
		done <- r.agent.Run(ctx, func() { readyCalls.Add(1); readyCh <- struct{}{} })
	}()
	defer func() {
		cancel()
		if err := testwait.Recv(t, done, "Run to return"); err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	// The first reconcile fails on Consul: it is reported, the firewall is
	// applied, and so the agent is ready (the containers are protected; a
	// Consul that is down must not keep systemd waiting and restarting).
	testwait.Recv(t, readyCh, "ready with the firewall applied while Consul fails")
	testwait.Until(t, "the consul error in the snapshot", func() bool {
		s := r.agent.Snapshot()
		return strings.Contains(s.ConsulErr, "registering consul service v6reg-n1-"+id1[:12]) && strings.Contains(s.ConsulErr, "connection refused")
	})
	if len(r.fw.states()) == 0 {
		t.Errorf("ready before the firewall was applied")
	}
	// Consul comes back; the retry (no new event) catches up.
	r.consul.mu.Lock()
	r.consul.registerErr = nil
	r.consul.mu.Unlock()
	// The registrar retries on its own: no event, no reconcile needed.
	testwait.Until(t, "the retry registering both services", func() bool { return len(r.consul.ids()) == 2 })
	// The services are in Consul while that reconcile runs; its snapshot
	// is stored when it ends.
	testwait.Until(t, "the consul error cleared from the snapshot", func() bool { return r.agent.Snapshot().ConsulErr == "" })
	n := len(r.fw.states())
	r.agent.Trigger("test")
	testwait.Until(t, "one more reconcile", func() bool { return len(r.fw.states()) > n })
	if readyCalls.Load() != 1 {
		t.Errorf("ready called %d times", readyCalls.Load())
	}
}

func TestTriggersCoalesce(t *testing.T) {
	r := newRig(t, nil)
	r.agent.o.Consul, r.agent.reg, r.agent.peers = nil, nil, nil
	// The subscription never completes, so its own trigger cannot land
	// at a random moment: every trigger here is the test's.
	r.docker.events = func(ctx context.Context, _ events.ListOptions) (<-chan events.Message, <-chan error) {
		<-ctx.Done()
		return make(chan events.Message), make(chan error)
	}
	entered := make(chan int, 10)
	release := make(chan struct{}, 10)
	r.docker.onList = func(ctx context.Context, n int) {
		entered <- n
		select {
		case <-release:
		case <-ctx.Done():
		}
	}
	var ready atomic.Int32
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error)
	go func() { done <- r.agent.Run(ctx, func() { ready.Add(1) }) }()

	testwait.Recv(t, entered, "the first reconcile")
	// 200 container starts while the first reconcile is slow.
	var wg sync.WaitGroup
	for range 200 {
		wg.Add(1)
		go func() { defer wg.Done(); relist(r.agent) }()
	}
	wg.Wait()
	release <- struct{}{}
	if n := testwait.Recv(t, entered, "the coalesced reconcile"); n != 2 {
		t.Fatalf("reconcile %d, want 2", n)
	}
	release <- struct{}{}
	testwait.Until(t, "the second apply", func() bool { return len(r.fw.states()) == 2 })
	cancel()
	if err := testwait.Recv(t, done, "Run to return"); err != nil {
		t.Fatal(err)
	}
	if n := r.docker.calls(); n != 2 {
		t.Errorf("%d reconciles for 200 triggers during one slow reconcile, want 2", n)
	}
	t.Logf("200 triggers during a slow reconcile: %d reconciles in all", r.docker.calls())
	if ready.Load() != 1 {
		t.Errorf("ready called %d times, want 1", ready.Load())
	}
}

func TestReconcileStoppingAllocDeregistersFirst(t *testing.T) {
	job := "p-shop"
	group := "web"
	task := &napi.Task{Name: "api", Meta: map[string]string{"v6reg_services": "shop:9000", "v6reg_ingress": "tcp/9000 from @traefik"}}
	alloc := &napi.Allocation{ID: allocA, Namespace: "default", TaskGroup: group, DesiredStatus: "run", ClientStatus: "running",
		Job: &napi.Job{ID: &job, TaskGroups: []*napi.TaskGroup{{Name: &group, Tasks: []*napi.Task{task}}}}}
	fn := &fakeNomad{allocs: []*napi.Allocation{alloc}}
	r := newRig(t, fn)
	r.docker.set(summary(cid("b1"), "api-"+allocA, addrN(30), map[string]string{docker.LabelNomadAlloc: allocA}))
	src := r.agent.nomad
	src.Store(fn.allocs, 1)
	if err := r.agent.reconcile(t.Context(), false); err != nil {
		t.Fatal(err)
	}
	if got := r.consul.ids(); len(got) != 2 {
		t.Fatalf("registered %v", got)
	}
	stopping := *alloc
	stopping.DesiredStatus = napi.AllocDesiredStatusStop
	src.Store([]*napi.Allocation{&stopping}, 2)
	if err := r.agent.reconcile(t.Context(), false); err != nil {
		t.Fatal(err)
	}
	if got := r.consul.ids(); len(got) != 0 {
		t.Errorf("consul still holds %v while the allocation stops", got)
	}
	st := r.fw.states()
	if last := st[len(st)-1]; len(last.Containers) != 1 || len(last.Containers[0].Ingress) != 1 {
		t.Errorf("firewall = %+v, want the container's rules kept while it drains", last.Containers)
	}
	if c := r.agent.Snapshot().Containers; len(c) != 1 || !c[0].Stopping {
		t.Errorf("status = %+v", c)
	}
}

func TestPeerWatchWaitsOnceAndFollowsChanges(t *testing.T) {
	r := newRig(t, nil)
	id, labels := webSummary("a1")
	r.docker.set(summary(id, "web1", addrN(10), labels))
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	peerSet := func() []string {
		st := r.fw.states()
		var out []string
		for _, p := range st[len(st)-1].PeerSets["service:default/postgres"] {
			out = append(out, p.String())
		}
		return out
	}

	// Consul does not answer for postgres: the first reconcile waits a
	// bounded time, then applies the set empty (closed).
	r.agent.peerWait = 20 * time.Millisecond
	if err := r.agent.reconcile(ctx, false); err != nil {
		t.Fatal(err)
	}
	if got := peerSet(); len(got) != 0 {
		t.Fatalf("service:postgres = %v before Consul answered", got)
	}
	// Later reconciles do not wait for it again.
	r.agent.peerWait = time.Hour
	done := make(chan error)
	go func() { done <- r.agent.reconcile(ctx, false) }()
	if err := testwait.Recv(t, done, "a reconcile that must not wait for a silent peer again"); err != nil {
		t.Fatal(err)
	}
	// Consul answers: the watch asks for a reconcile, which fills the set.
	testwait.Drain(r.agent.trig)
	r.consul.setHealth("postgres", entry("fd00:1::5"), entry("fd00:1::6"))
	testwait.Recv(t, r.agent.trig, "the watch's trigger")
	if err := r.agent.reconcile(ctx, false); err != nil {
		t.Fatal(err)
	}
	if got := peerSet(); !slices.Equal(got, []string{"fd00:1::5/128", "fd00:1::6/128"}) {
		t.Errorf("service:postgres = %v", got)
	}
	// An instance goes away.
	r.consul.setHealth("postgres", entry("fd00:1::6"))
	testwait.Recv(t, r.agent.trig, "the watch's trigger")
	if err := r.agent.reconcile(ctx, false); err != nil {
		t.Fatal(err)
	}
	if got := peerSet(); !slices.Equal(got, []string{"fd00:1::6/128"}) {
		t.Errorf("service:postgres = %v", got)
	}
	// No policy references postgres any more: the watch stops.
	r.docker.set()
	relist(r.agent)
	if err := r.agent.reconcile(ctx, false); err != nil {
		t.Fatal(err)
	}
	if n := r.agent.peers.Watching(); n != 0 {
		t.Errorf("%d watches still running", n)
	}
}

// watchingFirewall also restores the table between reconciles, as
// *firewall.Firewall does (to the last state Apply took; the firewall
// package tests that a repair never applies an older one).
type watchingFirewall struct {
	*fakeFirewall
	watching chan struct{}
}

func (w watchingFirewall) Watch(ctx context.Context) error {
	w.watching <- struct{}{}
	<-ctx.Done()
	return nil
}

func TestSetOperatorAndWatch(t *testing.T) {
	r := newRig(t, nil)
	wf := watchingFirewall{fakeFirewall: r.fw, watching: make(chan struct{}, 1)}
	r.agent.o.Firewall = wf
	id, labels := webSummary("a1")
	delete(labels, "v6reg.egress")
	r.docker.set(summary(id, "web1", addrN(10), labels))
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error)
	go func() { done <- r.agent.Run(ctx, nil) }()
	defer func() { cancel(); testwait.Recv(t, done, "Run to return") }()

	// The watch starts after the first apply.
	testwait.Recv(t, wf.watching, "the firewall watch to start")
	if len(r.fw.states()) == 0 {
		t.Fatal("the watch started before the first apply")
	}
	traefikSet := func(s firewall.State) []netip.Prefix {
		for _, c := range s.Containers {
			for _, r := range c.Ingress {
				return s.PeerSets[r.Peer]
			}
		}
		return nil
	}
	if st := r.fw.states(); len(traefikSet(st[0])) != 2 || !slices.Contains(traefikSet(st[0]), traefikV6) { // and its IPv4 prefix
		t.Fatalf("first applied state's @traefik = %v", traefikSet(st[0]))
	}
	// SIGHUP: @traefik moves; the next reconcile applies it.
	op := testOperator()
	moved := netip.MustParsePrefix("fd00:ab::/64")
	op.Peers["traefik"] = []netip.Prefix{moved}
	r.agent.SetOperator(op)
	testwait.Until(t, "the new operator config applied", func() bool {
		st := r.fw.states()
		return slices.Equal(traefikSet(st[len(st)-1]), []netip.Prefix{moved})
	})
}

// A Consul that accepts connections and never answers must not stop the
// firewall from following containers (found by the fault suite: a frozen
// Consul held the one reconcile loop for the whole outage).
func TestFrozenConsulDoesNotHoldTheFirewall(t *testing.T) {
	old := consulApplyTimeout
	consulApplyTimeout = 200 * time.Millisecond
	t.Cleanup(func() { consulApplyTimeout = old })
	r := newRig(t, nil)
	r.consul.mu.Lock()
	r.consul.hang = true
	r.consul.mu.Unlock()
	id1, l1 := webSummary("f1")
	delete(l1, "v6reg.egress") // no Consul-backed peer: only registration meets Consul
	r.docker.set(summary(id1, "web1", addrN(30), l1))
	start := time.Now()
	err := r.agent.reconcile(t.Context(), false)
	if err == nil || !strings.Contains(err.Error(), "consul") {
		t.Fatalf("reconcile with a frozen Consul: err = %v, want a consul error", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("reconcile took %s with a frozen Consul; it must give up after %s", d, consulApplyTimeout)
	}
	states := r.fw.states()
	if len(states) != 1 || len(states[0].Containers) != 1 || states[0].Containers[0].ID != id1 {
		t.Fatalf("firewall states %+v: the new container must be applied despite Consul", states)
	}
}
