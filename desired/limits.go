package desired

import (
	"github.com/v6reg/v6reg/internal/text"
	"github.com/v6reg/v6reg/peers"

	"fmt"
	"net/netip"
	"sort"
	"strings"

	"github.com/v6reg/v6reg/firewall"
	"github.com/v6reg/v6reg/policies"
)

// Size limits (policies.Limits), held after build: build says what each
// policy asks for, EnforceLimits decides what the node can hold. It runs
// on the desired state, not inside build, so a limit sees the firewall
// exactly as it will be compiled (firewall.CountElements) and the peer
// sets as Consul answered them.
//
// Per container: a policy naming more distinct service:/job: peers than
// limits.container_peers, or compiling to more elements than
// limits.container_elements, is refused like any bad policy: the
// container is closed, Errors say which limit, its value, the count and
// what to do, and its Consul registrations carry the critical check.
// Its peers are not watched: refusing happens before the watches start.
//
// Per node: containers are admitted in a stable order (those open in the
// last applied desired state first, then by creation time, then ID) while
// the node's elements (peer lists counted once) and distinct peer sets
// stay within limits.node_elements and limits.node_peer_sets; the rest
// are closed, naming the node limit. So a new container can never push
// out one that is in force. A closed container keeps its base elements
// (address, counters, bindings): they are what keeps it closed, and they
// count towards the node's total.

// Limit names, as the refusal metric labels them.
const (
	limitContainerElements = "container_elements"
	limitContainerPeers    = "container_peers"
	limitNodeElements      = "node_elements"
	limitNodePeerSets      = "node_peer_sets"
)

// LimitNames are the label values of v6reg_limit_refusals.
var LimitNames = []string{limitContainerElements, limitContainerPeers, limitNodeElements, limitNodePeerSets}

// LimitReport is what EnforceLimits did, for metrics and status.
type LimitReport struct {
	Refused  map[string]int // containers closed, by limit
	Elements int            // the node's elements after enforcing
	PeerSets int            // distinct Consul-backed peer sets in use
}

// consulPeersOf lists the distinct Consul-backed peers of a container's rules, sorted.
func consulPeersOf(c firewall.Container) []string {
	seen := map[string]bool{}
	var out []string
	for _, rs := range [][]firewall.Rule{c.Ingress, c.Egress} {
		for _, r := range rs {
			if peers.IsKeyName(r.Peer) && !seen[r.Peer] {
				seen[r.Peer] = true
				out = append(out, r.Peer)
			}
		}
	}
	sort.Strings(out)
	return out
}

// ContainerLimitErrors checks one container's policy against the
// per-container limits, as the agent does, for `v6reg policy check`.
// Consul-backed peers count as empty sets there (their size is only
// known on a node), so the element count is a lower bound.
func ContainerLimitErrors(pol policies.Policy, namespace string, op policies.Operator, group, task string) []*policies.Error {
	lim := op.Limits.OrDefault()
	sets, keys := map[string][]netip.Prefix{}, map[peers.Key]bool{}
	// A stand-in container with both families, as on a node with IPv4 egress.
	fc := firewall.Container{ID: "policy-check", Addr: netip.MustParseAddr("2001:db8::1"), Addr4: netip.MustParseAddr("172.30.0.2"),
		MAC: []byte{2, 0, 0, 0, 0, 1}, Port: 1}
	fc.Ingress = firewallRules(pol.Ingress, namespace, sets, keys)
	fc.Egress = firewallRules(pol.Egress, namespace, sets, keys)
	var errs []*policies.Error
	count := func(c firewall.Container) firewall.ElementCount {
		return firewall.CountElements(c, func(n string) []netip.Prefix { return sets[n] })
	}
	if e := containerLimitError(fc, lim, count, true); e != nil {
		e.Group, e.Task = group, task
		errs = append(errs, e)
	}
	return errs
}

// containerLimitError is the per-container limit fc breaks, if any: too
// many Consul-backed peers first (its sets are then never fetched), else
// too many elements.
func containerLimitError(fc firewall.Container, lim policies.Limits, count func(firewall.Container) firewall.ElementCount, atLeast bool) *policies.Error {
	if n := len(consulPeersOf(fc)); n > lim.ContainerPeers {
		return lim.ContainerPeersError(n)
	}
	if n := count(fc).Total(); n > lim.ContainerElements {
		return lim.ContainerElementsError(n, atLeast)
	}
	return nil
}

