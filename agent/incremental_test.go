package agent

import (
	"context"

	"github.com/v6reg/v6reg/desired"
	"github.com/v6reg/v6reg/registrar"

	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/v6reg/v6reg/docker"

	"github.com/docker/docker/api/types/container"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/v6reg/v6reg/firewall"
)

// manySummaries are n labelled containers with a typical policy.
func manySummaries(n int) []container.Summary {
	out := make([]container.Summary, n)
	for i := range n {
		id, labels := webSummary(fmt.Sprintf("%x", 0x100000+i))
		out[i] = summary(id, fmt.Sprintf("web%d", i), addrN(100+i), labels)
	}
	return out
}

func (f *fakeConsul) servicesCalls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.listCalls
}

// TestEventTouchesOnlyItsContainer: with 300 containers in force, one
// container's start costs one list of that container alone, one evaluation, and
// only its own Consul registrations (no list of Consul's services); its
// stop the same.
func TestEventTouchesOnlyItsContainer(t *testing.T) {
	r := newRig(t, nil)
	r.agent.peerWait = time.Millisecond // Consul never answers for service:postgres here
	list := manySummaries(300)
	r.docker.set(list...)
	if err := r.agent.reconcile(t.Context(), true); err != nil {
		t.Fatal(err)
	}
	lists, svcLists, evals := r.docker.calls(), r.consul.servicesCalls(), r.agent.memo.Evaluations()
	regs0, deregs0 := r.consul.counts()
	r.docker.mu.Lock()
	r.docker.inspects = nil
	r.docker.mu.Unlock()

	id, labels := webSummary("beef")
	r.docker.set(append(slices.Clone(list), summary(id, "new", addrN(99), labels))...)
	started(r.agent, id)
	if err := r.agent.reconcile(t.Context(), false); err != nil {
		t.Fatal(err)
	}
	if got := r.docker.calls() - lists; got != 0 {
		t.Errorf("a start listed the containers %d times, want 0", got)
	}
	r.docker.mu.Lock()
	inspects, idLists := slices.Clone(r.docker.inspects), slices.Clone(r.docker.idLists)
	r.docker.mu.Unlock()
	if len(idLists) != 1 || !slices.Equal(idLists[0], []string{id}) {
		t.Errorf("read %v by ID, want one list of only the started container", idLists)
	}
	if len(inspects) != 0 {
		t.Errorf("inspected %d containers (the rig finds no bridge ports), want 0", len(inspects))
	}
	if got := r.agent.memo.Evaluations() - evals; got != 1 {
		t.Errorf("evaluated %d policies, want 1", got)
	}
	if got := r.consul.servicesCalls() - svcLists; got != 0 {
		t.Errorf("listed consul's services %d times, want 0", got)
	}
	regs, deregs := r.consul.counts()
	if regs-regs0 != 2 || deregs != deregs0 {
		t.Errorf("consul: %d registers, %d deregisters; want 2 (its service and v6reg-jobs), 0", regs-regs0, deregs-deregs0)
	}
	st := r.fw.states()
	if n := len(st[len(st)-1].Containers); n != 301 {
		t.Errorf("firewall holds %d containers, want 301", n)
	}

	// It stops: the inspect says it is gone.
	r.docker.set(list...)
	started(r.agent, id)
	if err := r.agent.reconcile(t.Context(), false); err != nil {
		t.Fatal(err)
	}
	if _, deregs := r.consul.counts(); deregs-deregs0 != 2 {
		t.Errorf("consul: %d deregisters after the stop, want 2", deregs-deregs0)
	}
	st = r.fw.states()
	if n := len(st[len(st)-1].Containers); n != 300 {
		t.Errorf("firewall holds %d containers after the stop, want 300", n)
	}
	if got := r.docker.calls() - lists; got != 0 {
		t.Errorf("a stop listed the containers %d times, want 0", got)
	}
	if n := histCount(t, r.agent.o.Metrics.EventToFirewall); n != 2 {
		t.Errorf("event_to_firewall counted %d events, want 2", n)
	}
	if n := histCount(t, r.agent.o.Metrics.EventToConsul); n != 2 {
		t.Errorf("event_to_consul counted %d events, want 2", n)
	}
}

