package agent

import (
	"github.com/v6reg/v6reg/api"
	"github.com/v6reg/v6reg/registrar"

	"encoding/json"
	"errors"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	consul "github.com/hashicorp/consul/api"
)

func TestStatusAPI(t *testing.T) {
	r := explainRig(t)
	srv := httptest.NewServer(api.Handler(r.agent))
	defer srv.Close()
	if err := r.agent.reconcile(t.Context(), false); err != nil {
		t.Fatal(err)
	}
	resp, err := srv.Client().Get(srv.URL + "/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode != 200 || ct != "application/json" {
		t.Fatalf("status = %d %s", resp.StatusCode, ct)
	}
	body, _ := io.ReadAll(resp.Body)
	// The shape v6reg status reads, checked on the raw JSON.
	var raw map[string]any
	if err := json.Unmarshal(body, &raw); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"node", "prefix", "at", "nomad", "containers"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("status JSON lacks %q: %s", k, body)
		}
	}
	var s api.Snapshot
	if err := json.Unmarshal(body, &s); err != nil {
		t.Fatal(err)
	}
	if s.Node != "n1" || s.Prefix != testPrefix.String() || s.Nomad != "disabled" || time.Since(s.At) > time.Minute {
		t.Errorf("snapshot header = %+v", s)
	}
	if len(s.Containers) != 4 {
		t.Fatalf("containers = %+v", s.Containers)
	}
	byName := map[string]api.ContainerState{}
	for _, c := range s.Containers {
		byName[c.Name] = c
	}
	web := byName["web"]
	if web.ID != cid("aa01") || web.Address != addrN(10).String() || web.Source != "labels" || web.Closed || web.Namespace != "default" {
		t.Errorf("web = %+v", web)
	}
	if len(web.Ingress) != 2 || web.Ingress[0].Rule != "tcp/80,443 from @traefik" || len(web.Ingress[0].Prefixes) != 2 {
		t.Errorf("web ingress = %+v (want the resolved @traefik, IPv4 included as written)", web.Ingress)
	}
	if len(web.Egress) != 1 || len(web.Egress[0].Services) != 1 || web.Egress[0].Services[0] != "postgres" {
		t.Errorf("web egress = %+v", web.Egress)
	}
	if web.Drops == nil || web.Drops.IngressPackets == 0 {
		t.Errorf("web drops = %+v, want the firewall's counters", web.Drops)
	}
	bad := byName["bad"]
	if !bad.Closed || len(bad.Errors) == 0 || !strings.Contains(bad.Reason, "policy refused") || len(bad.Ingress) != 0 {
		t.Errorf("bad = %+v", bad)
	}
	if len(bad.Services) != 1 || bad.Services[0].Name != registrar.PolicyErrorService || bad.Services[0].Check != "critical" {
		t.Errorf("bad services = %+v", bad.Services)
	}
}

