// Package nomad follows this node's allocations in Nomad: the source of
// every Nomad job's policy (its meta), kept through Nomad's outages.
package nomad

import (
	"github.com/v6reg/v6reg/internal/backoff"

	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	napi "github.com/hashicorp/nomad/api"
)

// API is what the agent asks of Nomad: this node's allocations, by
// blocking query, and the node ID of the local agent. *Client adapts
// the real client.
type API interface {
	NodeAllocations(ctx context.Context, nodeID string, waitIndex uint64, wait time.Duration) ([]*napi.Allocation, uint64, error)
	LocalNodeID(ctx context.Context) (string, error)
}

// Client adapts *napi.Client to API.
type Client struct{ C *napi.Client }

// NodeAllocations runs one blocking query on the node's allocation list.
func (n Client) NodeAllocations(ctx context.Context, nodeID string, waitIndex uint64, wait time.Duration) ([]*napi.Allocation, uint64, error) {
	q := (&napi.QueryOptions{WaitIndex: waitIndex, WaitTime: wait, AllowStale: true}).WithContext(ctx)
	allocs, meta, err := n.C.Nodes().Allocations(nodeID, q)
	if err != nil {
		return nil, 0, err
	}
	return allocs, meta.LastIndex, nil
}

// LocalNodeID asks the local Nomad agent for its client node ID.
func (n Client) LocalNodeID(ctx context.Context) (string, error) {
	// Agent().Self takes no context; Raw does, so a hung Nomad cannot
	// hold the agent's shutdown.
	var self napi.AgentSelf
	if _, err := n.C.Raw().Query("/v1/agent/self", &self, (&napi.QueryOptions{}).WithContext(ctx)); err != nil {
		return "", err
	}
	if id := self.Stats["client"]["node_id"]; id != "" {
		return id, nil
	}
	return "", errors.New("the local Nomad agent is not a client (no stats.client.node_id): set nomad { node_id = ... }")
}

// Alloc is what the agent keeps of one allocation of this node.
type Alloc struct {
	ID        string
	Namespace string
	Job       string
	Group     string
	// Stopping is set when Nomad wants the allocation stopped: its services
	// are deregistered before the container dies.
	Stopping bool
	// Meta as written at each level; policies merges them as Nomad does,
	// keeping the level so that errors say where a value came from.
	JobMeta, GroupMeta map[string]string
	TaskMeta           map[string]map[string]string

	// Rev changes whenever the source stores a different version of the
	// allocation (0: not from the source), so that the agent evaluates
	// a container's policy again only when its allocation changed.
	Rev uint64 `json:"-"`
}

// allocFrom reduces a Nomad allocation to what the agent needs.
func allocFrom(a *napi.Allocation) Alloc {
	out := Alloc{
		ID:        a.ID,
		Namespace: a.Namespace,
		Group:     a.TaskGroup,
		Stopping:  a.DesiredStatus == napi.AllocDesiredStatusStop || a.DesiredStatus == napi.AllocDesiredStatusEvict,
		TaskMeta:  map[string]map[string]string{},
	}
	if a.Job == nil {
		return out
	}
	if a.Job.ID != nil {
		out.Job = *a.Job.ID
	}
	if out.Namespace == "" && a.Job.Namespace != nil {
		out.Namespace = *a.Job.Namespace
	}
	for _, g := range a.Job.TaskGroups {
		if g.Name == nil || *g.Name != a.TaskGroup {
			continue
		}
		out.JobMeta, out.GroupMeta = a.Job.Meta, g.Meta
		for _, t := range g.Tasks {
			out.TaskMeta[t.Name] = t.Meta
		}
	}
	return out
}

// Source follows this node's allocations. It keeps the last answer
// when Nomad is unreachable, so running containers keep their policy.
type Source struct {
	api    API
	nodeID string
	wait   time.Duration
	log    *slog.Logger
	// retryMin and retryMax bound the backoff while Nomad is unreachable;
	// the cap is how long a new container of an unknown allocation may
	// stay closed after Nomad answers again (the fault suite saw 30 s).
	retryMin, retryMax time.Duration

	mu     sync.Mutex
	allocs map[string]Alloc
	synced bool // at least one answer since start
	lastOK time.Time
	err    error
	// index is Nomad's index of the allocations held; gen counts their
	// changes, so the agent persists them only when they changed.
	index uint64
	gen   uint64
	revs  uint64 // the last Alloc.rev given
	// seededAt is when Nomad gave the persisted answer the source started
	// with (zero: none); it is used until Nomad answers.
	seededAt time.Time
}

// NewSource follows the allocations of node nodeID (empty: the local
// agent's node, asked when Run starts).
func NewSource(api API, nodeID string, log *slog.Logger) *Source {
	return &Source{api: api, nodeID: nodeID, wait: 5 * time.Minute, log: log, allocs: map[string]Alloc{},
		retryMin: 500 * time.Millisecond, retryMax: 10 * time.Second}
}

// Lookup returns the allocation and whether it is known; known is false
// until Nomad has answered once, and for an allocation Nomad did not list.
func (s *Source) Lookup(id string) (Alloc, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.allocs[id]
	return a, ok
}

// Seed starts the source with the allocations persisted by the agent's last
// run: they are looked up until Nomad answers, and then replaced by its
// answer. The kernel table and the registrations already hold what they
// describe, so a restart while Nomad is down changes nothing.
func (s *Source) Seed(allocs []Alloc, index uint64, at time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.synced {
		return
	}
	s.allocs = make(map[string]Alloc, len(allocs))
	for _, a := range allocs {
		s.revs++
		a.Rev = s.revs
		s.allocs[a.ID] = a
	}
	s.index, s.seededAt = index, at
}

