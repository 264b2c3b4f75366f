package firewall

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Revocation: the table accepts packets of flows conntrack knows before
// it looks at any policy, so a flow that a narrowed policy, a peer that
// left a set, or a container that went no longer allows would go on for
// as long as it stays established. After each commit that took something
// away, Apply removes the conntrack entries of the flows of the affected
// addresses that the new state does not allow. Their next packet is then
// a new flow to the table (conntrack takes up a TCP connection in the
// middle, nf_conntrack_tcp_loose), checked against the policy in force:
// dropped if it is no longer allowed, tracked again if it still is.
//
// A flow is judged by its original direction (initiator -> responder,
// the tuple before NAT): to a container, by the container's ingress; from
// a container, by its egress (and the peer container's ingress, if the
// peer is one too). Flows the node started (a health check, from any of
// its own addresses) are not filtered by the table and are kept.

// revokeFilter tells ConntrackDeleteFilters which flows to remove. The
// kernel's dump walks the whole conntrack hash (about 13 ms per family
// here, even when empty), so it runs without the Firewall's lock; the
// lock is taken at the first flow to judge, so flows are judged by the
// newest committed state, and held until the deletions are done.
type revokeFilter struct {
	f        *Firewall
	m        *model // f.m, under f.mu, from the first flow on
	locked   bool
	affected map[netip.Addr]bool
	local    map[netip.Addr]bool // the node's own addresses
}

func (r *revokeFilter) MatchConntrackFlow(flow *netlink.ConntrackFlow) bool {
	if !r.locked {
		r.f.mu.Lock()
		r.locked, r.m = true, r.f.m
		if !r.f.live {
			r.m = nil
		}
	}
	if r.m == nil {
		return false // the table is being re-read: the next revocation judges
	}
	src, ok1 := netip.AddrFromSlice(flow.Forward.SrcIP)
	dst, ok2 := netip.AddrFromSlice(flow.Forward.DstIP)
	if !ok1 || !ok2 {
		return false
	}
	src, dst = src.Unmap(), dst.Unmap()
	if !r.affected[src] && !r.affected[dst] {
		return false
	}
	if r.local[src] {
		return false // the node's own connection: never filtered
	}
	if r.local[dst] {
		// A container to the node: State.NodePorts decide.
		return r.m.addrs[src] == nil || !rulesAllow(r.m.nodePorts, nil, src, flow.Forward.Protocol, flow.Forward.DstPort)
	}
	return !r.m.allows(src, dst, flow.Forward.Protocol, flow.Forward.DstPort)
}

// allows reports whether the model's state lets a new flow from src to
// dst (protocol proto, destination port dport) through.
func (m *model) allows(src, dst netip.Addr, proto uint8, dport uint16) bool {
	from, to := m.addrs[src], m.addrs[dst]
	if from == nil && to == nil {
		return false // a flow of an address that went
	}
	if from != nil {
		if src.Is4() && dst.Is4() && to != nil {
			return false // no IPv4 between containers
		}
		if !rulesAllow(from.c.Egress, m.peers, dst, proto, dport) {
			return false
		}
	}
	if to != nil {
		if dst.Is4() {
			return false // no IPv4 ingress
		}
		if !rulesAllow(to.c.Ingress, m.peers, src, proto, dport) {
			return false
		}
	}
	return true
}

// rulesAllow reports whether one of rules admits peer (a Peer of "" or
// PeerAny admits every address).
func rulesAllow(rules []Rule, peers map[string]peerEntry, peer netip.Addr, proto uint8, dport uint16) bool {
	for _, r := range rules {
		switch r.Proto {
		case Any:
		case ICMP:
			if proto != unix.IPPROTO_ICMPV6 && proto != unix.IPPROTO_ICMP {
				continue
			}
		default:
			if uint8(r.Proto) != proto {
				continue
			}
			if len(r.Ports) > 0 && !slices.ContainsFunc(r.Ports, func(pr PortRange) bool { return dport >= pr.First && dport <= pr.Last }) {
				continue
			}
		}
		if r.Peer == PeerAny || r.Peer == "" {
			return true
		}
		if slices.ContainsFunc(peers[r.Peer].prefixes, func(p netip.Prefix) bool { return p.Contains(peer) }) {
			return true
		}
	}
	return false
}

// revokeLater queues the affected addresses for revocation and makes sure
// one goroutine runs it; revocations queued while one runs are coalesced
// into the next. Called by Apply after its commit, so Apply does not wait
// for the conntrack dump.
func (f *Firewall) revokeLater(affected map[netip.Addr]bool) {
	if len(affected) == 0 {
		return
	}
	f.revokeMu.Lock()
	defer f.revokeMu.Unlock()
	if f.revokePending == nil {
		f.revokePending = map[netip.Addr]bool{}
	}
	for a := range affected {
		f.revokePending[a] = true
	}
	if f.revoking {
		return
	}
	f.revoking = true
	go func() {
		for {
			f.revokeMu.Lock()
			next := f.revokePending
			f.revokePending = nil
			if len(next) == 0 {
				f.revoking = false
				f.revokeMu.Unlock()
				return
			}
			f.revokeMu.Unlock()
			start := time.Now()
			n, err := f.revoke(next)
			if err != nil {
				f.log.Error("firewall: revoking established flows the new state denies", "err", err)
			} else if n > 0 {
				f.log.Info("firewall: established flows the new state denies were cut", "conntrack_entries", n,
					"took", time.Since(start).Round(time.Millisecond))
			}
		}
	}()
}

