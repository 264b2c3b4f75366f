package agent

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestStatusAPI(t *testing.T) {
	r := explainRig(t)
	srv := httptest.NewServer(r.agent.APIHandler())
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
	var s Snapshot
	if err := json.Unmarshal(body, &s); err != nil {
		t.Fatal(err)
	}
	if s.Node != "n1" || s.Prefix != testPrefix.String() || s.Nomad != "disabled" || time.Since(s.At) > time.Minute {
		t.Errorf("snapshot header = %+v", s)
	}
	if len(s.Containers) != 4 {
		t.Fatalf("containers = %+v", s.Containers)
	}
	byName := map[string]ContainerState{}
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
	if len(bad.Services) != 1 || bad.Services[0].Name != policyErrorService || bad.Services[0].Check != "critical" {
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

func TestListenAPIIsRootOnly(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run")
	path := filepath.Join(dir, "api.sock")
	// A stale socket of a previous run is replaced.
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := ListenAPI(path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode = %v, want a socket with 0600", fi.Mode())
	}
	r := explainRig(t)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); Serve(ctx, l, r.agent.APIHandler(), quietLog()) }()
	c := http.Client{Transport: &http.Transport{DialContext: func(ctx2 context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx2, "unix", path)
	}}}
	resp, err := c.Get("http://v6reg/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("status over the socket = %d", resp.StatusCode)
	}
	cancel()
	wait(t, done, "Serve to return")
}
