package agent

import (
	"github.com/v6reg/v6reg/registrar"

	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/v6reg/v6reg/internal/testwait"

	"github.com/v6reg/v6reg/nomad"
	"github.com/v6reg/v6reg/nomad/nomadtest"

	consul "github.com/hashicorp/consul/api"
	napi "github.com/hashicorp/nomad/api"

	"github.com/v6reg/v6reg/policies"
)

func TestKnownStateRoundTripAndCorruption(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, KnownFile)
	if k, err := loadKnown(path); k != nil || err != nil {
		t.Fatalf("missing file: %v, %v; want no state and no error (first start)", k, err)
	}
	want := knownState{
		Nomad: true, NomadIndex: 27, NomadAt: time.Date(2026, 12, 3, 9, 0, 0, 0, time.UTC),
		Allocs: []nomad.Alloc{{ID: "a1", Namespace: "default", Job: "j", Group: "g",
			JobMeta: map[string]string{"v6reg_egress": "tcp/443 to @internet"}, TaskMeta: map[string]map[string]string{"web": {"v6reg_services": "w:80"}}}},
		Peers:   map[string][]netip.Prefix{"service:pg": {netip.MustParsePrefix("fd00::5/128")}},
		SavedAt: time.Date(2026, 12, 3, 9, 0, 1, 0, time.UTC),
	}
	if err := saveKnown(path, want); err != nil {
		t.Fatal(err)
	}
	got, err := loadKnown(path)
	if err != nil || !reflect.DeepEqual(*got, want) {
		t.Fatalf("round trip: %+v, %v; want %+v", got, err, want)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600 (it holds the node's policies)", fi.Mode().Perm())
	}
	good, _ := os.ReadFile(path)
	for _, c := range []struct {
		name string
		edit func([]byte) []byte
		says string
	}{
		{"truncated", func(b []byte) []byte { return b[:len(b)/2] }, "not JSON"},
		{"a byte of the state changed", func(b []byte) []byte {
			return []byte(strings.Replace(string(b), `"nomad_index":27`, `"nomad_index":28`, 1))
		}, "checksum mismatch"},
		{"another format", func(b []byte) []byte {
			return []byte(strings.Replace(string(b), `"format":1`, `"format":9`, 1))
		}, "format 9"},
	} {
		if err := os.WriteFile(path, c.edit(slices.Clone(good)), 0o600); err != nil {
			t.Fatal(err)
		}
		k, err := loadKnown(path)
		var ce *CorruptKnownError
		if k != nil || !errors.As(err, &ce) || !strings.Contains(err.Error(), c.says) {
			t.Fatalf("%s: %v, %v; want a CorruptKnownError saying %q", c.name, k, err, c.says)
		}
		if ce.Kept == "" {
			t.Fatalf("%s: the corrupt file was not kept aside", c.name)
		}
		if _, err := os.Stat(ce.Kept); err != nil {
			t.Fatalf("%s: kept copy: %v", c.name, err)
		}
		if _, err := os.Stat(path); !os.IsNotExist(err) {
			t.Fatalf("%s: the corrupt file is still in place: %v", c.name, err)
		}
		os.Remove(ce.Kept)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("left behind: %v", ents)
	}
}

