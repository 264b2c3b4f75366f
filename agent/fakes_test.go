package agent

import (
	"github.com/v6reg/v6reg/desired"
	"github.com/v6reg/v6reg/desired/desiredtest"
	"github.com/v6reg/v6reg/internal/testlog"
	"github.com/v6reg/v6reg/peers/peerstest"

	"github.com/v6reg/v6reg/docker"

	"context"

	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/network"
	consul "github.com/hashicorp/consul/api"
	napi "github.com/hashicorp/nomad/api"

	"github.com/v6reg/v6reg/firewall"
	"github.com/v6reg/v6reg/policies"
)

// Shared test values: see desiredtest.
var (
	testPrefix  = desiredtest.Prefix
	testGateway = desiredtest.Gateway
	traefikV6   = desiredtest.TraefikV6
)

const testNetwork = "v6"

func quietLog() *slog.Logger { return testlog.Quiet() }

func testLog(t *testing.T) *slog.Logger { return testlog.New(t) }

func addrN(n int) netip.Addr          { return desiredtest.Addr(n) }
func cid(tag string) string           { return desiredtest.CID(tag) }
func testOperator() policies.Operator { return desiredtest.Operator() }
func testInput(cs ...docker.Container) desired.Input {
	return desired.Input{
		Node: "n1", IDPrefix: "v6reg", Prefix: testPrefix, Gateway: testGateway,
		Operator: testOperator(), Containers: cs, Nomad: true,
		Lookup: desiredtest.NoAlloc, Peers: desiredtest.NoPeers,
	}
}

// --- Docker ---

const (
	allocA = desiredtest.AllocA
	allocB = desiredtest.AllocB
)

type fakeDocker struct {
	mu        sync.Mutex
	list      []container.Summary
	listErr   error
	listCalls int
	// onList, if set, runs inside ContainerList (call number n, from 1)
	// and may block, to make a reconcile slow.
	onList func(ctx context.Context, n int)
	// events serves Events; nil blocks until ctx is done.
	events func(ctx context.Context, o events.ListOptions) (<-chan events.Message, <-chan error)
	// sandbox is each container's network namespace file for
	// ContainerInspect (by ID); a container without one is not found.
	sandbox  map[string]string
	inspects []string   // IDs inspected, in order
	idLists  [][]string // the IDs of each list filtered by ID
}

func (f *fakeDocker) ContainerInspect(_ context.Context, id string) (container.InspectResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.inspects = append(f.inspects, id)
	i := slices.IndexFunc(f.list, func(s container.Summary) bool { return s.ID == id })
	if i < 0 {
		return container.InspectResponse{}, fmt.Errorf("no such container: %s: %w", id, cerrdefs.ErrNotFound)
	}
	s := f.list[i]
	name := ""
	if len(s.Names) > 0 {
		name = s.Names[0]
	}
	ns := &container.NetworkSettings{}
	if s.NetworkSettings != nil {
		ns.Networks = s.NetworkSettings.Networks
	}
	// A container without a sandbox here is one whose network namespace
	// Docker does not give (the bridge port cannot be found).
	ns.SandboxKey = f.sandbox[id]
	return container.InspectResponse{
		ContainerJSONBase: &container.ContainerJSONBase{ID: id, Name: name, Created: time.Unix(s.Created, 0).Format(time.RFC3339Nano),
			State: &container.State{Running: true}},
		Config:          &container.Config{Labels: s.Labels},
		NetworkSettings: ns,
	}, nil
}

// relist tells the agent, as a broken event stream does, that Docker
// changed in ways no event named: the next reconcile lists everything.
func relist(a *Agent) { dockerIntake{a}.RelistEvent("test: docker changed") }

// started tells the agent, as Docker's events do, that these containers
// changed: the next reconcile inspects them.
func started(a *Agent, ids ...string) {
	for _, id := range ids {
		dockerIntake{a}.ContainerEvent(id, "test: container event")
	}
}

