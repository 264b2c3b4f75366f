package agent

import (
	"github.com/v6reg/v6reg/api"
	"github.com/v6reg/v6reg/desired"
	"github.com/v6reg/v6reg/peers"

	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/v6reg/v6reg/policies"
)

// Explain answers q from the last reconcile's state and the kernel's
// counters.
func (a *Agent) Explain(ctx context.Context, q api.ExplainQuery) (api.ExplainAnswer, error) {
	d := a.lastDesired.Load()
	if d == nil {
		return api.ExplainAnswer{}, fmt.Errorf("no reconcile has run yet; try again in a few seconds")
	}
	w, err := findWorkload(d.Workloads, q.Target)
	if err != nil {
		return api.ExplainAnswer{}, err
	}
	snap, _ := a.withDrops(ctx)
	var cs api.ContainerState
	for _, c := range snap.Containers {
		if c.ID == w.Container.ID {
			cs = c
		}
	}
	ans := api.ExplainAnswer{Container: cs, IngressSource: w.IngressSource, EgressSource: w.EgressSource}
	if q.Direction == "" {
		ans.Reason = "rules listed; add 'from PEER port N/proto' or 'to PEER port N/proto' to check a flow"
		if w.Closed {
			ans.Reason = "closed: " + w.Reason
		}
		return ans, nil
	}
	rules, src := w.Policy.Ingress, w.IngressSource
	if q.Direction == "to" {
		rules, src = w.Policy.Egress, w.EgressSource
	} else if q.Direction != "from" {
		return api.ExplainAnswer{}, fmt.Errorf("direction %q: use from (ingress) or to (egress)", q.Direction)
	}
	ans.Verdict = "deny"
	if w.Closed {
		ans.Reason = "the container is closed: " + w.Reason
		return ans, nil
	}
	proto := policies.TCP
	switch strings.ToLower(q.Proto) {
	case "", "tcp":
	case "udp":
		proto = policies.UDP
	case "icmp", "icmpv6", "ping":
		proto = policies.ICMP
	default:
		return api.ExplainAnswer{}, fmt.Errorf("protocol %q: use tcp, udp or icmp", q.Proto)
	}
	if a, err := netip.ParseAddr(q.Peer); err == nil && a.Unmap().Is4() && q.Direction == "from" {
		ans.Reason = fmt.Sprintf("%s is IPv4: containers take IPv6-only ingress; IPv4 reaches a container only as replies to its own egress", q.Peer)
		return ans, nil
	}
	for _, r := range rules {
		if !ruleMatches(r, proto, q.Port) {
			continue
		}
		if ok, why := peerMatches(r, q.Peer, w.Namespace, d); ok {
			ans.Verdict, ans.Rule, ans.Source = "allow", r.Source, src
			ans.Reason = why
			if key, err := peers.ParseKey(peerKeyOf(q.Peer, w.Namespace)); err == nil {
				if c, ok := a.peerCut(key); ok {
					pc := apiCut(c, nil)
					ans.PeerCut = &pc
					ans.Reason += fmt.Sprintf("; but %s: the later ones are denied", cutWords(c))
				}
			}
			return ans, nil
		}
	}
	ans.Reason = fmt.Sprintf("no %s rule allows %s %s port %d/%s; the default is deny", directionWord(q.Direction), q.Direction, q.Peer, q.Port, proto)
	if len(rules) == 0 {
		ans.Reason = fmt.Sprintf("the container has no %s rules (set %s); the default is deny", directionWord(q.Direction), metaKeyFor(q.Direction))
	}
	if addr, err := netip.ParseAddr(q.Peer); err == nil {
		a.explainCut(ctx, &ans, rules, proto, q.Port, addr, w.Namespace, d)
	}
	return ans, nil
}

// explainCut adds to a deny why a rule that names a service: or job: peer
// of addr does not admit it: the peer's set is cut to
// limits.peer_set_addresses and addr is one of the registrations past the
// limit. Consul is asked (peers.Resolve, cut as the watches cut) only for
// the sets the rules could hinge on that are full.
func (a *Agent) explainCut(ctx context.Context, ans *api.ExplainAnswer, rules []policies.ResolvedRule, proto policies.Proto, port uint16,
	addr netip.Addr, namespace string, d *desired.Desired) {
	if a.peers == nil {
		return
	}
	now := a.peerSetAddresses()
	for _, r := range rules {
		if !ruleMatches(r, proto, port) {
			continue
		}
		var keys []peers.Key
		for _, s := range r.Services {
			keys = append(keys, peers.ServiceKey(namespace, s))
		}
		for _, j := range r.Jobs {
			keys = append(keys, peers.JobKey(namespace, j))
		}
		for _, k := range keys {
			// The limit the firewall's set was cut with; a set that is
			// not cut and smaller than the limit cannot hinge on it.
			limit := now
			if c, ok := a.peerCut(k); ok {
				limit = c.Limit
			} else if len(d.Firewall.PeerSets[k.String()]) < limit {
				continue
			}
			cctx, cancel := context.WithTimeout(ctx, consulHealthTimeout)
			res, err := peers.Resolve(cctx, a.peerAPI(), a.o.IDPrefix, k, limit)
			cancel()
			if err != nil {
				ans.Reason += fmt.Sprintf("; %s is cut to limits.peer_set_addresses, and whether %s is among the registrations cut is unknown: %v", k, addr, err)
				continue
			}
			c, ok := res.Cut(k)
			if !ok || !inSet(res.Over, addr) {
				continue
			}
			pc := apiCut(c, nil)
			ans.PeerCut = &pc
			ans.Reason = fmt.Sprintf("%s; rule %q would admit it, but %s: %s is not among them (registered later)", ans.Reason, r.Source, cutWords(c), addr)
			return
		}
	}
}