func TestHealthz(t *testing.T) {
	r := explainRig(t)
	srv := httptest.NewServer(r.agent.MetricsHandler())
	defer srv.Close()
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := srv.Client().Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/healthz"); code != 503 || !strings.Contains(body, "no reconcile yet") {
		t.Errorf("before any reconcile: %d %q", code, body)
	}
	if err := r.agent.reconcile(t.Context(), false); err != nil {
		t.Fatal(err)
	}
	if code, body := get("/healthz"); code != 200 || !strings.HasPrefix(body, "ok: last reconcile") {
		t.Errorf("after a reconcile: %d %q", code, body)
	}
	r.fw.mu.Lock()
	r.fw.err = errors.New("netlink: operation not permitted")
	r.fw.mu.Unlock()
	if err := r.agent.reconcile(t.Context(), false); err == nil {
		t.Fatal("reconcile with a broken firewall succeeded")
	}
	if code, body := get("/healthz"); code != 503 || !strings.Contains(body, "operation not permitted") {
		t.Errorf("with a firewall error: %d %q", code, body)
	}
	code, body := get("/metrics")
	if code != 200 || !strings.Contains(body, "v6reg_containers 4") || !strings.Contains(body, `v6reg_errors_total{kind="netlink"} 1`) ||
		!strings.Contains(body, "v6reg_containers_policy_errors 1") {
		t.Errorf("metrics = %d, missing gauges:\n%s", code, grepLines(body, "v6reg_"))
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// healthRig is a node with two services on one container (an HTTP one
// whose check passes, a TCP one with no listener) and a container whose
// policy is refused.
func healthRig(t *testing.T) (*rig, *httptest.Server) {
	t.Helper()
	r := newRig(t, nil)
	r.docker.set(
		summary(cid("aa01"), "web", addrN(10), map[string]string{
			"v6reg.job": "p-web", "v6reg.ingress": "tcp/80,81 from @traefik", "v6reg.services": "web:80:http, api:81:tcp",
		}),
		summary(cid("bb01"), "bad", addrN(11), map[string]string{"v6reg.ingress": "tcp/80 form @traefik"}),
	)
	if err := r.agent.reconcile(t.Context(), false); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(api.Handler(r.agent))
	t.Cleanup(srv.Close)
	return r, srv
}

func getStatus(t *testing.T, srv *httptest.Server) api.Snapshot {
	t.Helper()
	resp, err := srv.Client().Get(srv.URL + "/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var s api.Snapshot
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		t.Fatal(err)
	}
	return s
}

// servicesByName lists every registration of the snapshot by service name.
func servicesByName(s api.Snapshot) map[string]api.ServiceState {
	out := map[string]api.ServiceState{}
	for _, c := range s.Containers {
		for _, sv := range c.Services {
			out[sv.Name] = sv
		}
	}
	return out
}

func TestStatusHealth(t *testing.T) {
	r, srv := healthRig(t)
	webID := registrar.ServiceID("v6reg", "n1", cid("aa01"), "web", 80)
	apiID := registrar.ServiceID("v6reg", "n1", cid("aa01"), "api", 81)
	refused := "dial tcp [" + addrN(10).String() + "]:81: connect: connection refused"
	r.consul.setCheck(webID, "passing", "HTTP GET http://["+addrN(10).String()+"]:80/: 200 OK Output: hello")
	r.consul.setCheck(apiID, "critical", refused)

	s := getStatus(t, srv)
	if s.HealthErr != "" {
		t.Errorf("health error %q with a Consul that answers", s.HealthErr)
	}
	got := servicesByName(s)
	if sv := got["web"]; sv.Health != "passing" || !strings.Contains(sv.Output, "200 OK") || sv.Check != "http" {
		t.Errorf("web = %+v, want passing with Consul's output", sv)
	}
	if sv := got["api"]; sv.Health != "critical" || sv.Output != refused || sv.Check != "tcp" {
		t.Errorf("api = %+v, want critical with output %q", sv, refused)
	}
	// The refused policy's check is critical from its registration; its
	// notes (the policy error) stand in for the output a TTL check lacks.
	if sv := got[registrar.PolicyErrorService]; sv.Health != "critical" || !strings.Contains(sv.Output, "refused this container's policy") ||
		!strings.Contains(sv.Output, "form") {
		t.Errorf("%s = %+v, want critical with the policy error", registrar.PolicyErrorService, sv)
	}
	if sv := got[registrar.JobsService]; sv.Health != "" || sv.Output != "" {
		t.Errorf("%s has no check, yet health %q output %q", registrar.JobsService, sv.Health, sv.Output)
	}
	// The live view is per request: the stored snapshot stays as the
	// reconcile left it.
	for _, c := range r.agent.Snapshot().Containers {
		for _, sv := range c.Services {
			if sv.Health != "" || sv.Output != "" {
				t.Errorf("stored snapshot changed by a status request: %+v", sv)
			}
		}
	}

	// A check that Consul does not hold (registration lost, or not yet
	// made) is unknown, and says so.
	r.consul.mu.Lock()
	delete(r.consul.checks, apiID)
	r.consul.mu.Unlock()
	if sv := servicesByName(getStatus(t, srv))["api"]; sv.Health != api.HealthUnknown || !strings.Contains(sv.Output, "no check") {
		t.Errorf("api without a check in Consul = %+v, want unknown", sv)
	}
}

func TestStatusHealthConsulDown(t *testing.T) {
	r, srv := healthRig(t)
	r.consul.mu.Lock()
	r.consul.checksErr = errors.New("connection refused")
	r.consul.mu.Unlock()
	s := getStatus(t, srv)
	if !strings.Contains(s.HealthErr, "connection refused") {
		t.Errorf("health error = %q, want Consul's error", s.HealthErr)
	}
	for name, sv := range servicesByName(s) {
		want := api.HealthUnknown
		if sv.Check == "" {
			want = "" // no check: nothing to be unknown about
		}
		if sv.Health != want {
			t.Errorf("%s health %q while Consul does not answer, want %q", name, sv.Health, want)
		}
	}
}

func TestStatusHealthConsulFrozen(t *testing.T) {
	r, srv := healthRig(t)
	r.consul.mu.Lock()
	r.consul.checksHang = true
	r.consul.mu.Unlock()
	start := time.Now()
	s := getStatus(t, srv)
	took := time.Since(start)
	// The bound, plus slack for a loaded machine; never Consul's own wait.
	if took < consulHealthTimeout || took > consulHealthTimeout+2*time.Second {
		t.Errorf("status took %s with a frozen Consul, want about %s", took, consulHealthTimeout)
	}
	if !strings.Contains(s.HealthErr, "deadline exceeded") {
		t.Errorf("health error = %q, want the timeout", s.HealthErr)
	}
	if sv := servicesByName(s)["web"]; sv.Health != api.HealthUnknown {
		t.Errorf("web health %q with a frozen Consul, want unknown", sv.Health)
	}
}

func TestServiceHealthWorstCheckAndCut(t *testing.T) {
	checks := []*consul.AgentCheck{
		{CheckID: "a", Status: "passing", Output: "fine"},
		{CheckID: "b", Status: "warning", Output: "slow"},
		{CheckID: "_service_maintenance:x", Status: "critical", Notes: "maintenance mode"},
	}
	if h, out := serviceHealth("http", checks); h != "critical" || out != "maintenance mode" {
		t.Errorf("worst of passing, warning, critical = %q %q", h, out)
	}
	if h, out := serviceHealth("http", checks[:2]); h != "warning" || out != "slow" {
		t.Errorf("worst of passing, warning = %q %q", h, out)
	}
	long := strings.Repeat("é", maxCheckOutput) // 2 bytes each
	_, out := serviceHealth("tcp", []*consul.AgentCheck{{CheckID: "c", Status: "critical", Output: long}})
	if len(out) > maxCheckOutput || !strings.HasSuffix(out, " [...]") || !utf8.ValidString(out) {
		t.Errorf("long output cut to %d bytes, valid UTF-8 %v: ...%q", len(out), utf8.ValidString(out), out[max(0, len(out)-12):])
	}
}
