package firewall

import (
	"context"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/v6reg/v6reg/internal/netns"
)

// TestUpgradeFromVerdictMapLayout programs a table of the previous layout
// (a verdict map whose element jumps to a peer chain that looks up a peer
// set, named from an ingress rule) and checks that one Apply converts it:
// the old map, chain and set are gone and the table is what a fresh one
// would be. Deleting them in the wrong order fails with EBUSY.
func TestUpgradeFromVerdictMapLayout(t *testing.T) {
	ns := netns.New(t, "upg")
	c, err := nftables.New(nftables.WithNetNSFd(ns.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	c.AddTable(table)
	peer := &nftables.Set{Table: table, Name: "peer_old", KeyType: keyAddr, Interval: true}
	if err := c.AddSet(peer, nil); err != nil {
		t.Fatal(err)
	}
	vm := &nftables.Set{Table: table, Name: "in_port", KeyType: keyAddrPort, Concatenation: true,
		IsMap: true, DataType: nftables.TypeVerdict}
	if err := c.AddSet(vm, nil); err != nil {
		t.Fatal(err)
	}
	pc := c.AddChain(&nftables.Chain{Table: table, Name: "in_0123abcd"})
	c.AddRule(&nftables.Rule{Table: table, Chain: pc, Exprs: []expr.Any{payloadAddr(true),
		&expr.Lookup{SourceRegister: reg1, SetName: "peer_old"}, verdict(expr.VerdictAccept, "")}})
	ing := c.AddChain(&nftables.Chain{Table: table, Name: "ingress"})
	c.AddRule(&nftables.Rule{Table: table, Chain: ing, Exprs: []expr.Any{payloadAddr(false),
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg32b},
		&expr.Payload{DestRegister: reg32c, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: reg1, SetName: "in_port", IsDestRegSet: true, DestRegister: 0}}})
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	c.SetAddElements(vm, []nftables.SetElement{{Key: key(addr("2001:db8:1:2:3::c1").AsSlice(), []byte{6}, port(80)),
		VerdictData: &expr.Verdict{Kind: expr.VerdictJump, Chain: "in_0123abcd"}}})
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}

	if _, err := newFirewall(t, ns).Apply(context.Background(), smallState()); err != nil {
		t.Fatalf("apply over the old layout: %v", err)
	}
	got := nftList(t, ns, "list", "table", "inet", TableName)
	for _, old := range []string{"in_port ", "in_0123abcd", "peer_old", "vmap"} {
		if strings.Contains(got, old) {
			t.Errorf("after the upgrade the table still has %q:\n%s", old, got)
		}
	}
	if ch, err := newFirewall(t, ns).Apply(context.Background(), smallState()); err != nil || !ch.Empty() {
		t.Errorf("fresh instance after the upgrade: %+v %v; want nothing to send", ch, err)
	}
}
