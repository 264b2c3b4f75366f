package agent

import (
	"github.com/v6reg/v6reg/registrar"

	"github.com/v6reg/v6reg/docker"
	"github.com/v6reg/v6reg/internal/backoff"

	"context"
	"sync"
	"time"
)

// regJob is one desired state of the registrations, for the registrar.
type regJob struct {
	want   map[string]registrar.Registration
	hashes map[string]string
	// list reads Consul's services first; full also counts the drift.
	list, full bool
	// events are the containers whose events this state serves, with
	// when each arrived (v6reg_event_to_consul_seconds).
	events map[string]time.Time
}

// merge folds an older job that was never applied into j: the newer
// desired state wins, the older one's listing and events are kept.
func (j regJob) merge(older regJob) regJob {
	j.list = j.list || older.list
	j.full = j.full || older.full
	if len(older.events) > 0 {
		ev := make(map[string]time.Time, len(j.events)+len(older.events))
		for id, t := range older.events {
			ev[id] = t
		}
		for id, t := range j.events {
			if o, ok := ev[id]; !ok || t.Before(o) {
				ev[id] = t
			}
		}
		j.events = ev
	}
	return j
}

// regMailbox holds the newest job not yet taken by the registrar.
type regMailbox struct {
	mu   sync.Mutex
	job  *regJob
	wake chan struct{}
}

func newRegMailbox() *regMailbox { return &regMailbox{wake: make(chan struct{}, 1)} }

// post replaces the pending job (merging what it carried) and wakes the
// registrar. It never blocks.
func (m *regMailbox) post(j regJob) {
	m.mu.Lock()
	if m.job != nil {
		j = j.merge(*m.job)
	}
	m.job = &j
	m.mu.Unlock()
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// take returns the pending job, if any.
func (m *regMailbox) take() (regJob, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.job == nil {
		return regJob{}, false
	}
	j := *m.job
	m.job = nil
	return j, true
}

// runRegistrar applies the newest job until ctx ends. A failed job is
// retried with backoff (capped at 10 s, like the reconcile loop) unless
// a newer one arrives first, which then carries the failed one's events.
func (a *Agent) runRegistrar(ctx context.Context, m *regMailbox) {
	retry := backoff.New(500*time.Millisecond, 10*time.Second)
	var failed *regJob
	var retryC <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.wake:
		case <-retryC:
		}
		j, ok := m.take()
		switch {
		case ok && failed != nil:
			j = j.merge(*failed)
		case !ok && failed != nil:
			j = *failed
		case !ok:
			continue
		}
		failed, retryC = nil, nil
		if err := a.applyConsul(ctx, &j); err != nil {
			if ctx.Err() != nil {
				return
			}
			j.list = true // what Consul holds is not known now
			failed = &j
			d := retry.Next()
			a.log.Error("consul registration failed; retrying", "err", err, "retry_in", d)
			retryC = time.After(d)
			continue
		}
		retry.Reset()
	}
}

// applyConsul applies one job, bounded in time: a Consul that accepts
// connections but never answers (frozen, partitioned) must not hold the
// caller. What was applied before the bound stays applied (the
// registrar keeps it), so a long job converges over passes.
//
// On failure j.events keeps only the containers not reported yet, for the
// retry.
func (a *Agent) applyConsul(ctx context.Context, j *regJob) error {
	cctx, cancel := context.WithTimeout(ctx, consulApplyTimeout)
	// Each container whose event this job serves is reported as soon as
	// its own registrations are in; one with nothing to register, when
	// the pass succeeds.
	first := make(map[string]time.Time, len(j.events))
	byShort := make(map[string]string, len(j.events))
	for id, t := range j.events {
		first[docker.ShortID(id)], byShort[docker.ShortID(id)] = t, id
	}
	reported := map[string]bool{}
	report := func(short string) {
		if id, ok := byShort[short]; ok {
			reported[id] = true
			a.observe(OutputConsul, map[string]time.Time{id: j.events[id]}, a.o.Metrics.EventToConsul)
		}
	}
	changes, drift, err := a.reg.Apply(cctx, j.want, j.hashes, j.list, first, report)
	cancel()
	for _, c := range changes {
		a.logConsul(c)
	}
	if j.full && drift > 0 {
		a.o.Metrics.ResyncDrift.WithLabelValues("consul").Add(float64(drift))
		a.log.Warn("resync found consul registrations that the incremental passes had not kept", "registrations", drift)
	}
	rest := map[string]time.Time{}
	for id, t := range j.events {
		if !reported[id] {
			rest[id] = t
		}
	}
	if err != nil {
		a.o.Metrics.Errors.WithLabelValues("consul").Inc()
		msg := err.Error()
		a.consulErr.Store(&msg)
		j.events = rest
		return err
	}
	a.consulErr.Store(nil)
	a.observe(OutputConsul, rest, a.o.Metrics.EventToConsul)
	return nil
}

// consulProblem is the last registration error, "" when the last apply
// succeeded.
func (a *Agent) consulProblem() string {
	if p := a.consulErr.Load(); p != nil {
		return *p
	}
	return ""
}