// TestMemoFollowsItsInputs: an operator reload evaluates every policy
// again; an event for a container that did not change evaluates nothing.
func TestMemoFollowsItsInputs(t *testing.T) {
	r := newRig(t, nil)
	r.agent.peerWait = time.Millisecond // Consul never answers for service:postgres here
	r.docker.set(manySummaries(20)...)
	if err := r.agent.reconcile(t.Context(), true); err != nil {
		t.Fatal(err)
	}
	evals := r.agent.memo.Evaluations()
	started(r.agent, cid("100000"))
	if err := r.agent.reconcile(t.Context(), false); err != nil {
		t.Fatal(err)
	}
	if got := r.agent.memo.Evaluations() - evals; got != 0 {
		t.Errorf("an event for an unchanged container evaluated %d policies", got)
	}
	op := testOperator()
	op.Peers["traefik"] = op.Peers["ops"]
	r.agent.SetOperator(op)
	if err := r.agent.reconcile(t.Context(), false); err != nil {
		t.Fatal(err)
	}
	if got := r.agent.memo.Evaluations() - evals; got != 20 {
		t.Errorf("an operator reload evaluated %d policies, want 20", got)
	}
	st := r.fw.states()
	if got := st[len(st)-1].PeerSets; len(got) == 0 {
		t.Fatal("no peer sets")
	}
}

func histCount(t *testing.T, h prometheus.Histogram) uint64 {
	t.Helper()
	var m dto.Metric
	if err := h.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetHistogram().GetSampleCount()
}

// TestResyncCountsDrift: what no event brought, the periodic resync finds
// and counts; what events brought, it does not.
func TestResyncCountsDrift(t *testing.T) {
	r := newRig(t, nil)
	r.agent.peerWait = time.Millisecond // Consul never answers for service:postgres here
	list := manySummaries(3)
	r.docker.set(list...)
	if err := r.agent.reconcile(t.Context(), true); err != nil {
		t.Fatal(err)
	}
	drift := func(src string) float64 {
		var m dto.Metric
		if err := r.agent.o.Metrics.ResyncDrift.WithLabelValues(src).Write(&m); err != nil {
			t.Fatal(err)
		}
		return m.GetCounter().GetValue()
	}

	// A start whose event arrives: no drift.
	id, labels := webSummary("beef")
	list = append(list, summary(id, "new", addrN(99), labels))
	r.docker.set(list...)
	started(r.agent, id)
	if err := r.agent.reconcile(t.Context(), false); err != nil {
		t.Fatal(err)
	}
	if err := r.agent.reconcile(t.Context(), true); err != nil {
		t.Fatal(err)
	}
	if d := drift("docker"); d != 0 {
		t.Fatalf("docker drift %v after an event-driven start", d)
	}
	// A start whose event is lost: the incremental pass does not see it,
	// the resync does, and counts it.
	id2, labels2 := webSummary("cafe")
	r.docker.set(append(list, summary(id2, "lost", addrN(98), labels2))...)
	if err := r.agent.reconcile(t.Context(), false); err != nil {
		t.Fatal(err)
	}
	st := r.fw.states()
	if n := len(st[len(st)-1].Containers); n != 4 {
		t.Fatalf("without its event the container is in the firewall already (%d containers)", n)
	}
	if err := r.agent.reconcile(t.Context(), true); err != nil {
		t.Fatal(err)
	}
	st = r.fw.states()
	if n := len(st[len(st)-1].Containers); n != 5 {
		t.Errorf("after the resync the firewall holds %d containers, want 5", n)
	}
	if d := drift("docker"); d != 1 {
		t.Errorf("docker drift %v, want 1", d)
	}
	// A registration removed behind the agent's back (a Consul agent
	// that restarted empty): the resync puts it back and counts it.
	if d := drift("consul"); d != 0 {
		t.Fatalf("consul drift %v before any", d)
	}
	victim := registrar.ServiceID("v6reg", "n1", id2, "web", 80)
	r.consul.mu.Lock()
	delete(r.consul.services, victim)
	r.consul.mu.Unlock()
	if err := r.agent.reconcile(t.Context(), false); err != nil {
		t.Fatal(err)
	}
	if slices.Contains(r.consul.ids(), victim) {
		t.Fatal("an incremental pass listed consul")
	}
	if err := r.agent.reconcile(t.Context(), true); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(r.consul.ids(), victim) {
		t.Error("the resync did not register the lost service again")
	}
	if d := drift("consul"); d != 1 {
		t.Errorf("consul drift %v, want 1", d)
	}
}