// Seeded reports whether the allocations in use are the persisted ones:
// Nomad has not answered since start.
func (s *Source) Seeded() (bool, time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return !s.synced && !s.seededAt.IsZero(), s.seededAt
}

// Known returns what the agent persists of the source, and its change
// count.
func (s *Source) Known() (allocs []Alloc, index uint64, at time.Time, answered bool, gen uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	allocs = make([]Alloc, 0, len(s.allocs))
	for _, a := range s.allocs {
		allocs = append(allocs, a)
	}
	slices.SortFunc(allocs, func(x, y Alloc) int { return strings.Compare(x.ID, y.ID) })
	at = s.lastOK
	if !s.synced {
		at = s.seededAt
	}
	return allocs, s.index, at, s.synced || !s.seededAt.IsZero(), s.gen
}

// State reports whether Nomad answered at least once and the last error.
func (s *Source) State() (synced bool, lastOK time.Time, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.synced, s.lastOK, s.err
}

// Run follows the node's allocation list with blocking queries until ctx
// is done, calling trigger after every change.
func (s *Source) Run(ctx context.Context, trigger func(string), onError func()) {
	b := backoff.New(s.retryMin, s.retryMax)
	var index uint64
	for ctx.Err() == nil {
		if s.nodeID == "" {
			id, err := s.api.LocalNodeID(ctx)
			if err != nil && ctx.Err() != nil {
				return
			}
			if err != nil {
				s.fail(ctx, b, fmt.Errorf("asking Nomad for this node's ID: %w", err), onError)
				continue
			}
			s.nodeID = id
			s.log.Info("nomad: following this node's allocations", "node_id", id)
		}
		allocs, next, err := s.api.NodeAllocations(ctx, s.nodeID, index, s.wait)
		if err != nil && ctx.Err() != nil {
			return // shutting down, not an outage
		}
		if err != nil {
			s.fail(ctx, b, fmt.Errorf("reading allocations of node %s: %w", s.nodeID, err), onError)
			continue
		}
		b.Reset()
		// An index that goes backwards means the servers were restored or
		// the node changed: start over rather than block forever.
		if next < index {
			next = 0
		}
		changed := s.Store(allocs, next)
		index = next
		if changed {
			trigger("nomad: allocations changed")
		}
	}
}

func (s *Source) fail(ctx context.Context, b *backoff.Backoff, err error, onError func()) {
	s.mu.Lock()
	first := s.err == nil
	s.err = err
	s.mu.Unlock()
	onError()
	d := b.Next()
	if first {
		s.log.Warn("nomad unreachable; keeping the last known allocations", "err", err, "retry_in", d)
	} else {
		s.log.Debug("nomad still unreachable", "err", err, "retry_in", d)
	}
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// Store takes one answer of Nomad's allocation list (Run calls it with
// each; tests feed recorded answers) and reports whether it changed
// anything.
func (s *Source) Store(list []*napi.Allocation, index uint64) bool {
	next := make(map[string]Alloc, len(list))
	for _, a := range list {
		// Terminal allocations have no running containers to serve.
		if a.ClientStatus == napi.AllocClientStatusComplete || a.ClientStatus == napi.AllocClientStatusFailed || a.ClientStatus == napi.AllocClientStatusLost {
			continue
		}
		next[a.ID] = allocFrom(a)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, a := range next {
		if old, ok := s.allocs[id]; ok && allocEqual(old, a) {
			a.Rev = old.Rev
		} else {
			s.revs++
			a.Rev = s.revs
		}
		next[id] = a
	}
	if s.err != nil {
		s.log.Info("nomad reachable again")
	}
	if !s.synced && !s.seededAt.IsZero() {
		s.log.Info("nomad answered; replacing the persisted allocations with its answer",
			"persisted_allocs", len(s.allocs), "persisted_index", s.index, "allocs", len(next), "index", index)
	}
	changed := !s.synced || !allocsEqual(s.allocs, next)
	if changed {
		// Persisted with the index of this answer; a later answer that
		// changes nothing (an allocation's health, another index) is
		// not worth an fsync.
		s.gen++
		s.index = index
	}
	s.allocs, s.synced, s.lastOK, s.err = next, true, time.Now(), nil
	return changed
}

func allocsEqual(a, b map[string]Alloc) bool {
	if len(a) != len(b) {
		return false
	}
	for id, x := range a {
		if y, ok := b[id]; !ok || !allocEqual(x, y) {
			return false
		}
	}
	return true
}

// allocEqual reports whether two versions of an allocation give its
// containers the same policy and state.
func allocEqual(x, y Alloc) bool {
	return x.Stopping == y.Stopping && x.Job == y.Job && x.Namespace == y.Namespace && x.Group == y.Group &&
		maps.Equal(x.JobMeta, y.JobMeta) && maps.Equal(x.GroupMeta, y.GroupMeta) &&
		maps.EqualFunc(x.TaskMeta, y.TaskMeta, maps.Equal)
}

// Status says in a few words how the source stands, for `v6reg status`:
// "ok", waiting, unreachable (since when), or using the persisted copy.
func (s *Source) Status() string {
	synced, lastOK, err := s.State()
	seeded, at := s.Seeded()
	switch {
	case seeded:
		why := "waiting for first answer"
		if err != nil {
			why = "unreachable: " + err.Error()
		}
		return fmt.Sprintf("%s; using the allocations persisted from its answer of %s", why, at.UTC().Format(time.RFC3339))
	case err != nil && synced:
		return fmt.Sprintf("unreachable (last answer %s ago): %v", time.Since(lastOK).Round(time.Second), err)
	case err != nil:
		return fmt.Sprintf("unreachable: %v", err)
	case synced:
		return "ok"
	}
	return "waiting for first answer"
}