// EnforceLimits closes the workloads of d that break a limit, strips their
// rules and gives them the critical registrations of a refused policy,
// and drops the peer sets and peer keys no open container names any more
// (so a refused policy starts no watch). prev is the desired state last
// applied (nil at start): the containers open there are admitted first.
func EnforceLimits(d *Desired, in Input, prev *Desired) LimitReport {
	lim := in.Operator.Limits.OrDefault()
	rep := LimitReport{Refused: map[string]int{}}
	sets := func(n string) []netip.Prefix { return d.Firewall.PeerSets[n] }
	// Counted by compiling each container; the counter keeps the
	// compilations of unchanged containers from pass to pass.
	counter := in.Elements
	if counter == nil {
		counter = firewall.NewElementCounter()
	}
	counter.StartPass()
	count := func(c firewall.Container) firewall.ElementCount { return counter.Count(c, sets) }
	wl := make(map[string]int, len(d.Workloads)) // container ID -> index in d.Workloads
	for i, w := range d.Workloads {
		wl[w.Container.ID] = i
	}
	refuse := func(fc *firewall.Container, limit string, e *policies.Error) {
		rep.Refused[limit]++
		fc.Ingress, fc.Egress = nil, nil
		i, ok := wl[fc.ID]
		if !ok {
			return
		}
		delete(d.Digests, fc.ID)
		w := &d.Workloads[i]
		for _, r := range registrationsFor(*w, in) {
			delete(d.Registrations, r.ID)
			delete(d.RegHashes, r.ID) // the registrar hashes what replaces it
		}
		if w.Source == "labels" {
			e.Level = policies.LevelLabel
		} else {
			e.Level, e.Job, e.Group, e.Task = policies.LevelTask, w.Job, w.Group, w.Task
		}
		w.Errors = append(w.Errors, text.Cut(e.Error(), MaxErrorLen))
		w.Closed = true
		// The reason names the limit, its value and the count, so that
		// explain (which shows the reason) says it all; the hint is in
		// Errors.
		w.Reason = "refused by a size limit: " + e.Msg
		for _, r := range registrationsFor(*w, in) {
			d.Registrations[r.ID] = r
		}
	}

	// Per container.
	for i := range d.Firewall.Containers {
		fc := &d.Firewall.Containers[i]
		if len(fc.Ingress)+len(fc.Egress) == 0 {
			continue
		}
		if e := containerLimitError(*fc, lim, count, false); e != nil {
			limit := limitContainerElements
			if strings.Contains(e.Msg, policies.FieldContainerPeers) {
				limit = limitContainerPeers
			}
			refuse(fc, limit, e)
		}
	}

	// Per node, in a stable order.
	wasOpen := map[string]bool{}
	if prev != nil {
		for _, w := range prev.Workloads {
			if !w.Closed {
				wasOpen[w.Container.ID] = true
			}
		}
	}
	order := make([]int, len(d.Firewall.Containers))
	created := map[string]int64{}
	for i := range order {
		order[i] = i
		if j, ok := wl[d.Firewall.Containers[i].ID]; ok {
			created[d.Firewall.Containers[i].ID] = d.Workloads[j].Container.Created.UnixNano()
		}
	}
	sort.SliceStable(order, func(a, b int) bool {
		x, y := d.Firewall.Containers[order[a]].ID, d.Firewall.Containers[order[b]].ID
		if wasOpen[x] != wasOpen[y] {
			return wasOpen[x]
		}
		if created[x] != created[y] {
			return created[x] < created[y]
		}
		return x < y
	})
	lists := map[string]bool{}
	keys := map[string]bool{}
	for _, i := range order {
		fc := &d.Firewall.Containers[i]
		n := count(*fc)
		cost := n.Own
		for k, v := range n.Lists {
			if !lists[k] {
				cost += v
			}
		}
		var newKeys []string
		for _, k := range consulPeersOf(*fc) {
			if !keys[k] {
				newKeys = append(newKeys, k)
			}
		}
		switch {
		case len(fc.Ingress)+len(fc.Egress) == 0:
		case rep.Elements+cost > lim.NodeElements:
			refuse(fc, limitNodeElements, &policies.Error{
				Msg: fmt.Sprintf("the node is full: this container adds %d firewall elements to the node's %d; the limit is %d per node (%s)",
					cost, rep.Elements, lim.NodeElements, policies.FieldNodeElements),
				Hint: "the containers already running keep their place; run it on another node, or ask the operator to raise " + policies.FieldNodeElements,
			})
		case len(keys)+len(newKeys) > lim.NodePeerSets:
			refuse(fc, limitNodePeerSets, &policies.Error{
				Msg: fmt.Sprintf("the node is full: this container names %d service:/job: peers not yet watched here, the node's containers %d; the limit is %d per node (%s)",
					len(newKeys), len(keys), lim.NodePeerSets, policies.FieldNodePeerSets),
				Hint: "the containers already running keep their place; run it on another node, or ask the operator to raise " + policies.FieldNodePeerSets,
			})
		default:
			rep.Elements += cost
			for k := range n.Lists {
				lists[k] = true
			}
			for _, k := range newKeys {
				keys[k] = true
			}
			continue
		}
		rep.Elements += count(*fc).Own // refused or closed: its base elements
	}

	// Only what open containers name stays: peer sets and watches.
	named := map[string]bool{}
	for _, fc := range d.Firewall.Containers {
		for _, rs := range [][]firewall.Rule{fc.Ingress, fc.Egress} {
			for _, r := range rs {
				named[r.Peer] = true
			}
		}
	}
	for name := range d.Firewall.PeerSets {
		if !named[name] {
			delete(d.Firewall.PeerSets, name)
		}
	}
	for k := range d.PeerKeys {
		if !named[k.String()] {
			delete(d.PeerKeys, k)
		}
	}
	rep.PeerSets = len(d.PeerKeys)
	return rep
}
