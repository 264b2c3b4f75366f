package firewall

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// Docker 29's nftables firewall backend (firewall-backend nftables) keeps
// its rules in table ip6 docker-bridges, which has no DOCKER-USER chain and
// which Docker owns whole. For a routed network it drops unpublished
// ports ("UNPUBLISHED PORT DROP") unless the packet carries the mark the
// operator names with the daemon option bridge-accept-fwmark
// ("ALLOW FW MARK"). DockerAcceptMark reads that mark from Docker's own
// rule; EnsureDockerMark sets it, in a table of v6reg's own (ip6
// v6reg-docker, chain forward, priority filter - 1 so it runs before
// Docker's chains), on every packet to the prefix out of the bridge:
//
//	oifname <bridge> ip6 daddr <prefix> meta mark set meta mark & ~mask | mark
//
// The same opening as the DOCKER-USER rule of the iptables backend: Docker
// defers to table inet v6reg for the prefix, whose drops stay final.

const (
	dockerNftTable    = "docker-bridges"
	dockerMarkTable   = "v6reg-docker"
	dockerMarkComment = "ALLOW FW MARK"
)

// DockerAcceptMark returns the mark and mask Docker's nftables backend
// accepts on bridge. backend is false when there is no table ip6
// docker-bridges (Docker uses iptables, or does not filter IPv6); found is
// false when the table is there but has no such rule for bridge (the
// daemon runs without bridge-accept-fwmark).
func DockerAcceptMark(conn *nftables.Conn, bridge string) (mark, mask uint32, backend, found bool, err error) {
	tables, err := conn.ListTablesOfFamily(nftables.TableFamilyIPv6)
	if err != nil {
		return 0, 0, false, false, fmt.Errorf("listing ip6 tables: %w", err)
	}
	var t *nftables.Table
	for _, x := range tables {
		if x.Name == dockerNftTable {
			t = x
		}
	}
	if t == nil {
		return 0, 0, false, false, nil
	}
	rules, err := conn.GetRules(t, &nftables.Chain{Name: "filter-forward-in__" + bridge, Table: t})
	if err != nil {
		return 0, 0, true, false, fmt.Errorf("reading Docker's forward chain of %s: %w", bridge, err)
	}
	for _, r := range rules {
		if mark, mask, ok := acceptMarkOf(r); ok {
			return mark, mask, true, true, nil
		}
	}
	return 0, 0, true, false, nil
}

// acceptMarkOf recognises `meta mark [and MASK] == MARK ... accept`.
func acceptMarkOf(r *nftables.Rule) (mark, mask uint32, ok bool) {
	mask = ^uint32(0)
	metaSeen, cmpSeen, accept := false, false, false
	for _, e := range r.Exprs {
		switch x := e.(type) {
		case *expr.Meta:
			metaSeen = metaSeen || (x.Key == expr.MetaKeyMARK && !x.SourceRegister)
		case *expr.Bitwise:
			if metaSeen && len(x.Mask) == 4 {
				mask = binary.NativeEndian.Uint32(x.Mask)
			}
		case *expr.Cmp:
			if metaSeen && x.Op == expr.CmpOpEq && len(x.Data) == 4 {
				mark, cmpSeen = binary.NativeEndian.Uint32(x.Data), true
			}
		case *expr.Verdict:
			accept = x.Kind == expr.VerdictAccept
		}
	}
	return mark, mask, metaSeen && cmpSeen && accept && mark != 0
}

// EnsureDockerMark makes table ip6 v6reg-docker mark every packet to
// prefix out of bridge with mark (within mask). It returns true when it
// changed the table; an unchanged table is only read.
func EnsureDockerMark(conn *nftables.Conn, prefix netip.Prefix, bridge string, mark, mask uint32) (bool, error) {
	if err := checkDockerArgs(prefix, bridge); err != nil {
		return false, err
	}
	t := &nftables.Table{Family: nftables.TableFamilyIPv6, Name: dockerMarkTable}
	prio := nftables.ChainPriorityRef(*nftables.ChainPriorityFilter - 1)
	accept := nftables.ChainPolicyAccept
	c := &nftables.Chain{Name: "forward", Table: t, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookForward, Priority: prio, Policy: &accept}
	n := uint32(prefix.Bits()) / 8 //nolint:gosec // G115: checked above, 0..128
	addr := prefix.Masked().Addr().As16()
	u32 := func(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }
	want := &nftables.Rule{Table: t, Chain: c, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: append([]byte(bridge), 0)},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 24, Len: n},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: addr[:n]},
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: u32(^mask), Xor: u32(mark & mask)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
		&expr.Counter{},
	}, UserData: userdata.AppendString(nil, userdata.TypeComment, "v6reg: Docker's bridge-accept-fwmark for the node prefix, filtered by table inet v6reg")}
	if rules, err := conn.GetRules(t, c); err == nil && len(rules) == 1 && sameExprs(rules[0].Exprs, want.Exprs) {
		chains, err := conn.ListChainsOfTableFamily(nftables.TableFamilyIPv6)
		if err != nil {
			return false, fmt.Errorf("listing ip6 chains: %w", err)
		}
		for _, x := range chains {
			if x.Table.Name == dockerMarkTable && x.Name == c.Name && x.Priority != nil && *x.Priority == *prio && x.Hooknum != nil && *x.Hooknum == *c.Hooknum {
				return false, nil
			}
		}
	}
	conn.AddTable(t)
	conn.DelTable(t) // rebuilt whole: it holds one chain and one rule
	conn.AddTable(t)
	conn.AddChain(c)
	conn.AddRule(want)
	if err := conn.Flush(); err != nil {
		return false, fmt.Errorf("table ip6 %s: %w", dockerMarkTable, err)
	}
	return true, nil
}

func checkDockerArgs(prefix netip.Prefix, bridge string) error {
	if !prefix.Addr().Is6() || prefix.Bits()%8 != 0 || bridge == "" || len(bridge) >= unix.IFNAMSIZ {
		return fmt.Errorf("docker firewall: need an IPv6 prefix on a byte boundary and a bridge name, have %s and %q", prefix, bridge)
	}
	return nil
}
