package agent

import (
	"github.com/v6reg/v6reg/desired"
	"github.com/v6reg/v6reg/internal/text"
	"github.com/v6reg/v6reg/registrar"

	"github.com/v6reg/v6reg/docker"
	"github.com/v6reg/v6reg/nomad"

	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof" //nolint:gosec // G108: served on the root-only API socket (APIHandler), not on DefaultServeMux's listeners
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	consul "github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Snapshot is what the status API serves: the desired and applied state
// per container, as of the last reconcile.
type Snapshot struct {
	Node        string    `json:"node"`
	Prefix      string    `json:"prefix"`
	At          time.Time `json:"at"`
	FirewallErr string    `json:"firewall_error,omitempty"`
	// BridgeNetfilterErr says why traffic between containers on the
	// bridge bypasses the firewall (br_netfilter missing or off and not
	// restorable); the agent is unhealthy while it is set.
	BridgeNetfilterErr string `json:"bridge_netfilter_error,omitempty"`
	ConsulErr          string `json:"consul_error,omitempty"`
	// HealthErr says why the services' health is unknown: Consul did not
	// answer the status API's question about its checks.
	HealthErr string `json:"health_error,omitempty"`
	Nomad     string `json:"nomad"`
	// StateErr says the persisted last known policies (KnownFile) could
	// not be read (corrupt) or written.
	StateErr string `json:"state_error,omitempty"`
	// Spoofed are the node's anti-spoofing drops (kernel counters, since
	// the tables were created); nil where the firewall does not count them.
	Spoofed    *SpoofState      `json:"spoofed,omitempty"`
	Containers []ContainerState `json:"containers"`
}

// SpoofState splits the anti-spoofing drops by check: frames at a
// container's bridge port with another MAC or another container's address,
// and packets whose prefix source no container owns or came from the
// wrong link or MAC.
type SpoofState struct {
	BridgePortPackets uint64 `json:"bridge_port_packets"`
	SourcePackets     uint64 `json:"source_packets"`
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
	Check string   `json:"check"` // the kind v6reg registered: http, https, tcp, critical (policy error), "" (none)
	Tags  []string `json:"tags,omitempty"`
	// Health is Consul's live view when the status API was asked: the
	// worst status of the service's checks (passing, warning, critical),
	// HealthUnknown when Consul did not answer or holds no check for it,
	// empty when the registration has no check or Consul is off.
	Health string `json:"health,omitempty"`
	// Output is that check's output (its notes when it has none, as for
	// the policy error check), cut to maxCheckOutput bytes.
	Output string `json:"output,omitempty"`
}

// HealthUnknown is a service's Health when Consul could not tell it.
const HealthUnknown = "unknown"

// DropState holds the kernel's drop counters of a container.
type DropState struct {
	IngressPackets uint64 `json:"ingress_packets"`
	EgressPackets  uint64 `json:"egress_packets"`
}

func (s *Snapshot) fill(d desired.Desired, n *nomad.Source) {
	s.Nomad = "disabled"
	if n != nil {
		s.Nomad = n.Status()
	}
	regs := map[string][]ServiceState{}
	for _, r := range d.Registrations {
		id := r.Meta[registrar.MetaContainer]
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
	s.BridgeNetfilterErr = a.bridgeNFProblem() // checked every second, not per reconcile
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
	if sf, ok := a.o.Firewall.(SpoofCounter); ok {
		port, source, err := sf.SpoofDropsByCheck(ctx)
		if err != nil {
			return &s, fmt.Errorf("reading anti-spoofing counters: %w", err)
		}
		s.Spoofed = &SpoofState{BridgePortPackets: port.Packets, SourcePackets: source.Packets}
	}
	return &s, nil
}

// consulHealthTimeout bounds the status API's one question to Consul (the
// local agent's checks), so that a frozen Consul delays `v6reg status` by
// at most this much and it says "health unknown" instead of hanging. A
// healthy local agent answers from memory within milliseconds.
var consulHealthTimeout = 2 * time.Second

// maxCheckOutput caps a check's output in the status API: an HTTP check's
// output carries the response body, which can be kilobytes.
const maxCheckOutput = 512

// withHealth fills in, on s (a copy the caller owns), every registration's
// live health from the local Consul agent, in one bounded call.
func (a *Agent) withHealth(ctx context.Context, s *Snapshot) {
	if a.o.Consul == nil {
		return
	}
	owned := map[string]bool{}
	for _, c := range s.Containers {
		for _, sv := range c.Services {
			owned[sv.ID] = true
		}
	}
	if len(owned) == 0 {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, consulHealthTimeout)
	checks, err := a.o.Consul.Checks(cctx)
	cancel()
	byService := map[string][]*consul.AgentCheck{}
	for _, c := range checks {
		if c != nil && owned[c.ServiceID] {
			byService[c.ServiceID] = append(byService[c.ServiceID], c)
		}
	}
	if err != nil {
		s.HealthErr = fmt.Sprintf("asking consul for its checks: %v", err)
	}
	// The services slices are shared with the stored snapshot: copy them.
	s.Containers = slices.Clone(s.Containers)
	for i := range s.Containers {
		c := &s.Containers[i]
		c.Services = slices.Clone(c.Services)
		for j := range c.Services {
			sv := &c.Services[j]
			if err != nil {
				if sv.Check != "" {
					sv.Health = HealthUnknown
				}
				continue
			}
			sv.Health, sv.Output = serviceHealth(sv.Check, byService[sv.ID])
		}
	}
}

// healthRank orders check statuses from best to worst.
func healthRank(status string) int {
	switch status {
	case consul.HealthPassing:
		return 0
	case consul.HealthWarning:
		return 1
	case consul.HealthCritical:
		return 3
	default:
		return 2
	}
}

// serviceHealth is the worst of a service's checks, as Consul would count
// it for DNS and Traefik, and that check's output.
func serviceHealth(kind string, checks []*consul.AgentCheck) (health, output string) {
	if len(checks) == 0 {
		if kind == "" {
			return "", ""
		}
		return HealthUnknown, "consul holds no check for this service (not registered yet?)"
	}
	checks = slices.Clone(checks)
	sort.Slice(checks, func(i, j int) bool { return checks[i].CheckID < checks[j].CheckID })
	worst := checks[0]
	for _, c := range checks[1:] {
		if healthRank(c.Status) > healthRank(worst.Status) {
			worst = c
		}
	}
	output = strings.TrimSpace(worst.Output)
	if output == "" {
		output = strings.TrimSpace(worst.Notes)
	}
	return worst.Status, text.Cut(output, maxCheckOutput)
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
		a.o.Metrics.Drops.WithLabelValues(docker.ShortID(c.ID), "ingress").Set(float64(c.Drops.IngressPackets))
		a.o.Metrics.Drops.WithLabelValues(docker.ShortID(c.ID), "egress").Set(float64(c.Drops.EgressPackets))
	}
	if s.Spoofed != nil {
		a.o.Metrics.SpoofDrops.WithLabelValues("bridge_port").Set(float64(s.Spoofed.BridgePortPackets))
		a.o.Metrics.SpoofDrops.WithLabelValues("source").Set(float64(s.Spoofed.SourcePackets))
	}
}

// APIHandler serves the local status API: GET /v1/status, /v1/explain
// and Go's profiles under /debug/pprof/.
func (a *Agent) APIHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/explain", a.explainHandler)
	// Go's profiles, for a leak or a stall on a node: on this root-only
	// socket only, never on the metrics listener.
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		s, err := a.withDrops(r.Context())
		if err != nil {
			a.log.Warn("status: drop counters unavailable", "err", err)
		}
		a.withHealth(r.Context(), s)
		if s.HealthErr != "" {
			a.log.Warn("status: consul health unavailable", "err", s.HealthErr)
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
		if problems := strings.TrimSpace(s.FirewallErr + " " + s.ConsulErr + " " + a.bridgeNFProblem()); problems != "" {
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
