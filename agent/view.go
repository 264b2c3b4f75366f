package agent

import (
	"bytes"
	"context"
	"maps"
	"sort"
	"time"

	"golang.org/x/sync/errgroup"
)

// dockerView is the agent's copy of the containers on the v6reg network,
// kept by events: an event names one container, and the reconcile loop
// inspects that one (one round trip) instead of listing every container.
// The periodic full resync lists them all and counts what the events had
// missed (the drift, which should be zero). Only the reconcile loop uses
// it.
type dockerView struct {
	listed bool // a list was read: the view is complete
	byID   map[string]*viewEntry
	sorted []Container // by ID; nil when an entry changed
	revs   uint64      // the last Container.rev given
}

type viewEntry struct {
	c Container
	// sandbox is the container's network namespace file, from the
	// inspect an event caused ("" after a list): its bridge port is
	// found without inspecting it again.
	sandbox string
}

func newDockerView() *dockerView { return &dockerView{byID: map[string]*viewEntry{}} }

// put stores c, keeping its rev when nothing of it changed. It reports
// whether it changed.
func (v *dockerView) put(c Container, sandbox string) bool {
	old, ok := v.byID[c.ID]
	if ok && sameContainerInfo(old.c, c) {
		if sandbox != "" {
			old.sandbox = sandbox
		}
		return false
	}
	v.revs++
	c.rev = v.revs
	v.byID[c.ID] = &viewEntry{c: c, sandbox: sandbox}
	v.sorted = nil
	return true
}

// remove forgets a container; it reports whether it was there.
func (v *dockerView) remove(id string) bool {
	if _, ok := v.byID[id]; !ok {
		return false
	}
	delete(v.byID, id)
	v.sorted = nil
	return true
}

// containers lists the view by ID. The slice is the view's: callers
// copy before changing an element.
func (v *dockerView) containers() []Container {
	if v.sorted == nil {
		v.sorted = make([]Container, 0, len(v.byID))
		for _, e := range v.byID {
			v.sorted = append(v.sorted, e.c)
		}
		sort.Slice(v.sorted, func(i, j int) bool { return v.sorted[i].ID < v.sorted[j].ID })
	}
	return v.sorted
}

// sandboxOf is the network namespace file an inspect gave for the
// container's current endpoint, "" if none.
func (v *dockerView) sandboxOf(id, endpoint string) string {
	if e, ok := v.byID[id]; ok && e.c.EndpointID == endpoint {
		return e.sandbox
	}
	return ""
}

// replace makes the view equal to a full list and returns the IDs that
// differed (added, removed or changed), sorted.
func (v *dockerView) replace(list []Container) []string {
	var drift []string
	keep := make(map[string]bool, len(list))
	for _, c := range list {
		keep[c.ID] = true
		sandbox := ""
		if old, ok := v.byID[c.ID]; ok && old.c.EndpointID == c.EndpointID {
			sandbox = old.sandbox
		}
		if v.put(c, sandbox) {
			drift = append(drift, c.ID)
		}
	}
	for id := range v.byID {
		if !keep[id] {
			v.remove(id)
			drift = append(drift, id)
		}
	}
	v.listed = true
	sort.Strings(drift)
	return drift
}

// sameContainerInfo compares what Docker says of a container (not the
// bridge port the agent finds, nor the view's revision).
func sameContainerInfo(a, b Container) bool {
	return a.ID == b.ID && a.Name == b.Name && a.Addr == b.Addr && a.Addr4 == b.Addr4 &&
		bytes.Equal(a.MAC, b.MAC) && a.EndpointID == b.EndpointID && a.AllocID == b.AllocID &&
		a.Task == b.Task && a.Created.Equal(b.Created) && maps.Equal(a.Labels, b.Labels)
}

// refresh inspects the containers events named (bounded parallelism) and
// updates the view. A container that is gone, stopped or off the network
// leaves it. An inspect that fails for another reason returns its
// error: the caller lists everything instead.
func (v *dockerView) refresh(ctx context.Context, api DockerAPI, network string, ids []string) error {
	type result struct {
		c       Container
		sandbox string
		present bool
		err     error
	}
	res := make([]result, len(ids))
	var g errgroup.Group
	g.SetLimit(inspectParallel)
	for i, id := range ids {
		g.Go(func() error {
			ictx, cancel := context.WithTimeout(ctx, dockerListTimeout)
			defer cancel()
			r := &res[i]
			r.c, r.sandbox, r.present, r.err = inspectContainer(ictx, api, network, id)
			return nil
		})
	}
	_ = g.Wait() // each result carries its own error
	var firstErr error
	for i, id := range ids {
		r := res[i]
		switch {
		case r.err != nil:
			if firstErr == nil {
				firstErr = r.err
			}
		case r.present:
			v.put(r.c, r.sandbox)
		default:
			v.remove(id)
		}
	}
	return firstErr
}

// pendingWork is what the sources asked of the reconcile loop since it
// last ran: the containers events named (with when each was first
// named, for the event-to-applied figures), and whether everything must
// be listed again.
type pendingWork struct {
	since      time.Time // oldest unserved trigger
	containers map[string]time.Time
	relist     bool
	consul     bool // Consul may have lost registrations: list it again
}

// dockerIntake is the dockerSink of the agent.
type dockerIntake struct{ a *Agent }

func (d dockerIntake) containerEvent(id, reason string) {
	d.a.pendMu.Lock()
	if d.a.pend.containers == nil {
		d.a.pend.containers = map[string]time.Time{}
	}
	if _, ok := d.a.pend.containers[id]; !ok {
		d.a.pend.containers[id] = time.Now()
	}
	d.a.pendMu.Unlock()
	d.a.Trigger(reason)
}

func (d dockerIntake) relistEvent(reason string) {
	d.a.pendMu.Lock()
	d.a.pend.relist = true
	d.a.pendMu.Unlock()
	d.a.Trigger(reason)
}
