package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// Agent is what the API serves.
type Agent interface {
	// Status is the last reconcile's view with the kernel's drop
	// counters and Consul's health as they are now (a part that could
	// not be read says so in the snapshot).
	Status(ctx context.Context) *Snapshot
	// Explain answers why a packet would pass or be dropped.
	Explain(ctx context.Context, q ExplainQuery) (ExplainAnswer, error)
}

// Handler serves the local status API: GET /v1/status, /v1/explain and
// Go's profiles under /debug/pprof/.
func Handler(a Agent) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/explain", func(w http.ResponseWriter, r *http.Request) { explain(a, w, r) })
	// Go's profiles, for a leak or a stall on a node: on this root-only
	// socket only, never on the metrics listener.
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		s := a.Status(r.Context())
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(s)
	})
	return mux
}

// explain serves GET /v1/explain?target=&direction=&peer=&port=&proto=.
func explain(a Agent, w http.ResponseWriter, r *http.Request) {
	v := r.URL.Query()
	q := ExplainQuery{Target: v.Get("target"), Direction: v.Get("direction"), Peer: v.Get("peer"), Proto: v.Get("proto")}
	if p := v.Get("port"); p != "" {
		n, err := strconv.ParseUint(p, 10, 16)
		if err != nil {
			http.Error(w, fmt.Sprintf("port %q is not a port number", p), http.StatusBadRequest)
			return
		}
		q.Port = uint16(n)
	}
	ans, err := a.Explain(r.Context(), q)
	if err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(ans)
}

// Listen opens the status API's unix socket, readable and writable by
// root only (the directory too), replacing a stale socket of a previous run.
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("creating api socket dir: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("removing stale api socket: %w", err)
	}
	old := umask(0o177)
	l, err := net.Listen("unix", path)
	umask(old)
	if err != nil {
		return nil, fmt.Errorf("listening on api socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		_ = l.Close() // the chmod error is the one worth reporting
		return nil, fmt.Errorf("restricting api socket: %w", err)
	}
	return l, nil
}

// idleTimeout closes a keep-alive connection of the API or metrics server
// after this long without a request. Without it a client that drops its
// transport without closing (a script building an http.Client per call)
// leaves a connection and its goroutine in the agent forever. Prometheus
// scrapes more often than this, so its connection stays.
var idleTimeout = 2 * time.Minute

// Serve runs an HTTP server on l until ctx is done.
func Serve(ctx context.Context, l net.Listener, h http.Handler, log *slog.Logger) {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: idleTimeout}
	go func() {
		<-ctx.Done()
		// ctx is done by now: shut down under a fresh deadline.
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Error("http server stopped", "addr", l.Addr().String(), "err", err)
	}
}
