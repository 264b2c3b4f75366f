package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	nomad "github.com/hashicorp/nomad/api"

	"github.com/v6reg/v6reg/policies"
)

// fixtures are the responses recorded from a real Nomad agent (see the
// README there): they are the contract of the Nomad source.
const fixtures = "../../shared/fixtures/nomad"

const (
	fixtureNode    = "f040012b-0fe2-51b2-bd88-cf7754ccb3dd"
	fixtureWorker  = "c3cc5a34-9704-946d-259f-aa915569ff21"
	fixtureCerebro = "e91ea7ef-bbc8-da92-3308-4473535245fc"
	fixtureCereb2  = "eccd0fba-402e-5c27-839e-9090d510ffb1"
)

func fixture(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(fixtures, name))
	if err != nil {
		t.Skipf("recorded Nomad fixtures not available: %v", err)
	}
	return b
}

// fixtureIndex reads X-Nomad-Index from a recorded .headers file.
func fixtureIndex(t *testing.T, name string) uint64 {
	t.Helper()
	sc := bufio.NewScanner(strings.NewReader(string(fixture(t, name))))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "X-Nomad-Index: "); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("%s has no X-Nomad-Index", name)
	return 0
}

// nomadReplay serves the recorded responses. The node's allocation list is
// a blocking query: a request whose index is the current one waits until
// the test moves the replay to the next recording.
type nomadReplay struct {
	t       *testing.T
	self    []byte
	queries chan string // the raw query of every allocation-list request

	mu      sync.Mutex
	body    []byte
	index   uint64
	changed chan struct{} // closed when body/index change

	addr string
	srv  *httptest.Server
}

func newNomadReplay(t *testing.T) *nomadReplay {
	r := &nomadReplay{t: t, self: fixture(t, "agent-self.json"), queries: make(chan string, 100), changed: make(chan struct{})}
	r.set("node-allocations.running.json", fixtureIndex(t, "node-allocations.running.headers"))
	r.start("127.0.0.1:0")
	t.Cleanup(func() { r.srv.Close() })
	return r
}

func (r *nomadReplay) set(file string, index uint64) {
	b := fixture(r.t, file)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.body, r.index = b, index
	close(r.changed)
	r.changed = make(chan struct{})
}

func (r *nomadReplay) start(addr string) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		r.t.Fatalf("listening on %s: %v", addr, err)
	}
	r.addr = l.Addr().String()
	r.srv = httptest.NewUnstartedServer(http.HandlerFunc(r.serve))
	r.srv.Listener = l
	r.srv.Start()
}

// stop makes Nomad go away: the listener closes (connections are refused)
// and the pending blocking query is cut.
func (r *nomadReplay) stop() {
	// The listener first: a retry must not slip in between cutting the
	// connections and closing (Close waits for active requests).
	r.srv.Listener.Close()
	r.srv.CloseClientConnections()
	r.srv.Close()
}

func (r *nomadReplay) serve(w http.ResponseWriter, req *http.Request) {
	switch req.URL.Path {
	case "/v1/agent/self":
		w.Header().Set("Content-Type", "application/json")
		w.Write(r.self)
	case "/v1/node/" + fixtureNode + "/allocations":
		r.queries <- req.URL.RawQuery
		want, _ := strconv.ParseUint(req.URL.Query().Get("index"), 10, 64)
		for {
			r.mu.Lock()
			body, index, changed := r.body, r.index, r.changed
			r.mu.Unlock()
			if want < index {
				w.Header().Set("Content-Type", "application/json")
				w.Header().Set("X-Nomad-Index", strconv.FormatUint(index, 10))
				w.Header().Set("X-Nomad-Knownleader", "true")
				w.Write(body)
				return
			}
			select {
			case <-changed:
			case <-req.Context().Done():
				return
			}
		}
	default:
		http.Error(w, "not recorded: "+req.URL.String(), http.StatusNotFound)
	}
}

func (r *nomadReplay) client(t *testing.T) NomadClient {
	c, err := nomad.NewClient(&nomad.Config{Address: "http://" + r.addr})
	if err != nil {
		t.Fatal(err)
	}
	return NomadClient{C: c}
}

