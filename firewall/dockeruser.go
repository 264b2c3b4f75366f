package firewall

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
)

// Docker 27+ filters routed IPv6 to its bridge networks in ip6tables: for
// a network in gateway mode "routed" its chain DOCKER ends with
// `! -i <bridge> -o <bridge> -j DROP`, so whatever table inet v6reg
// accepts, Docker drops (a drop in any table is final). Docker's own hook
// for rules of the node's operator is chain DOCKER-USER, which chain
// FORWARD jumps to before any of Docker's chains and which Docker never
// flushes. EnsureDockerUserAccept puts one rule there, the equivalent of
//
//	ip6tables -I DOCKER-USER -d <prefix> -o <bridge> -m comment --comment "v6reg ..." -j ACCEPT
//
// so that Docker lets through to v6reg's network what table inet v6reg
// lets through, and nothing else: every packet still crosses table inet
// v6reg, whose drops stay final, and Docker keeps protecting its other
// networks. The rule is written with the native expressions ip6tables-nft
// itself writes for those options, so `ip6tables -S DOCKER-USER` shows it
// and Docker's ip6tables calls keep working on that table.

// Docker's iptables-nft table and chain.
const (
	dockerUserChain = "DOCKER-USER"
	dockerUserTag   = "v6reg: the node prefix is filtered by table inet v6reg"
)

var ip6Filter = &nftables.Table{Family: nftables.TableFamilyIPv6, Name: "filter"}

// ErrDockerIP6TablesLegacy says Docker's ip6tables rules are in the legacy
// (x_tables) backend, which nftables cannot reach.
var ErrDockerIP6TablesLegacy = errors.New("docker's ip6tables rules are in iptables-legacy, which v6reg cannot write without the ip6tables command: " +
	"switch the node to iptables-nft (`update-alternatives --set ip6tables /usr/sbin/ip6tables-nft`, then restart dockerd), " +
	"or run dockerd with `\"ip6tables\": false` in /etc/docker/daemon.json (--ip6tables=false) so that table inet v6reg alone filters IPv6")

// DockerUserResult says what EnsureDockerUserAccept found and did.
type DockerUserResult int

// What EnsureDockerUserAccept found.
const (
	// DockerUserAbsent: no chain DOCKER-USER in table ip6 filter: Docker
	// does not filter IPv6 (20.10, or ip6tables off); nothing to do.
	DockerUserAbsent DockerUserResult = iota
	// DockerUserPresent: v6reg's rule was already there, first.
	DockerUserPresent
	// DockerUserAdded: v6reg's rule was added (or rewritten).
	DockerUserAdded
)

// EnsureDockerUserAccept makes v6reg's accept for prefix out of bridge the
// first rule of chain DOCKER-USER in table ip6 filter, if that chain
// exists (Docker creates it when it programs ip6tables), and removes
// v6reg rules that name another prefix or bridge. It is safe to repeat:
// an unchanged chain is only read. A legacy ip6tables filter table (Docker
// with iptables-legacy) returns ErrDockerIP6TablesLegacy.
func EnsureDockerUserAccept(conn *nftables.Conn, prefix netip.Prefix, bridge string) (DockerUserResult, error) {
	if err := checkDockerArgs(prefix, bridge); err != nil {
		return DockerUserAbsent, err
	}
	chains, err := conn.ListChainsOfTableFamily(nftables.TableFamilyIPv6)
	if err != nil {
		return DockerUserAbsent, fmt.Errorf("listing ip6 chains: %w", err)
	}
	var chain *nftables.Chain
	for _, c := range chains {
		if c.Table.Name == ip6Filter.Name && c.Name == dockerUserChain {
			chain = c
		}
	}
	if chain == nil {
		if legacyIP6Filter() {
			return DockerUserAbsent, ErrDockerIP6TablesLegacy
		}
		return DockerUserAbsent, nil
	}
	rules, err := conn.GetRules(ip6Filter, chain)
	if err != nil {
		return DockerUserAbsent, fmt.Errorf("reading ip6 filter %s: %w", dockerUserChain, err)
	}
	want := dockerUserRule(chain, prefix, bridge)
	ok, stale := false, 0
	for i, r := range rules {
		tag, _ := userdata.GetString(r.UserData, userdata.TypeComment)
		if !strings.HasPrefix(tag, "v6reg") {
			continue
		}
		if i == 0 && !ok && bytes.Equal(r.UserData, want.UserData) && sameExprs(r.Exprs, want.Exprs) {
			ok = true
			continue
		}
		if err := conn.DelRule(r); err != nil {
			return DockerUserAbsent, fmt.Errorf("removing a stale v6reg rule from %s: %w", dockerUserChain, err)
		}
		stale++
	}
	if ok {
		if stale == 0 {
			return DockerUserPresent, nil
		}
		if err := conn.Flush(); err != nil {
			return DockerUserAbsent, fmt.Errorf("updating ip6 filter %s: %w", dockerUserChain, err)
		}
		return DockerUserPresent, nil
	}
	conn.InsertRule(want)
	if err := conn.Flush(); err != nil {
		return DockerUserAbsent, fmt.Errorf("adding v6reg's accept to ip6 filter %s: %w", dockerUserChain, err)
	}
	return DockerUserAdded, nil
}

// dockerUserRule is what `ip6tables-nft -I DOCKER-USER -o <bridge> -d
// <prefix> -m comment --comment ... -j ACCEPT` writes.
func dockerUserRule(chain *nftables.Chain, prefix netip.Prefix, bridge string) *nftables.Rule {
	n := uint32(prefix.Bits()) / 8 //nolint:gosec // G115: Bits is 0..128 for a valid IPv6 prefix (checked by the caller)
	addr := prefix.Masked().Addr().As16()
	return &nftables.Rule{
		Table: ip6Filter,
		Chain: chain,
		Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: append([]byte(bridge), 0)},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 24, Len: n},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: addr[:n]},
			&expr.Counter{},
			&expr.Verdict{Kind: expr.VerdictAccept},
		},
		UserData: userdata.AppendString(nil, userdata.TypeComment, dockerUserTag),
	}
}

// sameExprs compares two rules' expressions, ignoring counter values.
func sameExprs(a, b []expr.Any) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		switch x := a[i].(type) {
		case *expr.Counter:
			if _, ok := b[i].(*expr.Counter); !ok {
				return false
			}
		default:
			if fmt.Sprintf("%#v", x) != fmt.Sprintf("%#v", b[i]) {
				return false
			}
		}
	}
	return true
}

// legacyIP6Filter says the x_tables ip6 filter table is in use in this
// network namespace (ip6tables-legacy), which nftables cannot see.
func legacyIP6Filter() bool {
	b, err := os.ReadFile("/proc/net/ip6_tables_names")
	if err != nil {
		return false
	}
	for _, l := range strings.Fields(string(b)) {
		if l == "filter" {
			return true
		}
	}
	return false
}
