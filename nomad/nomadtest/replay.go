// Package nomadtest replays the responses recorded from a real Nomad agent
// (shared/fixtures/nomad), through the real nomad/api client, for the
// tests of the Nomad source and of the agent that uses it.
package nomadtest

import (
	"bufio"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	napi "github.com/hashicorp/nomad/api"
)

// fixtures are the responses recorded from a real Nomad agent (see the
// README there): they are the contract of the Nomad source. The path is
// relative to a package directory one level below the repository.
const fixtures = "../../shared/fixtures/nomad"

// The node and allocations of the recordings.
const (
	FixtureNode    = "f040012b-0fe2-51b2-bd88-cf7754ccb3dd"
	FixtureWorker  = "c3cc5a34-9704-946d-259f-aa915569ff21"
	FixtureCerebro = "e91ea7ef-bbc8-da92-3308-4473535245fc"
	FixtureCereb2  = "eccd0fba-402e-5c27-839e-9090d510ffb1"
)

// Fixture is one recorded file; the test is skipped without the recordings.
func Fixture(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(fixtures, name)) //nolint:gosec // G304: the test names a recorded file
	if err != nil {
		t.Skipf("recorded Nomad fixtures not available: %v", err)
	}
	return b
}

// FixtureIndex reads X-Nomad-Index from a recorded .headers file.
func FixtureIndex(t *testing.T, name string) uint64 {
	t.Helper()
	sc := bufio.NewScanner(strings.NewReader(string(Fixture(t, name))))
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

// Replay serves the recorded responses. The node's allocation list is
// a blocking query: a request whose index is the current one waits until
// the test moves the replay to the next recording.
type Replay struct {
	t       *testing.T
	self    []byte
	Queries chan string // the raw query of every allocation-list request

	mu      sync.Mutex
	body    []byte
	index   uint64
	changed chan struct{} // closed when body/index change

	Addr string
	srv  *httptest.Server
}

// New serves the recording of the node with its allocations running, on a
// local port, until the test ends.
func New(t *testing.T) *Replay {
	r := &Replay{t: t, self: Fixture(t, "agent-self.json"), Queries: make(chan string, 100), changed: make(chan struct{})}
	r.Set("node-allocations.running.json", FixtureIndex(t, "node-allocations.running.headers"))
	r.Start("127.0.0.1:0")
	t.Cleanup(func() { r.srv.Close() })
	return r
}

// Set makes file (at index) the allocation list from now on: a pending
// blocking query answers with it.
func (r *Replay) Set(file string, index uint64) {
	b := Fixture(r.t, file)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.body, r.index = b, index
	close(r.changed)
	r.changed = make(chan struct{})
}

// Start serves on addr (again, after Stop: Nomad comes back).
func (r *Replay) Start(addr string) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		r.t.Fatalf("listening on %s: %v", addr, err)
	}
	r.Addr = l.Addr().String()
	r.srv = httptest.NewUnstartedServer(http.HandlerFunc(r.serve))
	r.srv.Listener = l
	r.srv.Start()
}

// Stop makes Nomad go away: the listener closes (connections are refused)
// and the pending blocking query is cut.
func (r *Replay) Stop() {
	// The listener first: a retry must not slip in between cutting the
	// connections and closing (Close waits for active requests).
	_ = r.srv.Listener.Close()
	r.srv.CloseClientConnections()
	r.srv.Close()
}

func (r *Replay) serve(w http.ResponseWriter, req *http.Request) {
	switch req.URL.Path {
	case "/v1/agent/self":
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(r.self)
	case "/v1/node/" + FixtureNode + "/allocations":
		r.Queries <- req.URL.RawQuery
		want, _ := strconv.ParseUint(req.URL.Query().Get("index"), 10, 64)
		for {
			r.mu.Lock()
			body, index, changed := r.body, r.index, r.changed
			r.mu.Unlock()
			if want < index {
				w.Header().Set("Content-Type", "application/json")
				w.Header().Set("X-Nomad-Index", strconv.FormatUint(index, 10))
				w.Header().Set("X-Nomad-Knownleader", "true")
				_, _ = w.Write(body)
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

// API is a real nomad/api client of the replay.
func (r *Replay) API(t *testing.T) *napi.Client {
	c, err := napi.NewClient(&napi.Config{Address: "http://" + r.Addr})
	if err != nil {
		t.Fatal(err)
	}
	return c
}