func TestNomadSourceReplaysRecordedNode(t *testing.T) {
	t.Setenv("NOMAD_TOKEN", "")
	t.Setenv("NOMAD_NAMESPACE", "")
	t.Setenv("NOMAD_REGION", "")
	r := newNomadReplay(t)
	src := newNomadSource(r.client(t), "", testLog(t))
	src.retryMin, src.retryMax = 10*time.Millisecond, 50*time.Millisecond
	triggers := make(chan string, 100)
	errs := make(chan struct{}, 100)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		src.run(ctx, func(s string) { triggers <- s }, func() {
			select {
			case errs <- struct{}{}:
			default: // retries during the outage
			}
		})
	}()
	defer func() { cancel(); wait(t, done, "the nomad source to stop") }()

	running := fixtureIndex(t, "node-allocations.running.headers")
	if q := wait(t, r.queries, "the first allocation query"); strings.Contains(q, "index=") && !strings.Contains(q, "index=0") {
		t.Errorf("first query %q carries an index", q)
	}
	wait(t, triggers, "a trigger after the first answer")
	if src.nodeID != fixtureNode {
		t.Fatalf("node ID %q, want %q from agent-self", src.nodeID, fixtureNode)
	}
	// Merged meta per task of the recorded job.
	type want struct{ ingress, egress, services string }
	check := func(alloc, task string, w want, levels [3]policies.Level) {
		t.Helper()
		a, ok := src.lookup(alloc)
		if !ok {
			t.Fatalf("allocation %s unknown", alloc)
		}
		if a.Job != "p-es-cerebro" || a.Namespace != "default" || a.Stopping {
			t.Errorf("alloc = %+v", a)
		}
		tm, ok := a.TaskMeta[task]
		if !ok {
			t.Fatalf("alloc %s has no task %q: %v", alloc, task, a.TaskMeta)
		}
		m := policies.FromNomad(a.JobMeta, a.GroupMeta, tm)
		if m.Ingress.Text != w.ingress || m.Egress.Text != w.egress || m.Services.Text != w.services {
			t.Errorf("%s merged meta = ingress %q egress %q services %q, want %+v", task, m.Ingress.Text, m.Egress.Text, m.Services.Text, w)
		}
		if got := [3]policies.Level{m.Ingress.Level, m.Egress.Level, m.Services.Level}; got != levels {
			t.Errorf("%s levels = %v, want %v", task, got, levels)
		}
		if errs := m.Errors(); len(errs) != 0 {
			t.Errorf("%s meta errors: %v", task, errs)
		}
	}
	cerebro := want{"tcp/9000 from @traefik, @monitoring; icmp from @ops", "tcp/443 to @internet; udp/53 to @dns", "cerebro:9000:http"}
	check(fixtureCerebro, "cerebro", cerebro, [3]policies.Level{policies.LevelGroup, policies.LevelJob, policies.LevelTask})
	check(fixtureCereb2, "cerebro", cerebro, [3]policies.Level{policies.LevelGroup, policies.LevelJob, policies.LevelTask})
	check(fixtureWorker, "worker", want{"", "tcp/5432 to service:postgres", ""}, [3]policies.Level{0, policies.LevelGroup, 0})
	if a, _ := src.lookup(fixtureCerebro); a.GroupMeta["v6reg.ingress"] == "" || a.Group != "cerebro" {
		t.Errorf("group cerebro's map-form meta not kept as written: %+v", a.GroupMeta)
	}

	// The next query blocks on the index of the last answer.
	if q := wait(t, r.queries, "the blocking query"); !strings.Contains(q, "index="+strconv.FormatUint(running, 10)) {
		t.Errorf("blocking query %q does not pass index=%d", q, running)
	}

	// Nomad goes away: the last known allocations stay, the state says so.
	r.stop()
	wait(t, errs, "the source to notice the outage")
	if _, ok := src.lookup(fixtureCerebro); !ok {
		t.Errorf("allocation forgotten while Nomad is unreachable")
	}
	synced, _, err := src.state()
	if !synced || err == nil {
		t.Errorf("state = synced %v err %v, want synced and an error", synced, err)
	}
	var s Snapshot
	s.fill(Desired{}, src)
	if !strings.HasPrefix(s.Nomad, "unreachable (last answer") {
		t.Errorf("status says nomad %q", s.Nomad)
	}
	// It comes back, and in the meantime the job was stopped.
	stopIndex := fixtureIndex(t, "node-allocations.blocking-after-stop.headers")
	r.set("node-allocations.stopping.json", stopIndex)
	r.start(r.addr)
	if q := wait(t, triggers, "a trigger after Nomad came back"); !strings.Contains(q, "nomad") {
		t.Errorf("trigger %q", q)
	}
	if _, _, err := src.state(); err != nil {
		t.Errorf("still unreachable after recovery: %v", err)
	}
	for _, id := range []string{fixtureCerebro, fixtureCereb2, fixtureWorker} {
		if a, ok := src.lookup(id); !ok || !a.Stopping {
			t.Errorf("alloc %s = %+v %v, want stopping (DesiredStatus stop)", id, a, ok)
		}
	}
	drainQueries(r.queries, "index="+strconv.FormatUint(stopIndex, 10), t)

	// Later the allocations are complete: dropped.
	r.set("node-allocations.stopped.json", fixtureIndex(t, "node-allocations.stopped.headers"))
	wait(t, triggers, "a trigger after the allocations completed")
	for _, id := range []string{fixtureCerebro, fixtureCereb2, fixtureWorker} {
		if _, ok := src.lookup(id); ok {
			t.Errorf("completed alloc %s still known", id)
		}
	}
}

