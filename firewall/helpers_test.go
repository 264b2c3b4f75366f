package firewall

import (
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os/exec"
	"testing"

	"github.com/google/nftables"
	"github.com/v6reg/v6reg/internal/netns"
)

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(tWriter{t}, nil))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(b []byte) (int, error) { w.t.Log(string(b)); return len(b), nil }

// newFirewall returns a Firewall on a fresh conn into ns.
func newFirewall(t testing.TB, ns *netns.NS) *Firewall {
	t.Helper()
	// A lasting conn: one socket for every call, as the agent should use
	// (a transient conn dials, and enters the namespace, per call).
	conn, err := nftables.New(nftables.WithNetNSFd(ns.Fd()), nftables.AsLasting())
	if err != nil {
		t.Fatalf("nftables conn: %v", err)
	}
	t.Cleanup(func() { _ = conn.CloseLasting() })
	return New(conn, ns.Fd(), testLogger(t))
}

// nftList runs the read-only nft CLI inside ns.
func nftList(t testing.TB, ns *netns.NS, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns.Name, "nft"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("nft %v: %v\n%s", args, err, out)
	}
	return string(out)
}

var (
	testPrefix = netip.MustParsePrefix("2001:db8:1:2:3::/80")
	testGW     = netip.MustParseAddr("2001:db8:1:2:3::1")
)

func addr(s string) netip.Addr  { return netip.MustParseAddr(s) }
func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func ports(p ...uint16) []PortRange {
	var out []PortRange
	for _, x := range p {
		out = append(out, PortRange{x, x})
	}
	return out
}

// smallState is the state of the golden test.
func smallState() State {
	return State{
		Prefix: testPrefix, Gateway: testGW, Bridge: "br0",
		NodePorts: []Rule{{Proto: UDP, Ports: ports(53)}, {Peer: PeerAny, Proto: TCP, Ports: []PortRange{{8500, 8502}}}, {Proto: ICMP}},
		PeerSets: map[string][]netip.Prefix{
			"@traefik":   {pfx("2001:db8:a::/64")},
			"service:pg": {pfx("2001:db8:1:2:3::c2/128"), pfx("2001:db8:9::/48")},
			"@internet":  {pfx("2000::/3"), pfx("1.0.0.0/8"), pfx("2.0.0.0/7")},
		},
		Containers: []Container{
			{ID: "c1", Addr: addr("2001:db8:1:2:3::c1"), Addr4: addr("192.0.2.11"), MAC: net.HardwareAddr{0x02, 0x42, 0xac, 0x11, 0, 0xc1}, Port: 42,
				Ingress: []Rule{{Peer: "@traefik", Proto: TCP, Ports: ports(8080)}, {Peer: "any", Proto: ICMP}},
				Egress:  []Rule{{Peer: "service:pg", Proto: TCP, Ports: ports(5432)}, {Peer: "@internet", Proto: TCP, Ports: ports(443)}}},
			{ID: "c2", Addr: addr("2001:db8:1:2:3::c2"),
				Ingress: []Rule{{Peer: "@traefik", Proto: TCP, Ports: []PortRange{{5432, 5433}}}, {Peer: "any", Proto: UDP}},
				Egress:  []Rule{{Peer: "any", Proto: Any}}},
			// Closed (say, it asked for c1's address): its port drops everything.
			{ID: "c9", Port: 49, Closed: true},
		},
	}
}

// nftRun is nftList for cleanups: it returns the error instead of failing.
func nftRun(ns *netns.NS, args ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns.Name, "nft"}, args...)...).CombinedOutput()
	return string(out), err
}
