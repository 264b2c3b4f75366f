package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Snapshot is what the status API serves: the desired and applied state
// per container, as of the last reconcile.
type Snapshot struct {
	Node        string           `json:"node"`
	Prefix      string           `json:"prefix"`
	At          time.Time        `json:"at"`
	FirewallErr string           `json:"firewall_error,omitempty"`
	ConsulErr   string           `json:"consul_error,omitempty"`
	Nomad       string           `json:"nomad"`
	Containers  []ContainerState `json:"containers"`
}

// ContainerState is one container in the status API.
type ContainerState struct {
	ID        string         `json:"id"`
	Name      string         `json:"name"`
	Address   string         `json:"address,omitempty"`
	Source    string         `json:"source"`
	Namespace string         `json:"namespace,omitempty"`
	Job       string         `json:"job,omitempty"`
	Group     string         `json:"group,omitempty"`
	Task      string         `json:"task,omitempty"`
	AllocID   string         `json:"alloc_id,omitempty"`
	Stopping  bool           `json:"stopping,omitempty"`
	Closed    bool           `json:"closed"`
	Reason    string         `json:"reason,omitempty"`
	Errors    []string       `json:"errors,omitempty"`
	Ingress   []RuleState    `json:"ingress,omitempty"`
	Egress    []RuleState    `json:"egress,omitempty"`
	Services  []ServiceState `json:"services,omitempty"`
	Drops     *DropState     `json:"drops,omitempty"`
}

// RuleState is one resolved rule of a container.
type RuleState struct {
	Rule     string   `json:"rule"`
	Prefixes []string `json:"prefixes,omitempty"`
	Services []string `json:"services,omitempty"`
	Jobs     []string `json:"jobs,omitempty"`
}

// ServiceState is one Consul registration of a container.
type ServiceState struct {
	ID    string   `json:"id"`
	Name  string   `json:"name"`
	Port  int      `json:"port"`
	Check string   `json:"check"`
	Tags  []string `json:"tags,omitempty"`
}

// DropState holds the kernel's drop counters of a container.
type DropState struct {
	IngressPackets uint64 `json:"ingress_packets"`
	EgressPackets  uint64 `json:"egress_packets"`
}

func (s *Snapshot) fill(d Desired, n *nomadSource) {
	switch n {
	case nil:
		s.Nomad = "disabled"
	default:
		synced, lastOK, err := n.state()
		switch {
		case err != nil && synced:
			s.Nomad = fmt.Sprintf("unreachable (last answer %s ago): %v", time.Since(lastOK).Round(time.Second), err)
		case err != nil:
			s.Nomad = fmt.Sprintf("unreachable: %v", err)
		case synced:
			s.Nomad = "ok"
		default:
			s.Nomad = "waiting for first answer"
		}
	}
	regs := map[string][]ServiceState{}
	for _, r := range d.Registrations {
		id := r.Meta[metaContainer]
		regs[id] = append(regs[id], ServiceState{ID: r.ID, Name: r.Name, Port: r.Port, Check: r.Check.Kind, Tags: r.Tags})
	}
	for _, w := range d.Workloads {
		c := ContainerState{
			ID: w.Container.ID, Name: w.Container.Name, Source: w.Source, Namespace: w.Namespace,
			Job: w.Job, Group: w.Group, Task: w.Task, AllocID: w.Container.AllocID, Stopping: w.Stopping,
			Closed: w.Closed, Reason: w.Reason, Errors: w.Errors, Services: regs[w.Container.ShortID()],
		}
		if w.Container.Addr.IsValid() {
			c.Address = w.Container.Addr.String()
		}
		if !w.Closed {
			for _, r := range w.Policy.Ingress {
				c.Ingress = append(c.Ingress, ruleState(r.Source, r.Prefixes, r.Services, r.Jobs))
			}
			for _, r := range w.Policy.Egress {
				c.Egress = append(c.Egress, ruleState(r.Source, r.Prefixes, r.Services, r.Jobs))
			}
		}
		sort.Slice(c.Services, func(i, j int) bool { return c.Services[i].ID < c.Services[j].ID })
		s.Containers = append(s.Containers, c)
	}
	sort.Slice(s.Containers, func(i, j int) bool {
		a, b := s.Containers[i], s.Containers[j]
		if a.Job != b.Job {
			return a.Job < b.Job
		}
		return a.Name < b.Name
	})
}

func ruleState[P fmt.Stringer](src string, prefixes []P, services, jobs []string) RuleState {
	r := RuleState{Rule: src, Services: services, Jobs: jobs}
	for _, p := range prefixes {
		r.Prefixes = append(r.Prefixes, p.String())
	}
	return r
}

// withDrops returns a copy of the snapshot with the kernel's drop counters.
func (a *Agent) withDrops(ctx context.Context) (*Snapshot, error) {
	s := *a.Snapshot()
	if a.o.Firewall == nil {
		return &s, nil
	}
	counters, err := a.o.Firewall.Counters(ctx)
	if err != nil {
		return &s, fmt.Errorf("reading drop counters: %w", err)
	}
	s.Containers = append([]ContainerState(nil), s.Containers...)
	for i := range s.Containers {
		if dc, ok := counters[s.Containers[i].ID]; ok {
			s.Containers[i].Drops = &DropState{IngressPackets: dc.IngressDropped.Packets, EgressPackets: dc.EgressDropped.Packets}
		}
	}
	return &s, nil
}

// refreshDrops copies the kernel's drop counters into the metrics.
func (a *Agent) refreshDrops(ctx context.Context) {
	s, err := a.withDrops(ctx)
	if err != nil {
		a.log.Warn("metrics: drop counters unavailable", "err", err)
		return
	}
	a.o.Metrics.Drops.Reset()
	for _, c := range s.Containers {
		if c.Drops == nil {
			continue
		}
		a.o.Metrics.Drops.WithLabelValues(shortID(c.ID), "ingress").Set(float64(c.Drops.IngressPackets))
		a.o.Metrics.Drops.WithLabelValues(shortID(c.ID), "egress").Set(float64(c.Drops.EgressPackets))
	}
}

// APIHandler serves the local status API: GET /v1/status.
func (a *Agent) APIHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/explain", a.explainHandler)
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		s, err := a.withDrops(r.Context())
		if err != nil {
			a.log.Warn("status: drop counters unavailable", "err", err)
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(s)
	})
	return mux
}

// MetricsHandler serves /metrics and /healthz for Prometheus.
func (a *Agent) MetricsHandler() http.Handler {
	mux := http.NewServeMux()
	prom := promhttp.HandlerFor(a.o.Metrics.Registry, promhttp.HandlerOpts{})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		a.refreshDrops(r.Context())
		prom.ServeHTTP(w, r)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		s := a.Snapshot()
		if s.At.IsZero() {
			http.Error(w, "no reconcile yet", http.StatusServiceUnavailable)
			return
		}
		if problems := strings.TrimSpace(s.FirewallErr + " " + s.ConsulErr); problems != "" {
			http.Error(w, problems, http.StatusServiceUnavailable)
			return
		}
		_, _ = fmt.Fprintf(w, "ok: last reconcile %s ago\n", time.Since(s.At).Round(time.Millisecond)) // the prober went away: nothing to do
	})
	return mux
}

// ListenAPI opens the status API's unix socket, readable and writable by
// root only (the directory too), replacing a stale socket of a previous run.
func ListenAPI(path string) (net.Listener, error) {
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

// Serve runs an HTTP server on l until ctx is done.
func Serve(ctx context.Context, l net.Listener, h http.Handler, log *slog.Logger) {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
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