// drainQueries waits for the query carrying want, dropping retries that
// came before it.
func drainQueries(ch chan string, want string, t *testing.T) {
	t.Helper()
	for {
		if q := wait(t, ch, "a query with "+want); strings.Contains(q, want) {
			return
		}
	}
}

// inspectSummary turns a recorded `docker inspect` into the summary the
// list call gives, so the recorded containers go through listContainers.
func inspectSummary(t *testing.T, name string) container.Summary {
	var list []container.InspectResponse
	if err := json.Unmarshal(fixture(t, name), &list); err != nil || len(list) != 1 {
		t.Fatalf("decoding %s: %v (%d containers)", name, err, len(list))
	}
	in := list[0]
	return container.Summary{
		ID: in.ID, Names: []string{in.Name}, Labels: in.Config.Labels, State: "running",
		NetworkSettings: &container.NetworkSettingsSummary{Networks: in.NetworkSettings.Networks},
	}
}

func TestRecordedContainersMatchAllocations(t *testing.T) {
	var allocs []*nomad.Allocation
	if err := json.Unmarshal(fixture(t, "node-allocations.running.json"), &allocs); err != nil {
		t.Fatal(err)
	}
	src := newNomadSource(&fakeNomad{}, fixtureNode, quietLog())
	src.store(allocs, 1)
	d := &fakeDocker{list: []container.Summary{inspectSummary(t, "docker-inspect.cerebro.json"), inspectSummary(t, "docker-inspect.worker.json")}}
	cs, err := listContainers(t.Context(), d, testNetwork)
	if err != nil {
		t.Fatal(err)
	}
	in := testInput(cs...)
	in.Operator = policies.DefaultOperator()
	in.Lookup = src.lookup
	out := build(in)
	if err := out.Firewall.Validate(); err != nil {
		t.Fatal(err)
	}
	if len(out.Workloads) != 2 {
		t.Fatalf("workloads = %+v", out.Workloads)
	}
	byTask := map[string]Workload{}
	for _, w := range out.Workloads {
		byTask[w.Task] = w
	}
	cb, wk := byTask["cerebro"], byTask["worker"]
	if cb.Container.AllocID != fixtureCerebro || cb.Container.Addr.String() != "fd00:f1::1:0:0:3" || cb.Closed || cb.Job != "p-es-cerebro" || cb.Group != "cerebro" {
		t.Errorf("cerebro = %+v", cb)
	}
	if wk.Container.AllocID != fixtureWorker || wk.Container.Addr.String() != "fd00:f1::1:0:0:4" || wk.Closed || wk.Group != "worker" {
		t.Errorf("worker = %+v", wk)
	}
	if len(cb.Policy.Services) != 1 || cb.Policy.Services[0].Name != "cerebro" || cb.Policy.Services[0].Port != 9000 {
		t.Errorf("cerebro services = %+v", cb.Policy.Services)
	}
	if len(wk.Policy.Egress) != 1 || len(wk.Policy.Egress[0].Services) != 1 || wk.Policy.Egress[0].Services[0] != "postgres" {
		t.Errorf("worker egress = %+v", wk.Policy.Egress)
	}
	if !out.PeerKeys["service:default/postgres"] || len(out.PeerKeys) != 1 {
		t.Errorf("peer keys = %v", out.PeerKeys)
	}
	var cerebroReg *Registration
	for _, r := range out.Registrations {
		if r.Name == "cerebro" {
			cerebroReg = &r
		}
	}
	if cerebroReg == nil || cerebroReg.Check.Kind != "http" || cerebroReg.Meta[metaTask] != "cerebro" || cerebroReg.Meta[metaAlloc] != fixtureCerebro {
		t.Errorf("cerebro registration = %+v", cerebroReg)
	}
	if cerebroReg != nil && !containsStr(cerebroReg.Tags, "e91ea7ef") {
		t.Errorf("tags %v lack the short alloc ID", cerebroReg.Tags)
	}
}

