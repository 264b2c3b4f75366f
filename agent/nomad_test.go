package agent

import (
	"github.com/v6reg/v6reg/desired"
	"github.com/v6reg/v6reg/peers"

	"github.com/v6reg/v6reg/registrar"

	"encoding/json"
	"slices"
	"testing"

	"github.com/v6reg/v6reg/docker"

	"github.com/v6reg/v6reg/internal/testwait"
	"github.com/v6reg/v6reg/nomad"
	"github.com/v6reg/v6reg/nomad/nomadtest"

	"github.com/docker/docker/api/types/container"
	napi "github.com/hashicorp/nomad/api"

	"github.com/v6reg/v6reg/policies"
)

func inspectSummary(t *testing.T, name string) container.Summary {
	var list []container.InspectResponse
	if err := json.Unmarshal(nomadtest.Fixture(t, name), &list); err != nil || len(list) != 1 {
		t.Fatalf("decoding %s: %v (%d containers)", name, err, len(list))
	}
	in := list[0]
	return container.Summary{
		ID: in.ID, Names: []string{in.Name}, Labels: in.Config.Labels, State: "running",
		NetworkSettings: &container.NetworkSettingsSummary{Networks: in.NetworkSettings.Networks},
	}
}

func TestRecordedContainersMatchAllocations(t *testing.T) {
	var allocs []*napi.Allocation
	if err := json.Unmarshal(nomadtest.Fixture(t, "node-allocations.running.json"), &allocs); err != nil {
		t.Fatal(err)
	}
	src := nomad.NewSource(&fakeNomad{}, nomadtest.FixtureNode, quietLog())
	src.Store(allocs, 1)
	d := &fakeDocker{list: []container.Summary{inspectSummary(t, "docker-inspect.cerebro.json"), inspectSummary(t, "docker-inspect.worker.json")}}
	cs, err := docker.List(t.Context(), d, testNetwork)
	if err != nil {
		t.Fatal(err)
	}
	in := testInput(cs...)
	in.Operator = policies.DefaultOperator()
	in.Lookup = src.Lookup
	out := desired.Build(in)
	if err := out.Firewall.Validate(); err != nil {
		t.Fatal(err)
	}
	if len(out.Workloads) != 2 {
		t.Fatalf("workloads = %+v", out.Workloads)
	}
	byTask := map[string]desired.Workload{}
	for _, w := range out.Workloads {
		byTask[w.Task] = w
	}
	cb, wk := byTask["cerebro"], byTask["worker"]
	if cb.Container.AllocID != nomadtest.FixtureCerebro || cb.Container.Addr.String() != "fd00:f1::1:0:0:3" || cb.Closed || cb.Job != "p-es-cerebro" || cb.Group != "cerebro" {
		t.Errorf("cerebro = %+v", cb)
	}
	if wk.Container.AllocID != nomadtest.FixtureWorker || wk.Container.Addr.String() != "fd00:f1::1:0:0:4" || wk.Closed || wk.Group != "worker" {
		t.Errorf("worker = %+v", wk)
	}
	if len(cb.Policy.Services) != 1 || cb.Policy.Services[0].Name != "cerebro" || cb.Policy.Services[0].Port != 9000 {
		t.Errorf("cerebro services = %+v", cb.Policy.Services)
	}
	if len(wk.Policy.Egress) != 1 || len(wk.Policy.Egress[0].Services) != 1 || wk.Policy.Egress[0].Services[0] != "postgres" {
		t.Errorf("worker egress = %+v", wk.Policy.Egress)
	}
	if !out.PeerKeys[peers.ServiceKey("default", "postgres")] || len(out.PeerKeys) != 1 {
		t.Errorf("peer keys = %v", out.PeerKeys)
	}
	var cerebroReg *registrar.Registration
	for _, r := range out.Registrations {
		if r.Name == "cerebro" {
			cerebroReg = &r
		}
	}
	if cerebroReg == nil || cerebroReg.Check.Kind != "http" || cerebroReg.Meta[registrar.MetaTask] != "cerebro" || cerebroReg.Meta[registrar.MetaAlloc] != nomadtest.FixtureCerebro {
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
	rp := nomadtest.New(t)
	r := newRig(t, nomad.Client{C: rp.API(t)})
	r.agent.o.Operator = policies.DefaultOperator()
	r.agent.operator = policies.DefaultOperator()
	r.consul.health["postgres"] = nil
	r.docker.set(inspectSummary(t, "docker-inspect.cerebro.json"), inspectSummary(t, "docker-inspect.worker.json"))
	defer r.run(t)()
	cerebroID := "v6reg-n1-ff6736ad00b9-cerebro-9000"
	testwait.Until(t, "cerebro and two v6reg-jobs in consul", func() bool {
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
	rp.Set("node-allocations.stopping.json", nomadtest.FixtureIndex(t, "node-allocations.blocking-after-stop.headers"))
	testwait.Until(t, "the registrations to go", func() bool { return len(r.consul.ids()) == 0 })
	st := r.fw.states()
	last := st[len(st)-1]
	if len(last.Containers) != 2 || len(last.Containers[0].Egress)+len(last.Containers[1].Egress) == 0 {
		t.Errorf("firewall while stopping = %+v, want both containers with their rules", last.Containers)
	}
}
