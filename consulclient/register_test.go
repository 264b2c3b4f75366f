package consulclient

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"

	consul "github.com/hashicorp/consul/api"
)

// seen is one request a fake Consul agent received.
type seen struct {
	method, path, query, token, auth string
	body                             map[string]any
}

func recorder(t *testing.T) (http.Handler, func() []seen) {
	var mu sync.Mutex
	var got []seen
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		var body map[string]any
		if len(b) > 0 {
			if err := json.Unmarshal(b, &body); err != nil {
				t.Errorf("body %q: %v", b, err)
			}
		}
		user, pass, _ := r.BasicAuth()
		mu.Lock()
		got = append(got, seen{r.Method, r.URL.Path, r.URL.RawQuery, r.Header.Get("X-Consul-Token"), user + ":" + pass, body})
		mu.Unlock()
		if r.Method == http.MethodGet {
			_, _ = w.Write([]byte("{}"))
		}
	})
	return h, func() []seen { mu.Lock(); defer mu.Unlock(); return append([]seen(nil), got...) }
}

func httpReg() *consul.AgentServiceRegistration {
	return &consul.AgentServiceRegistration{ID: "v6reg-n1-aaaaaaaaaaaa-web-80", Name: "web", Address: "2001:db8::5", Port: 80,
		Tags: []string{"t"}, Meta: map[string]string{"k": "v"},
		Check: &consul.AgentServiceCheck{CheckID: "c", Name: "http", HTTP: "http://[2001:db8::5]:80/", Interval: "10s", Timeout: "2s"}}
}

// TestRegisterAsTheAPIClient: v6reg's own registration request is the
// API client's (method, path, query with the namespace, partition and
// datacenter, token, basic auth, body), plus DisableRedirects on an HTTP
// check and only there.
func TestRegisterAsTheAPIClient(t *testing.T) {
	t.Setenv("CONSUL_NAMESPACE", "team")
	t.Setenv("CONSUL_PARTITION", "p1")
	t.Setenv("CONSUL_HTTP_AUTH", "user:secret")
	h, got := recorder(t)
	srv := httptest.NewServer(h)
	defer srv.Close()
	c, err := New(srv.URL, "tok", "", "", "", "dc1")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Register(t.Context(), httpReg()); err != nil {
		t.Fatal(err)
	}
	if err := c.C.Agent().ServiceRegisterOpts(httpReg(), consul.ServiceRegisterOpts{ReplaceExistingChecks: true}.WithContext(t.Context())); err != nil {
		t.Fatal(err)
	}
	tcp := httpReg()
	tcp.Check = &consul.AgentServiceCheck{CheckID: "c", Name: "tcp", TCP: "[2001:db8::5]:80", Interval: "10s"}
	if err := c.Register(t.Context(), tcp); err != nil {
		t.Fatal(err)
	}
	s := got()
	if len(s) != 3 {
		t.Fatalf("%d requests", len(s))
	}
	ours, api := s[0], s[1]
	check, _ := ours.body["Check"].(map[string]any)
	if check["DisableRedirects"] != true {
		t.Errorf("HTTP check without DisableRedirects: %v", check)
	}
	delete(check, "DisableRedirects")
	if !reflect.DeepEqual(ours, api) {
		t.Errorf("v6reg's request\n%+v\nthe API client's\n%+v", ours, api)
	}
	for _, want := range []string{"replace-existing-checks=true", "ns=team", "partition=p1", "dc=dc1"} {
		if !strings.Contains(ours.query, want) {
			t.Errorf("query %q lacks %s", ours.query, want)
		}
	}
	if ours.token != "tok" || ours.auth != "user:secret" || ours.method != http.MethodPut || ours.path != "/v1/agent/service/register" {
		t.Errorf("request %+v", ours)
	}
	if c, _ := s[2].body["Check"].(map[string]any); c["DisableRedirects"] != nil || c["TCP"] == nil {
		t.Errorf("TCP check: %v, want no DisableRedirects", c)
	}
}

// TestRegisterOverUnixSocket: a unix:// Consul address registers too.
func TestRegisterOverUnixSocket(t *testing.T) {
	h, got := recorder(t)
	sock := filepath.Join(t.TempDir(), "consul.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go func() { _ = srv.Serve(ln) }()
	defer func() { _ = srv.Close() }()
	c, err := New("unix://"+sock, "", "", "", "", "")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Register(t.Context(), httpReg()); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Services(t.Context()); err != nil {
		t.Fatal(err)
	}
	if s := got(); len(s) != 2 || s[0].path != "/v1/agent/service/register" {
		t.Errorf("requests %+v", s)
	}
}

// TestRegisterAnswersNonOK: an agent's refusal is an error with its text.
func TestRegisterAnswersNonOK(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "Invalid check: TTL must be > 0", http.StatusBadRequest)
	}))
	defer srv.Close()
	c, err := New(srv.URL, "", "", "", "", "")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Register(t.Context(), httpReg()); err == nil || !strings.Contains(err.Error(), "400 Bad Request: Invalid check: TTL must be > 0") {
		t.Errorf("err = %v", err)
	}
	if err := (Client{}).Register(t.Context(), httpReg()); err == nil {
		t.Error("a Client not built by New registered")
	}
}