// cutWords says how a peer set is cut.
func cutWords(c peers.Cut) string {
	return fmt.Sprintf("%s has %d addresses in Consul; limits.peer_set_addresses keeps the first %d registered", c.Key, c.Registrations, c.Limit)
}

// peerKeyOf is the key string of a peer as policies write it
// (service:NAME, service:NS/NAME, job:NAME) in namespace, or "".
func peerKeyOf(peer, namespace string) string {
	if name, ok := strings.CutPrefix(peer, "service:"); ok {
		return peers.ServiceKey(namespace, name).String()
	}
	if job, ok := strings.CutPrefix(peer, "job:"); ok {
		return peers.JobKey(namespace, job).String()
	}
	return ""
}

func directionWord(dir string) string {
	if dir == "to" {
		return "egress"
	}
	return "ingress"
}

func metaKeyFor(dir string) string {
	if dir == "to" {
		return "v6reg_egress"
	}
	return "v6reg_ingress"
}

func findWorkload(ws []desired.Workload, target string) (*desired.Workload, error) {
	addr, err := netip.ParseAddr(target)
	isAddr := err == nil
	var found, exact []*desired.Workload
	for i := range ws {
		w := &ws[i]
		c := w.Container
		switch {
		case isAddr && (c.Addr == addr || c.Addr4.IsValid() && c.Addr4 == addr):
		case !isAddr && target != "" && (c.Name == target || c.ID == target || c.AllocID == target):
			// A whole name or ID is found however short it is, and wins
			// over another container's ID that merely starts with it
			// (a container named "cafe" and an ID cafe12...).
			exact = append(exact, w)
		case !isAddr && len(target) >= 4 && (strings.HasPrefix(c.ID, target) || strings.HasPrefix(c.AllocID, target)):
		default:
			continue
		}
		found = append(found, w)
	}
	if len(exact) == 1 {
		return exact[0], nil
	}
	switch len(found) {
	case 0:
		return nil, fmt.Errorf("no managed container has address, ID, name or allocation %q; `v6reg status` lists them", target)
	case 1:
		return found[0], nil
	}
	var names []string
	for _, w := range found {
		names = append(names, w.Container.Name)
	}
	return nil, fmt.Errorf("%q matches %d containers (%s); give more of the ID, or the address", target, len(found), strings.Join(names, ", "))
}

func ruleMatches(r policies.ResolvedRule, proto policies.Proto, port uint16) bool {
	switch r.Proto {
	case policies.Any:
		return true
	case proto:
	default:
		return false
	}
	if proto == policies.ICMP || len(r.Ports) == 0 {
		return true
	}
	return slices.ContainsFunc(r.Ports, func(pr policies.PortRange) bool { return pr.From <= port && port <= pr.To })
}

// peerMatches says whether peer is among the rule's peers: an address is
// looked up in the resolved prefixes and Consul-backed sets, a name is
// compared with the rule as written.
func peerMatches(r policies.ResolvedRule, peer, namespace string, d *desired.Desired) (bool, string) {
	if a, err := netip.ParseAddr(peer); err == nil {
		for _, p := range r.Prefixes {
			if p.Contains(a) {
				return true, fmt.Sprintf("%s is in %s", a, p)
			}
		}
		for _, s := range r.Services {
			if inSet(d.Firewall.PeerSets[peers.ServiceKey(namespace, s).String()], a) {
				return true, fmt.Sprintf("%s is an instance of Consul service %s", a, s)
			}
		}
		for _, j := range r.Jobs {
			if inSet(d.Firewall.PeerSets["job:"+namespace+"/"+j], a) {
				return true, fmt.Sprintf("%s is a container of job %s", a, j)
			}
		}
		return false, ""
	}
	_, peers, _ := strings.Cut(r.Source, " from ")
	if peers == "" {
		_, peers, _ = strings.Cut(r.Source, " to ")
	}
	for _, p := range strings.Split(peers, ",") {
		if strings.TrimSpace(p) == peer {
			return true, "the rule names " + peer
		}
	}
	return false, ""
}

func inSet(ps []netip.Prefix, a netip.Addr) bool {
	return slices.ContainsFunc(ps, func(p netip.Prefix) bool { return p.Contains(a) })
}
