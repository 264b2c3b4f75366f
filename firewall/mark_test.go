package firewall

import (
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// TestPacketMarkPreserved checks that the table gives every packet it
// accepts back with the mark it came with: the rules pass a peer list id
// through the packet mark and restore it within the same rule (see
// directionChain). A table of the test's own marks packets in prerouting
// (phase 2) and counts new TCP connections after v6reg's forward chain by
// mark, for ingress, egress and container-to-container flows.
func TestPacketMarkPreserved(t *testing.T) {
	e := newEnv(t)
	tp := e.tp
	e.apply(t, e.state())
	node := tp.Node
	nftList(t, node, "add", "table", "inet", "marktest")
	t.Cleanup(func() { _, _ = nftRun(node, "delete", "table", "inet", "marktest") })
	nftList(t, node, "add", "chain", "inet", "marktest", "pre", "{", "type", "filter", "hook", "prerouting", "priority", "-150", ";", "}")
	nftList(t, node, "add", "chain", "inet", "marktest", "post", "{", "type", "filter", "hook", "forward", "priority", "10", ";", "}")

	conn, err := nftables.New(nftables.WithNetNSFd(node.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	counts := func() (good, bad uint64) {
		t.Helper()
		rules, err := conn.GetRules(&nftables.Table{Family: nftables.TableFamilyINet, Name: "marktest"},
			&nftables.Chain{Name: "post"})
		if err != nil || len(rules) != 2 {
			t.Fatalf("read marktest counters: %d rules, %v", len(rules), err)
		}
		var n [2]uint64
		for i, r := range rules {
			for _, x := range r.Exprs {
				if c, ok := x.(*expr.Counter); ok {
					n[i] = c.Packets
				}
			}
		}
		return n[0], n[1]
	}
	probe := func(phase string) {
		t.Helper()
		pass(t, phase+": client-in -> c1:8080 (ingress)", tp.ClientIn.DialTCP(none, tp.C1Addr, 8080, okWait))
		pass(t, phase+": c1 -> client-in:443 (egress)", tp.C1.DialTCP(none, tp.InAddr, 443, okWait))
		pass(t, phase+": c1 -> c2:5432 (egress, then ingress)", tp.C1.DialTCP(none, tp.C2Addr, 5432, okWait))
	}
	for _, phase := range []struct{ name, mark string }{{"unmarked", "0"}, {"marked", "0x1234"}} {
		nftList(t, node, "flush", "chain", "inet", "marktest", "post")
		nftList(t, node, "flush", "chain", "inet", "marktest", "pre")
		if phase.mark != "0" {
			nftList(t, node, "add", "rule", "inet", "marktest", "pre", "meta", "nfproto", "ipv6", "meta", "mark", "set", phase.mark)
		}
		nftList(t, node, "add", "rule", "inet", "marktest", "post", "meta", "l4proto", "tcp", "ct", "state", "new", "meta", "mark", phase.mark, "counter")
		nftList(t, node, "add", "rule", "inet", "marktest", "post", "meta", "l4proto", "tcp", "ct", "state", "new", "meta", "mark", "!=", phase.mark, "counter")
		probe(phase.name)
		good, bad := counts()
		if good < 3 || bad != 0 {
			t.Errorf("%s: new connections after v6reg with mark %s: %d, with another mark: %d; want >= 3 and 0",
				phase.name, phase.mark, good, bad)
		}
	}
}