func containsStr(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// TestRunWithRecordedNomad runs the whole agent against the replayed Nomad
// and the recorded containers: the cerebro allocation's service is
// registered; when Nomad marks the allocations to stop, every registration
// goes while the firewall keeps the containers' rules (they still run).
func TestRunWithRecordedNomad(t *testing.T) {
	t.Setenv("NOMAD_TOKEN", "")
	rp := newNomadReplay(t)
	r := newRig(t, rp.client(t))
	r.agent.o.Operator = policies.DefaultOperator()
	r.agent.operator = policies.DefaultOperator()
	r.consul.health["postgres"] = nil
	r.docker.set(inspectSummary(t, "docker-inspect.cerebro.json"), inspectSummary(t, "docker-inspect.worker.json"))
	defer r.run(t)()
	cerebroID := "v6reg-n1-ff6736ad00b9-cerebro-9000"
	eventually(t, "cerebro and two v6reg-jobs in consul", func() bool {
		ids := r.consul.ids()
		return slices.Contains(ids, cerebroID) && len(ids) == 3
	})
	s := r.agent.Snapshot()
	if s.Nomad != "ok" || len(s.Containers) != 2 {
		t.Fatalf("snapshot = %+v", s)
	}
	for _, c := range s.Containers {
		if c.Closed || c.Job != "p-es-cerebro" || c.Source != "nomad" {
			t.Errorf("container %+v", c)
		}
	}
	rp.set("node-allocations.stopping.json", fixtureIndex(t, "node-allocations.blocking-after-stop.headers"))
	eventually(t, "the registrations to go", func() bool { return len(r.consul.ids()) == 0 })
	st := r.fw.states()
	last := st[len(st)-1]
	if len(last.Containers) != 2 || len(last.Containers[0].Egress)+len(last.Containers[1].Egress) == 0 {
		t.Errorf("firewall while stopping = %+v, want both containers with their rules", last.Containers)
	}
}

// TestNomadSourceStopsWhileNomadHangs: a Nomad that accepts the connection
// and never answers must not keep the source (and so Run) from stopping.
func TestNomadSourceStopsWhileNomadHangs(t *testing.T) {
	t.Setenv("NOMAD_TOKEN", "")
	hung := make(chan struct{}, 1)
	quit := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		select {
		case hung <- struct{}{}:
		default:
		}
		select {
		case <-r.Context().Done():
		case <-quit: // the test failed: let Close return
		}
	}))
	defer srv.Close()
	defer close(quit)
	c, err := nomad.NewClient(&nomad.Config{Address: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	for _, nodeID := range []string{"", fixtureNode} { // agent-self, then the allocation list
		src := newNomadSource(NomadClient{C: c}, nodeID, quietLog())
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		go func() {
			defer close(done)
			src.run(ctx, func(string) {}, func() { t.Error("an error counted at shutdown") })
		}()
		wait(t, hung, "the request to hang")
		cancel()
		wait(t, done, "the source to stop with node ID "+strconv.Quote(nodeID))
		drain(hung)
	}
}
