package agent

import (
	"github.com/v6reg/v6reg/api"
	"github.com/v6reg/v6reg/desired"
	"github.com/v6reg/v6reg/internal/text"
	"github.com/v6reg/v6reg/registrar"

	"github.com/v6reg/v6reg/docker"
	"github.com/v6reg/v6reg/nomad"

	"context"
	"fmt"
	"net/http" //nolint:gosec // G108: served on the root-only API socket (APIHandler), not on DefaultServeMux's listeners
	"slices"
	"sort"
	"strings"
	"time"

	consul "github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

func fillSnapshot(s *api.Snapshot, d desired.Desired, n *nomad.Source) {
	s.Nomad = "disabled"
	if n != nil {
		s.Nomad = n.Status()
	}
	regs := map[string][]api.ServiceState{}
	for _, r := range d.Registrations {
		id := r.Meta[registrar.MetaContainer]
		regs[id] = append(regs[id], api.ServiceState{ID: r.ID, Name: r.Name, Port: r.Port, Check: r.Check.Kind, Tags: r.Tags})
	}
	for _, w := range d.Workloads {
		c := api.ContainerState{
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

func ruleState[P fmt.Stringer](src string, prefixes []P, services, jobs []string) api.RuleState {
	r := api.RuleState{Rule: src, Services: services, Jobs: jobs}
	for _, p := range prefixes {
		r.Prefixes = append(r.Prefixes, p.String())
	}
	return r
}

// withDrops returns a copy of the snapshot with the kernel's drop counters.
func (a *Agent) withDrops(ctx context.Context) (*api.Snapshot, error) {
	s := *a.Snapshot()
	s.BridgeNetfilterErr = a.bridgeNFProblem() // checked every second, not per reconcile
	if a.o.Firewall == nil {
		return &s, nil
	}
	counters, err := a.o.Firewall.Counters(ctx)
	if err != nil {
		return &s, fmt.Errorf("reading drop counters: %w", err)
	}
	s.Containers = append([]api.ContainerState(nil), s.Containers...)
	for i := range s.Containers {
		if dc, ok := counters[s.Containers[i].ID]; ok {
			s.Containers[i].Drops = &api.DropState{IngressPackets: dc.IngressDropped.Packets, EgressPackets: dc.EgressDropped.Packets}
		}
	}
	if sf, ok := a.o.Firewall.(SpoofCounter); ok {
		port, source, err := sf.SpoofDropsByCheck(ctx)
		if err != nil {
			return &s, fmt.Errorf("reading anti-spoofing counters: %w", err)
		}
		s.Spoofed = &api.SpoofState{BridgePortPackets: port.Packets, SourcePackets: source.Packets}
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
func (a *Agent) withHealth(ctx context.Context, s *api.Snapshot) {
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
					sv.Health = api.HealthUnknown
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
		return api.HealthUnknown, "consul holds no check for this service (not registered yet?)"
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

// Status is what `v6reg status` shows: the last reconcile's snapshot with
// the kernel's drop counters and Consul's health as they are now.
func (a *Agent) Status(ctx context.Context) *api.Snapshot {
	s, err := a.withDrops(ctx)
	if err != nil {
		a.log.Warn("status: drop counters unavailable", "err", err)
	}
	a.withHealth(ctx, s)
	if s.HealthErr != "" {
		a.log.Warn("status: consul health unavailable", "err", s.HealthErr)
	}
	a.withPeerCuts(s)
	return s
}