// TestRestartWhileNomadAndConsulDown: the agent runs with the recorded
// Nomad node (replayed through the real client) and a Consul peer set;
// then it restarts while neither answers. The restarted agent must keep
// every container's policy and registration from the persisted copy (not
// close them after a wait), and converge when Nomad answers.
func TestRestartWhileNomadAndConsulDown(t *testing.T) {
	t.Setenv("NOMAD_TOKEN", "")
	state := filepath.Join(t.TempDir(), KnownFile)
	rp := nomadtest.New(t)
	r := newRig(t, nomad.Client{C: rp.API(t)})
	pg := netip.MustParsePrefix("fd00:1::5/128")
	r.consul.health["postgres"] = []*consul.ServiceEntry{entry(pg.Addr().String())}
	r.docker.set(inspectSummary(t, "docker-inspect.cerebro.json"), inspectSummary(t, "docker-inspect.worker.json"))
	start := func(r *rig) (stop func()) {
		r.agent.o.StateFile = state
		r.agent.o.Operator = policies.DefaultOperator()
		r.agent.operator = policies.DefaultOperator()
		return r.run(t)
	}
	stop := start(r)
	testwait.Until(t, "the policies persisted", func() bool {
		k, _ := loadKnown(state)
		return k != nil && k.Nomad && len(k.Allocs) == 3 && slices.Equal(k.Peers["service:default/postgres"], []netip.Prefix{pg})
	})
	before := r.fw.states()[len(r.fw.states())-1]
	regs := r.consul.ids()
	if len(regs) != 3 {
		t.Fatalf("registrations before the restart: %v", regs)
	}
	stop()

	// Nomad and Consul's catalog stop answering; the agent restarts.
	rp.Stop()
	r2 := newRig(t, nomad.Client{C: rp.API(t)})
	r2.docker = r.docker
	r2.agent.o.Docker = r.docker
	r2.consul = r.consul // the local agent keeps the registrations
	r2.agent.o.Consul = r.consul
	r2.agent.reg = registrar.New(r.consul, "v6reg", "n1")
	r2.agent.peers = r2.agent.newPeerWatches()
	r.consul.mu.Lock()
	r.consul.healthErr = errors.New("connection refused")
	r.consul.mu.Unlock()
	t0 := time.Now()
	stop = start(r2)
	defer func() { stop() }()
	if d := time.Since(t0); d > 5*time.Second {
		t.Errorf("ready after %s: with a persisted copy the agent must not wait for Nomad", d)
	}
	after := r2.fw.states()[0]
	if !reflect.DeepEqual(after.Containers, before.Containers) || !reflect.DeepEqual(after.PeerSets, before.PeerSets) {
		t.Fatalf("first apply after the restart differs from the state in force:\n got %+v\nwant %+v", after, before)
	}
	if _, deregs := r.consul.counts(); deregs != 0 {
		t.Fatalf("%d registrations removed while Nomad was down", deregs)
	}
	s := r2.agent.Snapshot()
	if !strings.Contains(s.Nomad, "persisted") {
		t.Errorf("status says nomad %q; want it to say the persisted allocations are in use", s.Nomad)
	}
	for _, c := range s.Containers {
		if c.Closed {
			t.Errorf("container %s closed after the restart: %s", c.Name, c.Reason)
		}
	}
	// Past the old 15 s wait and a few reconciles: still nothing closed.
	for range 3 {
		r2.agent.Trigger("test")
	}
	time.Sleep(200 * time.Millisecond)
	if _, deregs := r.consul.counts(); deregs != 0 {
		t.Fatalf("%d registrations removed while Nomad was down", deregs)
	}

	// Nomad answers, with the allocations stopping: the agent converges.
	rp.Set("node-allocations.stopping.json", nomadtest.FixtureIndex(t, "node-allocations.blocking-after-stop.headers"))
	rp.Start(rp.Addr)
	testwait.Until(t, "the registrations to go once Nomad answers", func() bool { return len(r.consul.ids()) == 0 })
	testwait.Until(t, "the status to say nomad ok", func() bool { return r2.agent.Snapshot().Nomad == "ok" })
}

// A container whose allocation the persisted copy does not hold stays
// closed while Nomad is down, as it did without one.
func TestRestartNeverSeenAllocationStaysClosed(t *testing.T) {
	state := filepath.Join(t.TempDir(), KnownFile)
	if err := saveKnown(state, knownState{Nomad: true, NomadIndex: 5}); err != nil {
		t.Fatal(err)
	}
	r := newRig(t, &downNomad{})
	r.agent.o.StateFile = state
	r.docker.set(inspectSummary(t, "docker-inspect.worker.json"))
	defer r.run(t)()
	s := r.agent.Snapshot()
	if len(s.Containers) != 1 || !s.Containers[0].Closed {
		t.Fatalf("containers %+v: the unknown allocation's container must stay closed", s.Containers)
	}
}

// A corrupt persisted copy is reported (status, metric), kept aside, and
// the agent starts as without one.
func TestCorruptKnownStateReported(t *testing.T) {
	state := filepath.Join(t.TempDir(), KnownFile)
	if err := os.WriteFile(state, []byte(`{"format":1,"sha256":"00","state":{}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	r := newRig(t, nil)
	r.agent.o.StateFile = state
	r.agent.loadKnown()
	if err := r.agent.reconcile(t.Context(), false); err != nil {
		t.Fatal(err)
	}
	if s := r.agent.Snapshot(); !strings.Contains(s.StateErr, "checksum mismatch") || !strings.Contains(s.StateErr, ".corrupt-") {
		t.Fatalf("status state_error = %q; want the checksum mismatch and where the file was kept", s.StateErr)
	}
}

// downNomad never answers: every call fails as a refused connection.
type downNomad struct{}

func (downNomad) NodeAllocations(_ context.Context, _ string, _ uint64, _ time.Duration) ([]*napi.Allocation, uint64, error) {
	return nil, 0, errors.New("connection refused")
}
func (downNomad) LocalNodeID(context.Context) (string, error) {
	return "", errors.New("connection refused")
}
