package firewall

import (
	"context"
	"errors"
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Counter is a packet and byte count.
type Counter struct{ Packets, Bytes uint64 }

// DirCounters are one container's drops by direction.
type DirCounters struct {
	IngressDropped Counter // packets to the container that no ingress rule allowed
	EgressDropped  Counter // packets from the container that no egress rule allowed
}

// Counters reads the drop counters of every programmed container, keyed by
// container ID. Counters start at zero when a container is added and live
// as long as its address is programmed. A closed container's are the
// frames its bridge port dropped, counted as egress (port_closed); they
// start again at zero when it is closed again.
func (f *Firewall) Counters(ctx context.Context) (map[string]DirCounters, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	// One netlink conversation at a time: a lasting conn shared by Apply
	// (the reconcile, the watch) and this reader (the status API,
	// /metrics) would interleave replies and hang a receive.
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]DirCounters{}
	for _, qname := range []string{"in_drop", "eg_drop", "eg4_drop", inBridge("port_closed")} {
		t, name := tableOf(qname)
		cs, err := f.setCounters(&nftables.Set{Table: t, Name: name})
		if t == bridgeTable && errors.Is(err, unix.ENOENT) {
			continue // a bridge table of an older layout, before its first Apply
		}
		if err != nil {
			return nil, fmt.Errorf("read drop counters from set %s: %w", qname, err)
		}
		for owner, c := range cs {
			d := out[owner]
			switch name {
			case "in_drop":
				d.IngressDropped = c
			default: // eg_drop, eg4_drop (IPv4 egress counts as egress too), port_closed
				d.EgressDropped.Packets += c.Packets
				d.EgressDropped.Bytes += c.Bytes
			}
			out[owner] = d
		}
	}
	return out, nil
}

// setCounters reads the counter of each element of set s, by the
// element's comment (its owner). It holds f.mu for as long as it reads
// (Apply waits), so it reads through elemReader, whose large buffer makes
// the kernel's dump of 10,000 elements several times cheaper (see
// liveread.go), and through the nftables conn only if that fails.
func (f *Firewall) setCounters(s *nftables.Set) (map[string]Counter, error) {
	if len(f.elems) > 0 {
		out := map[string]Counter{}
		whole, err := f.elems[0].dump(s, func(e *dumpElem) {
			if e.counter != nil {
				out[string(e.comment)] = *e.counter
			}
		})
		if err == nil && whole {
			return out, nil
		}
		f.log.Debug("firewall: fast read of counters failed; reading them through the nftables conn", "set", s.Name, "err", err)
	}
	elems, err := f.conn.GetSetElements(s)
	if err != nil {
		return nil, err
	}
	out := make(map[string]Counter, len(elems))
	for _, e := range elems {
		if e.Counter != nil {
			out[e.Comment] = Counter{Packets: e.Counter.Packets, Bytes: e.Counter.Bytes}
		}
	}
	return out, nil
}

// SpoofDrops reads how many packets were dropped because their source was
// in the prefix but owned by no container, came from the wrong link, came
// from another MAC than its container's (Container.MAC), whether they
// were forwarded (chain "egress") or addressed to the node (chain "node"),
// or entered the bridge through another port than its container's
// (Container.Port; chain prerouting of table bridge v6reg), and frames
// of any protocol entering a container's port from another MAC than its
// container's (same chain).
func (f *Firewall) SpoofDrops(ctx context.Context) (Counter, error) {
	return f.chainDrops(ctx, "spoof", "spoof4", "node", inBridge("prerouting"))
}

// PortSpoofDrops is the part of SpoofDrops that the bridge port checks
// counted alone: frames entering a container's port from another MAC than
// the container's (of any protocol), and packets whose source address and
// MAC both were another container's (the inet MAC check cannot tell them
// apart).
func (f *Firewall) PortSpoofDrops(ctx context.Context) (Counter, error) {
	return f.chainDrops(ctx, inBridge("prerouting"))
}

// SpoofDropsByCheck is SpoofDrops split by where it was counted, each
// chain read once: bridgePort is PortSpoofDrops, source the inet table's
// checks (unowned prefix source, wrong link, wrong MAC).
func (f *Firewall) SpoofDropsByCheck(ctx context.Context) (bridgePort, source Counter, err error) {
	if bridgePort, err = f.chainDrops(ctx, inBridge("prerouting")); err != nil {
		return Counter{}, Counter{}, err
	}
	if source, err = f.chainDrops(ctx, "spoof", "spoof4", "node"); err != nil {
		return Counter{}, Counter{}, err
	}
	return bridgePort, source, nil
}

// chainDrops sums the counters of the rules of the chains (qualified as
// tableOf reads them); only the anti-spoofing rules (wrong link, unowned
// address, wrong MAC, wrong bridge port) carry counters.
func (f *Firewall) chainDrops(ctx context.Context, qchains ...string) (Counter, error) {
	if err := ctx.Err(); err != nil {
		return Counter{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var sum Counter
	for _, qchain := range qchains {
		t, chain := tableOf(qchain)
		rules, err := f.conn.GetRules(t, &nftables.Chain{Table: t, Name: chain})
		if qchain != "spoof" && errors.Is(err, unix.ENOENT) {
			continue // a table of an older layout, before its first Apply
		}
		if err != nil {
			return Counter{}, fmt.Errorf("read anti-spoofing counters of chain %s: %w", chain, err)
		}
		for _, r := range rules {
			for _, e := range r.Exprs {
				if c, ok := e.(*expr.Counter); ok {
					sum.Packets += c.Packets
					sum.Bytes += c.Bytes
				}
			}
		}
	}
	return sum, nil
}
