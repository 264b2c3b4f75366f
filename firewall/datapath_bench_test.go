package firewall

import (
	"context"
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/v6reg/v6reg/internal/netns"
	"golang.org/x/sys/unix"
)

// benchConns measures short TCP connections (connect, greeting, 1 byte
// echo, close) from ClientIn to C1:8080 through the node.
func benchConns(b *testing.B, program func(b *testing.B, tp *netns.Topology)) {
	tp := netns.NewTopology(b)
	if err := tp.Node.Run(func() error { _, err := EnableBridgeNetfilter(); return err }); err != nil {
		b.Fatal(err)
	}
	tp.C1.ServeTCP(b, tp.C1Addr, 8080)
	program(b, tp)
	one := func() error {
		c, err := tp.ClientIn.ConnectTCP(none, tp.C1Addr, 8080, okWait)
		if err != nil {
			return err
		}
		defer c.Close()
		return echo(c)
	}
	if err := one(); err != nil { // warm neighbour caches
		b.Fatal(err)
	}
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		if err := one(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "conns/s")
}

// BenchmarkConnsNoTable is the baseline: no table in the node.
func BenchmarkConnsNoTable(b *testing.B) { benchConns(b, func(*testing.B, *netns.Topology) {}) }

// BenchmarkConnsV6reg10000 has the v6reg table with 10,000 containers
// besides C1.
func BenchmarkConnsV6reg10000(b *testing.B) {
	benchConns(b, func(b *testing.B, tp *netns.Topology) {
		s := bigState(10000)
		s.Prefix, s.Gateway, s.Bridge = tp.Prefix, tp.Gateway, tp.Bridge
		s.PeerSets["@in"] = []netip.Prefix{tp.InPrefix}
		s.Containers = append(s.Containers, Container{ID: "c1", Addr: tp.C1Addr,
			Ingress: []Rule{{Peer: "@in", Proto: TCP, Ports: ports(8080)}}})
		fw := newFirewall(b, tp.Node)
		if _, err := fw.Apply(context.Background(), s); err != nil {
			b.Fatal(err)
		}
	})
}

// BenchmarkConnsNaive10000 has the layout v6reg avoids: one rule per
// container in a chain (`ip6 daddr X tcp dport 8080 accept` x 10,000),
// with C1's rule last.
func BenchmarkConnsNaive10000(b *testing.B) {
	benchConns(b, func(b *testing.B, tp *netns.Topology) {
		c, err := nftables.New(nftables.WithNetNSFd(tp.Node.Fd()), nftables.AsLasting())
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = c.CloseLasting() })
		t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: "naive"})
		drop := nftables.ChainPolicyDrop
		ch := c.AddChain(&nftables.Chain{Table: t, Name: "forward", Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &drop})
		accept := &expr.Verdict{Kind: expr.VerdictAccept}
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: []expr.Any{
			&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
				Mask: binary.NativeEndian.AppendUint32(nil, expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED), Xor: []byte{0, 0, 0, 0}},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0, 0, 0}}, accept}})
		rule := func(a netip.Addr) {
			c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: []expr.Any{
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 24, Len: 16},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a.AsSlice()},
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: port(8080)},
				accept}})
		}
		for i := 0; i < 10000; i++ {
			a := benchContainer(i).Addr.As16()
			copy(a[:10], tp.Prefix.Addr().AsSlice()[:10])
			rule(netip.AddrFrom16(a))
			if i%50 == 49 { // small batches: acks overflow the receive buffer (ENOBUFS)
				if err := c.Flush(); err != nil {
					b.Fatal(err)
				}
			}
		}
		rule(tp.C1Addr)
		if err := c.Flush(); err != nil {
			b.Fatal(err)
		}
	})
}
