package api

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/v6reg/v6reg/internal/keepalive"
	"github.com/v6reg/v6reg/internal/testlog"
	"github.com/v6reg/v6reg/internal/testwait"
)

// stubAgent answers the API with an empty snapshot.
type stubAgent struct{}

func (stubAgent) Status(context.Context) *Snapshot { return &Snapshot{Node: "n1"} }
func (stubAgent) Explain(context.Context, ExplainQuery) (ExplainAnswer, error) {
	return ExplainAnswer{}, errors.New("no such container")
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
	l, err := Listen(path)
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
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); Serve(ctx, l, Handler(stubAgent{}), testlog.Quiet()) }()
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
	testwait.Recv(t, done, "Serve to return")
}

// TestServeClosesIdleConnections: a client that keeps a connection open
// without sending (a dropped transport) is cut off after idleTimeout, so
// such clients cannot pile up connections and goroutines in the agent.
func TestServeClosesIdleConnections(t *testing.T) {
	defer func(d time.Duration) { idleTimeout = d }(idleTimeout)
	idleTimeout = 200 * time.Millisecond
	path := filepath.Join(t.TempDir(), "api.sock")
	l, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); Serve(ctx, l, Handler(stubAgent{}), testlog.Quiet()) }()
	defer func() { cancel(); testwait.Recv(t, done, "Serve to return") }()
	took, err := keepalive.ClosedWhenIdle(path, "GET /v1/status HTTP/1.1\r\nHost: v6reg\r\n\r\n", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if took > 3*time.Second {
		t.Errorf("idle connection closed after %s, want about %s", took, idleTimeout)
	}
}