// revoke removes the conntrack entries of the affected addresses' flows
// that the newest committed state no longer allows, in the Firewall's
// namespace. It returns how many it removed.
func (f *Firewall) revoke(affected map[netip.Addr]bool) (uint, error) {
	h, err := f.netlinkHandle()
	if err != nil {
		return 0, err
	}
	defer h.Close()
	local := map[netip.Addr]bool{}
	addrs, err := h.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return 0, fmt.Errorf("conntrack revocation: node addresses: %w", err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			local[ip.Unmap()] = true
		}
	}
	// One dump of both families (AF_UNSPEC) to find whether anything must
	// go; the deleting dump of a family runs only when it holds a flow to
	// cut, which is rare: most changes cut nothing.
	flows, err := h.ConntrackTableList(netlink.ConntrackTable, unix.AF_UNSPEC)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return 0, fmt.Errorf("conntrack revocation: %w", err)
	}
	fams := map[netlink.InetFamily]bool{}
	probe := &revokeFilter{f: f, affected: affected, local: local}
	for _, fl := range flows {
		if probe.MatchConntrackFlow(fl) {
			fams[netlink.InetFamily(fl.FamilyType)] = true
		}
	}
	if probe.locked {
		f.mu.Unlock()
	}
	var n uint
	for _, fam := range []netlink.InetFamily{unix.AF_INET6, unix.AF_INET} {
		if !fams[fam] {
			continue
		}
		flt := &revokeFilter{f: f, affected: affected, local: local}
		k, err := h.ConntrackDeleteFilters(netlink.ConntrackTable, fam, flt)
		if flt.locked {
			f.mu.Unlock()
		}
		n += k
		if err != nil {
			return n, fmt.Errorf("conntrack revocation: %w", err)
		}
	}
	return n, nil
}

func (f *Firewall) netlinkHandle() (*netlink.Handle, error) {
	if f.nsfd == 0 {
		return netlink.NewHandle(unix.NETLINK_NETFILTER, unix.NETLINK_ROUTE)
	}
	return netlink.NewHandleAt(netns.NsHandle(f.nsfd), unix.NETLINK_NETFILTER, unix.NETLINK_ROUTE)
}

// affectedBy lists the addresses whose flows next may allow less than
// prev did: containers that went or changed, and containers naming a peer
// set that lost addresses. Both models are complete (prev may be nil).
func affectedBy(prev, next *model) map[netip.Addr]bool {
	out := map[netip.Addr]bool{}
	if prev == nil {
		// A fresh Firewall (agent start): the kernel may hold flows of an
		// older state (the agent was down while a policy narrowed, or the
		// node ran without the table). Judge every container's flows once.
		for _, c := range next.conts {
			c.c.addAddrs(out)
		}
		return out
	}
	add := func(c *Container) { c.addAddrs(out) }
	for id, old := range prev.conts {
		if nc := next.conts[id]; nc == nil || !SameContainer(&old.c, &nc.c) {
			add(&old.c)
		}
	}
	var shrunk []string
	for name, old := range prev.peers {
		if lost(old.prefixes, next.peers[name].prefixes) {
			shrunk = append(shrunk, name)
		}
	}
	if len(prev.nodePorts) != len(next.nodePorts) || !SameRules(prev.nodePorts, next.nodePorts) {
		for _, c := range next.conts {
			add(&c.c)
		}
		return out
	}
	if len(shrunk) > 0 {
		for _, c := range next.conts {
			if slices.ContainsFunc(c.peers, func(p string) bool { return slices.Contains(shrunk, p) }) {
				add(&c.c)
			}
		}
	}
	return out
}

// lost reports whether some address of old is not in next.
func lost(old, next []netip.Prefix) bool {
	return slices.ContainsFunc(old, func(p netip.Prefix) bool {
		return !slices.ContainsFunc(next, func(q netip.Prefix) bool { return q.Bits() <= p.Bits() && q.Contains(p.Addr()) })
	})
}

// addAddrs puts the container's addresses (IPv6, and IPv4 if it has one)
// into set.
func (c *Container) addAddrs(set map[netip.Addr]bool) {
	if c.Addr.IsValid() { // a closed container has none
		set[c.Addr] = true
	}
	if c.Addr4.IsValid() {
		set[c.Addr4] = true
	}
}