// ContainerList serves the whole list (counted in listCalls, after the
// onList hook) or, with id filters, those containers (recorded in
// idLists), as Docker filters a list.
func (f *fakeDocker) ContainerList(ctx context.Context, o container.ListOptions) ([]container.Summary, error) {
	if ids := o.Filters.Get("id"); len(ids) > 0 {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.idLists = append(f.idLists, slices.Sorted(slices.Values(ids)))
		if f.listErr != nil {
			return nil, f.listErr
		}
		var out []container.Summary
		for _, s := range f.list {
			if slices.Contains(ids, s.ID) {
				out = append(out, s)
			}
		}
		return out, nil
	}
	f.mu.Lock()
	f.listCalls++
	n, hook := f.listCalls, f.onList
	f.mu.Unlock()
	if hook != nil {
		hook(ctx, n)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.listErr != nil {
		return nil, f.listErr
	}
	return slices.Clone(f.list), nil
}

func (f *fakeDocker) Events(ctx context.Context, o events.ListOptions) (<-chan events.Message, <-chan error) {
	if f.events != nil {
		return f.events(ctx, o)
	}
	return make(chan events.Message), make(chan error)
}

func (f *fakeDocker) calls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.listCalls
}

func (f *fakeDocker) set(list ...container.Summary) {
	f.mu.Lock()
	f.list = list
	f.mu.Unlock()
}

// summary is what `docker ps` gives for a container on the test network.
func summary(id, name string, addr netip.Addr, labels map[string]string) container.Summary {
	ep := &network.EndpointSettings{}
	if addr.IsValid() {
		ep.GlobalIPv6Address = addr.String()
	}
	return container.Summary{
		ID: id, Names: []string{"/" + name}, Labels: labels, State: "running",
		NetworkSettings: &container.NetworkSettingsSummary{Networks: map[string]*network.EndpointSettings{testNetwork: ep}},
	}
}

// --- Firewall ---

type fakeFirewall struct {
	mu      sync.Mutex
	applied []firewall.State
	err     error
}

func (f *fakeFirewall) Apply(_ context.Context, s firewall.State) (firewall.Changes, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return firewall.Changes{}, f.err
	}
	if err := s.Validate(); err != nil {
		return firewall.Changes{}, err
	}
	f.applied = append(f.applied, s)
	return firewall.Changes{Batches: 1}, nil
}

func (f *fakeFirewall) Counters(context.Context) (map[string]firewall.DirCounters, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]firewall.DirCounters{}
	if n := len(f.applied); n > 0 {
		for i, c := range f.applied[n-1].Containers {
			var dc firewall.DirCounters
			dc.IngressDropped.Packets = uint64(10 + i)
			dc.EgressDropped.Packets = uint64(20 + i)
			out[c.ID] = dc
		}
	}
	return out, nil
}

func (f *fakeFirewall) states() []firewall.State {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.applied)
}

// --- Consul ---

type fakeConsul struct {
	mu          sync.Mutex
	services    map[string]*consul.AgentService
	checks      map[string]*consul.AgentServiceCheck // by service ID
	registers   []string
	deregisters []string
	registerErr error
	servicesErr error
	listCalls   int // Services calls
	// hang makes Services block until its context ends, like a Consul
	// that accepts connections and never answers.
	hang bool
	// health serves HealthService: instances by "service" or "service|tag".
	health      map[string][]*consul.ServiceEntry
	healthIndex map[string]uint64
	healthErr   error // fails HealthService: Consul does not answer
	healthCalls []string
	wake        chan struct{}
	// checkState sets the live status and output of a service's check
	// (by service ID); a check without one is critical with no output,
	// as Consul starts a new check. checksErr fails Checks; checksHang
	// blocks it until its context ends.
	checkState map[string][2]string
	checksErr  error
	checksHang bool
}

func newFakeConsul() *fakeConsul {
	return &fakeConsul{services: map[string]*consul.AgentService{}, checks: map[string]*consul.AgentServiceCheck{}, health: map[string][]*consul.ServiceEntry{}, healthIndex: map[string]uint64{}}
}

func (f *fakeConsul) Services(ctx context.Context) (map[string]*consul.AgentService, error) {
	f.mu.Lock()
	f.listCalls++
	if f.hang {
		f.mu.Unlock()
		<-ctx.Done()
		return nil, ctx.Err()
	}
	defer f.mu.Unlock()
	if f.servicesErr != nil {
		return nil, f.servicesErr
	}
	out := make(map[string]*consul.AgentService, len(f.services))
	for id, s := range f.services {
		c := *s
		c.Meta = maps.Clone(s.Meta)
		out[id] = &c
	}
	return out, nil
}

func (f *fakeConsul) Register(_ context.Context, r *consul.AgentServiceRegistration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.registerErr != nil {
		return f.registerErr
	}
	f.registers = append(f.registers, r.ID)
	f.services[r.ID] = &consul.AgentService{ID: r.ID, Service: r.Name, Address: r.Address, Port: r.Port,
		Tags: slices.Clone(r.Tags), Meta: maps.Clone(r.Meta)}
	f.checks[r.ID] = r.Check
	return nil
}

