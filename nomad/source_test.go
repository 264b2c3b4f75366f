package nomad

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/v6reg/v6reg/internal/testlog"

	napi "github.com/hashicorp/nomad/api"

	"github.com/v6reg/v6reg/internal/testwait"
	"github.com/v6reg/v6reg/nomad/nomadtest"
	"github.com/v6reg/v6reg/policies"
)

func TestNomadSourceReplaysRecordedNode(t *testing.T) {
	t.Setenv("NOMAD_TOKEN", "")
	t.Setenv("NOMAD_NAMESPACE", "")
	t.Setenv("NOMAD_REGION", "")
	r := nomadtest.New(t)
	src := NewSource(Client{C: r.API(t)}, "", testlog.New(t))
	src.retryMin, src.retryMax = 10*time.Millisecond, 50*time.Millisecond
	triggers := make(chan string, 100)
	errs := make(chan struct{}, 100)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		src.Run(ctx, func(s string) { triggers <- s }, func() {
			select {
			case errs <- struct{}{}:
			default: // retries during the outage
			}
		})
	}()
	defer func() { cancel(); testwait.Recv(t, done, "the nomad source to stop") }()

	running := nomadtest.FixtureIndex(t, "node-allocations.running.headers")
	if q := testwait.Recv(t, r.Queries, "the first allocation query"); strings.Contains(q, "index=") && !strings.Contains(q, "index=0") {
		t.Errorf("first query %q carries an index", q)
	}
	testwait.Recv(t, triggers, "a trigger after the first answer")
	if src.nodeID != nomadtest.FixtureNode {
		t.Fatalf("node ID %q, want %q from agent-self", src.nodeID, nomadtest.FixtureNode)
	}
	// Merged meta per task of the recorded job.
	type want struct{ ingress, egress, services string }
	check := func(alloc, task string, w want, levels [3]policies.Level) {
		t.Helper()
		a, ok := src.Lookup(alloc)
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
	check(nomadtest.FixtureCerebro, "cerebro", cerebro, [3]policies.Level{policies.LevelGroup, policies.LevelJob, policies.LevelTask})
	check(nomadtest.FixtureCereb2, "cerebro", cerebro, [3]policies.Level{policies.LevelGroup, policies.LevelJob, policies.LevelTask})
	check(nomadtest.FixtureWorker, "worker", want{"", "tcp/5432 to service:postgres", ""}, [3]policies.Level{0, policies.LevelGroup, 0})
	if a, _ := src.Lookup(nomadtest.FixtureCerebro); a.GroupMeta["v6reg.ingress"] == "" || a.Group != "cerebro" {
		t.Errorf("group cerebro's map-form meta not kept as written: %+v", a.GroupMeta)
	}

	// The next query blocks on the index of the last answer.
	if q := testwait.Recv(t, r.Queries, "the blocking query"); !strings.Contains(q, "index="+strconv.FormatUint(running, 10)) {
		t.Errorf("blocking query %q does not pass index=%d", q, running)
	}

	// Nomad goes away: the last known allocations stay, the state says so.
	r.Stop()
	testwait.Recv(t, errs, "the source to notice the outage")
	if _, ok := src.Lookup(nomadtest.FixtureCerebro); !ok {
		t.Errorf("allocation forgotten while Nomad is unreachable")
	}
	synced, _, err := src.State()
	if !synced || err == nil {
		t.Errorf("state = synced %v err %v, want synced and an error", synced, err)
	}
	if st := src.Status(); !strings.HasPrefix(st, "unreachable (last answer") {
		t.Errorf("status says nomad %q", st)
	}
	// It comes back, and in the meantime the job was stopped.
	stopIndex := nomadtest.FixtureIndex(t, "node-allocations.blocking-after-stop.headers")
	r.Set("node-allocations.stopping.json", stopIndex)
	r.Start(r.Addr)
	if q := testwait.Recv(t, triggers, "a trigger after Nomad came back"); !strings.Contains(q, "nomad") {
		t.Errorf("trigger %q", q)
	}
	if _, _, err := src.State(); err != nil {
		t.Errorf("still unreachable after recovery: %v", err)
	}
	for _, id := range []string{nomadtest.FixtureCerebro, nomadtest.FixtureCereb2, nomadtest.FixtureWorker} {
		if a, ok := src.Lookup(id); !ok || !a.Stopping {
			t.Errorf("alloc %s = %+v %v, want stopping (DesiredStatus stop)", id, a, ok)
		}
	}
	drainQueries(r.Queries, "index="+strconv.FormatUint(stopIndex, 10), t)

	// Later the allocations are complete: dropped.
	r.Set("node-allocations.stopped.json", nomadtest.FixtureIndex(t, "node-allocations.stopped.headers"))
	testwait.Recv(t, triggers, "a trigger after the allocations completed")
	for _, id := range []string{nomadtest.FixtureCerebro, nomadtest.FixtureCereb2, nomadtest.FixtureWorker} {
		if _, ok := src.Lookup(id); ok {
			t.Errorf("completed alloc %s still known", id)
		}
	}
}

// drainQueries waits for the query carrying want, dropping retries that
// came before it.
func drainQueries(ch chan string, want string, t *testing.T) {
	t.Helper()
	for {
		if q := testwait.Recv(t, ch, "a query with "+want); strings.Contains(q, want) {
			return
		}
	}
}

// inspectSummary turns a recorded `docker inspect` into the summary the
// list call gives, so the recorded containers go through listContainers.
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
	c, err := napi.NewClient(&napi.Config{Address: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	for _, nodeID := range []string{"", nomadtest.FixtureNode} { // agent-self, then the allocation list
		src := NewSource(Client{C: c}, nodeID, testlog.Quiet())
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		go func() {
			defer close(done)
			src.Run(ctx, func(string) {}, func() { t.Error("an error counted at shutdown") })
		}()
		testwait.Recv(t, hung, "the request to hang")
		cancel()
		testwait.Recv(t, done, "the source to stop with node ID "+strconv.Quote(nodeID))
		testwait.Drain(hung)
	}
}