// benchBuild is one incremental pass's pure part at n containers: the
// build of the desired state with every evaluation memoized but one
// (the container an event named).
func benchBuild(b *testing.B, n int) {
	v := docker.NewView()
	for _, s := range manySummaries(n) {
		v.Put(docker.NewContainer(s.ID, s.Names[0], s.Labels, time.Unix(s.Created, 0), s.NetworkSettings.Networks[testNetwork]))
	}
	memo := desired.NewMemo()
	in := testInput(v.Containers()...)
	in.Memo, in.OperatorRev = memo, 1
	desired.Build(in)
	evals0 := memo.Evaluations()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c := v.Containers()[i%n]
		c.Labels = map[string]string{"v6reg.ingress": fmt.Sprintf("tcp/%d from @traefik", 1000+i%1000)}
		v.Put(c)
		in.Containers = v.Containers()
		desired.Build(in)
	}
	b.ReportMetric(float64(memo.Evaluations()-evals0)/float64(b.N), "evals/op")
}

func BenchmarkBuildOneChangedAt1000(b *testing.B)  { benchBuild(b, 1000) }
func BenchmarkBuildOneChangedAt10000(b *testing.B) { benchBuild(b, 10000) }

// BenchmarkLimitsAt1000 is what holding the size limits adds to a pass.
func BenchmarkLimitsAt1000(b *testing.B) {
	v := docker.NewView()
	for _, s := range manySummaries(1000) {
		v.Put(docker.NewContainer(s.ID, s.Names[0], s.Labels, time.Unix(s.Created, 0), s.NetworkSettings.Networks[testNetwork]))
	}
	in := testInput(v.Containers()...)
	in.Memo, in.OperatorRev, in.Elements = desired.NewMemo(), 1, firewall.NewElementCounter()
	prev := desired.Build(in)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		d := desired.Build(in)
		b.StartTimer()
		desired.EnforceLimits(&d, in, &prev)
	}
}

// deltaFirewall is fakeFirewall that also takes deltas, recording them.
type deltaFirewall struct {
	fakeFirewall
	deltas []firewall.Delta
}

func (f *deltaFirewall) ApplyDelta(_ context.Context, d firewall.Delta) (firewall.Changes, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.deltas = append(f.deltas, d)
	return firewall.Changes{Batches: 1}, nil
}

// TestFirewallGetsOnlyWhatChanged: with a firewall that takes deltas, a
// start sends that container alone and a stop its removal; the periodic
// resync sends the whole state.
func TestFirewallGetsOnlyWhatChanged(t *testing.T) {
	r := newRig(t, nil)
	fw := &deltaFirewall{}
	r.agent.o.Firewall = fw
	r.agent.peerWait = time.Millisecond
	list := manySummaries(50)
	r.docker.set(list...)
	if err := r.agent.reconcile(t.Context(), true); err != nil {
		t.Fatal(err)
	}
	if n := len(fw.states()); n != 1 {
		t.Fatalf("%d full applies at start, want 1", n)
	}
	id, labels := webSummary("beef")
	r.docker.set(append(slices.Clone(list), summary(id, "new", addrN(99), labels))...)
	started(r.agent, id)
	if err := r.agent.reconcile(t.Context(), false); err != nil {
		t.Fatal(err)
	}
	r.docker.set(list...)
	started(r.agent, id)
	if err := r.agent.reconcile(t.Context(), false); err != nil {
		t.Fatal(err)
	}
	if n := len(fw.states()); n != 1 {
		t.Errorf("%d full applies after a start and a stop, want still 1", n)
	}
	if len(fw.deltas) != 2 {
		t.Fatalf("%d deltas, want 2", len(fw.deltas))
	}
	if d := fw.deltas[0]; len(d.Upsert) != 1 || d.Upsert[0].ID != id || len(d.Remove) != 0 {
		t.Errorf("start: delta upserts %d, removes %v; want only the started container", len(d.Upsert), d.Remove)
	}
	if d := fw.deltas[1]; len(d.Upsert) != 0 || !slices.Equal(d.Remove, []string{id}) {
		t.Errorf("stop: delta upserts %d, removes %v; want only its removal", len(d.Upsert), d.Remove)
	}
	if err := r.agent.reconcile(t.Context(), true); err != nil {
		t.Fatal(err)
	}
	if n := len(fw.states()); n != 2 {
		t.Errorf("%d full applies after the resync, want 2", n)
	}
}