func (f *fakeConsul) Deregister(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.services[id]; !ok {
		return fmt.Errorf("unknown service %s", id)
	}
	f.deregisters = append(f.deregisters, id)
	delete(f.services, id)
	delete(f.checks, id)
	return nil
}

// HealthService is a blocking query: it answers when the key's entries
// are newer than waitIndex (every setHealth is a new index).
func (f *fakeConsul) HealthService(ctx context.Context, service, tag string, waitIndex uint64) ([]*consul.ServiceEntry, uint64, error) {
	key := service
	if tag != "" {
		key += "|" + tag
	}
	f.mu.Lock()
	f.healthCalls = append(f.healthCalls, key)
	herr := f.healthErr
	f.mu.Unlock()
	if herr != nil {
		return nil, 0, herr
	}
	for {
		f.mu.Lock()
		entries, ok := f.health[key]
		index := f.healthIndex[key]
		if index == 0 && ok {
			index = 1 // set directly in f.health before the watch
		}
		if f.wake == nil {
			f.wake = make(chan struct{})
		}
		wake := f.wake
		f.mu.Unlock()
		if ok && index > waitIndex {
			return entries, index, nil
		}
		select {
		case <-wake:
		case <-ctx.Done():
			return nil, 0, ctx.Err()
		}
	}
}

// Checks answers like /v1/agent/checks: one check per registered check,
// keyed by check ID.
func (f *fakeConsul) Checks(ctx context.Context) (map[string]*consul.AgentCheck, error) {
	f.mu.Lock()
	if f.checksHang {
		f.mu.Unlock()
		<-ctx.Done()
		return nil, ctx.Err()
	}
	defer f.mu.Unlock()
	if f.checksErr != nil {
		return nil, f.checksErr
	}
	out := map[string]*consul.AgentCheck{}
	for sid, c := range f.checks {
		if c == nil {
			continue
		}
		ac := &consul.AgentCheck{Node: "n1", CheckID: c.CheckID, Name: c.Name, Status: consul.HealthCritical,
			Notes: c.Notes, ServiceID: sid, ServiceName: f.services[sid].Service}
		if c.Status != "" {
			ac.Status = c.Status
		}
		if st, ok := f.checkState[sid]; ok {
			ac.Status, ac.Output = st[0], st[1]
		}
		out[c.CheckID] = ac
	}
	return out, nil
}

func (f *fakeConsul) setCheck(serviceID, status, output string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.checkState == nil {
		f.checkState = map[string][2]string{}
	}
	f.checkState[serviceID] = [2]string{status, output}
}

func (f *fakeConsul) setHealth(key string, entries ...*consul.ServiceEntry) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.health[key] = entries
	f.healthIndex[key] = max(f.healthIndex[key], 1) + 1
	if f.wake != nil {
		close(f.wake)
	}
	f.wake = make(chan struct{})
}

func (f *fakeConsul) put(id string, s *consul.AgentService) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s.ID = id
	f.services[id] = s
}

func (f *fakeConsul) ids() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Sorted(maps.Keys(f.services))
}

func (f *fakeConsul) counts() (registers, deregisters int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.registers), len(f.deregisters)
}

// entry, nsEntry and foreignEntry: see peerstest.
func entry(addr string) *consul.ServiceEntry        { return peerstest.Entry(addr) }
func nsEntry(ns, addr string) *consul.ServiceEntry  { return peerstest.NamespaceEntry(ns, addr) }
func foreignEntry(addr string) *consul.ServiceEntry { return peerstest.ForeignEntry(addr) }

// --- Nomad ---

// fakeNomad answers NodeAllocations from a fixed list once, then blocks.
type fakeNomad struct {
	allocs []*napi.Allocation
}

func (f *fakeNomad) NodeAllocations(ctx context.Context, _ string, waitIndex uint64, _ time.Duration) ([]*napi.Allocation, uint64, error) {
	if waitIndex > 0 {
		<-ctx.Done()
		return nil, 0, ctx.Err()
	}
	return f.allocs, 10, nil
}

func (f *fakeNomad) LocalNodeID(context.Context) (string, error) { return "node-1", nil }

// --- IPAM ---

type fakeIPAM struct {
	mu    sync.Mutex
	calls int
	err   error
}

func (f *fakeIPAM) ReconcileWithDocker(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	return f.err
}

func (f *fakeIPAM) Counts() (int, int) { return 3, 1 }
