package docker

import (
	"bytes"
	"context"
	"maps"
	"sort"
)

// View is the agent's copy of the containers on the v6reg network,
// kept by events: an event names one container, and the reconcile loop
// reads back those its events named (Refresh: one filtered list) instead
// of listing every container.
// The periodic full resync lists them all and counts what the events had
// missed (the drift, which should be zero). Only the reconcile loop uses
// it.
type View struct {
	Listed bool // a list was read: the view is complete
	byID   map[string]*viewEntry
	sorted []Container // by ID; nil when an entry changed
	revs   uint64      // the last Container.rev given
}

type viewEntry struct {
	c Container
}

// NewView is an empty view; the first reconcile lists the containers.
func NewView() *View { return &View{byID: map[string]*viewEntry{}} }

// Put stores c, keeping its rev when nothing of it changed. It reports
// whether it changed.
func (v *View) Put(c Container) bool {
	old, ok := v.byID[c.ID]
	if ok && SameInfo(old.c, c) {
		return false
	}
	v.revs++
	c.Rev = v.revs
	v.byID[c.ID] = &viewEntry{c: c}
	v.sorted = nil
	return true
}

// Remove forgets a container; it reports whether it was there.
func (v *View) Remove(id string) bool {
	if _, ok := v.byID[id]; !ok {
		return false
	}
	delete(v.byID, id)
	v.sorted = nil
	return true
}

// Containers lists the view by ID. The slice is the view's: callers
// copy before changing an element.
func (v *View) Containers() []Container {
	if v.sorted == nil {
		v.sorted = make([]Container, 0, len(v.byID))
		for _, e := range v.byID {
			v.sorted = append(v.sorted, e.c)
		}
		sort.Slice(v.sorted, func(i, j int) bool { return v.sorted[i].ID < v.sorted[j].ID })
	}
	return v.sorted
}

// Replace makes the view equal to a full list and returns the IDs that
// differed (added, removed or changed), sorted.
func (v *View) Replace(list []Container) []string {
	var drift []string
	keep := make(map[string]bool, len(list))
	for _, c := range list {
		keep[c.ID] = true
		if v.Put(c) {
			drift = append(drift, c.ID)
		}
	}
	for id := range v.byID {
		if !keep[id] {
			v.Remove(id)
			drift = append(drift, id)
		}
	}
	v.Listed = true
	sort.Strings(drift)
	return drift
}

// SameInfo compares what Docker says of a container (not the
// bridge port the agent finds, nor the view's revision).
func SameInfo(a, b Container) bool {
	return a.ID == b.ID && a.Name == b.Name && a.Addr == b.Addr && a.Addr4 == b.Addr4 &&
		bytes.Equal(a.MAC, b.MAC) && a.EndpointID == b.EndpointID && a.AllocID == b.AllocID &&
		a.Task == b.Task && a.Created.Equal(b.Created) && maps.Equal(a.Labels, b.Labels)
}

// Refresh reads again the containers events named (one filtered list)
// and updates the view: a container that is not running on the network
// any more, or not yet, leaves it (its start event brings it back).
func (v *View) Refresh(ctx context.Context, api API, network string, ids []string) error {
	lctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	list, err := List(lctx, api, network, ids...)
	if err != nil {
		return err
	}
	found := make(map[string]bool, len(list))
	for _, c := range list {
		found[c.ID] = true
		v.Put(c)
	}
	for _, id := range ids {
		if !found[id] {
			v.Remove(id)
		}
	}
	return nil
}
