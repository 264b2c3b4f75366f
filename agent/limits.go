package agent

import (
	"strings"

	"github.com/v6reg/v6reg/desired"
)

// holdLimits enforces the limits on d (see enforceLimits) against the
// last applied desired state and reports them in the metrics.
func (a *Agent) holdLimits(d *desired.Desired, in desired.Input) {
	rep := desired.EnforceLimits(d, in, a.lastDesired.Load())
	m := a.o.Metrics
	for _, l := range desired.LimitNames {
		m.LimitRefusals.WithLabelValues(l).Set(float64(rep.Refused[l]))
	}
	m.FirewallElements.Set(float64(rep.Elements))
	if a.peers != nil {
		if n, ok := a.peers.OpenConnections(); ok {
			// Sampled at each reconcile; the bound itself is the watch
			// transport's MaxConnsPerHost.
			m.WatchConnections.Set(float64(n))
		}
	}
	for _, w := range d.Workloads {
		if w.Closed && strings.HasPrefix(w.Reason, "refused by a size limit") {
			a.log.Debug("container refused by a size limit", "container", w.Container.ShortID(), "job", w.Job, "alloc", w.Container.AllocID, "errors", w.Errors)
		}
	}
}
