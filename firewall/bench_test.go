package firewall

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/v6reg/v6reg/internal/netns"
)

// bigState has n containers, each with a typical policy.
func bigState(n int) State { return bigStateOf(n, benchContainer) }

func bigStateOf(n int, container func(int) Container) State {
	s := State{Prefix: testPrefix, Gateway: testGW, Bridge: "br0", PeerSets: map[string][]netip.Prefix{
		"@traefik": {pfx("2001:db8:a::/64")}, "@mon": {pfx("2001:db8:b::/64")}, "@internet": {pfx("2000::/3"), pfx("0.0.0.0/1"), pfx("128.0.0.0/1")},
	}}
	for i := 0; i < n; i++ {
		s.Containers = append(s.Containers, container(i))
	}
	return s
}

func benchContainer(i int) Container {
	a := testPrefix.Addr().As16()
	binary.BigEndian.PutUint32(a[12:], uint32(0x10000+i))
	return Container{ID: fmt.Sprintf("%064x", i), Addr: netip.AddrFrom16(a),
		Ingress: []Rule{{Peer: "@traefik", Proto: TCP, Ports: ports(8080)}, {Peer: "@mon", Proto: TCP, Ports: ports(9100)}, {Peer: "@mon", Proto: ICMP}},
		Egress:  []Rule{{Peer: "@internet", Proto: TCP, Ports: ports(443)}, {Peer: "@internet", Proto: UDP, Ports: ports(53)}}}
}

// boundContainer is benchContainer with its MAC, bridge port and IPv4
// address, as the agent programs a container on a dual-stack network
// whose port it found: 13 more elements (MAC and port binding, the IPv4
// egress maps, counters and binding), 5 of them in table bridge v6reg.
func boundContainer(i int) Container {
	c := benchContainer(i)
	c.MAC = net.HardwareAddr{0x02, 0x42, 0, byte(i >> 16), byte(i >> 8), byte(i)}
	c.Port = 1000 + i
	c.Addr4 = netip.AddrFrom4([4]byte{100, 64 + byte(i>>16), byte(i >> 8), byte(i)})
	return c
}

func benchAddOne(b *testing.B, n int) { benchAddOneOf(b, n, benchContainer) }

func benchAddOneOf(b *testing.B, n int, container func(int) Container) {
	ns := netns.New(b, "bench")
	fw := newFirewall(b, ns)
	// The table's cost alone: the revocation of a removed container's
	// flows (a conntrack dump beside Apply) has its own benchmark.
	fw.noRevoke = true
	base := bigStateOf(n, container)
	if _, err := fw.Apply(context.Background(), base); err != nil {
		b.Fatal(err)
	}
	with := base
	with.Containers = append(append([]Container(nil), base.Containers...), container(n+1))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s := with
		if i%2 == 1 {
			s = base
		}
		ch, err := fw.Apply(context.Background(), s)
		if err != nil || ch.Batches != 1 {
			b.Fatalf("apply: %+v %v", ch, err)
		}
	}
}

func BenchmarkAddOneContainerAt0(b *testing.B)     { benchAddOne(b, 0) }
func BenchmarkAddOneContainerAt1000(b *testing.B)  { benchAddOne(b, 1000) }
func BenchmarkAddOneContainerAt10000(b *testing.B) { benchAddOne(b, 10000) }

// The same with MAC and bridge port: what the agent sends for a container.
func BenchmarkAddOneBoundContainerAt0(b *testing.B)    { benchAddOneOf(b, 0, boundContainer) }
func BenchmarkAddOneBoundContainerAt1000(b *testing.B) { benchAddOneOf(b, 1000, boundContainer) }
func BenchmarkAddOneBoundContainerAt10000(b *testing.B) {
	benchAddOneOf(b, 10000, boundContainer)
}

// benchAddOneDelta is benchAddOneOf through ApplyDelta, as an agent that
// reconciles one container per event calls it: one container upserted,
// then removed, with n others programmed.
func benchAddOneDelta(b *testing.B, n int, container func(int) Container) {
	ns := netns.New(b, "bench")
	fw := newFirewall(b, ns)
	fw.noRevoke = true
	if _, err := fw.Apply(context.Background(), bigStateOf(n, container)); err != nil {
		b.Fatal(err)
	}
	c := container(n + 1)
	add, remove := Delta{Upsert: []Container{c}}, Delta{Remove: []string{c.ID}}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		d := add
		if i%2 == 1 {
			d = remove
		}
		ch, err := fw.ApplyDelta(context.Background(), d)
		if err != nil || ch.Batches != 1 {
			b.Fatalf("apply delta: %+v %v", ch, err)
		}
	}
}

func BenchmarkAddOneContainerDeltaAt0(b *testing.B)     { benchAddOneDelta(b, 0, benchContainer) }
func BenchmarkAddOneContainerDeltaAt10000(b *testing.B) { benchAddOneDelta(b, 10000, benchContainer) }
func BenchmarkAddOneBoundContainerDeltaAt0(b *testing.B) {
	benchAddOneDelta(b, 0, boundContainer)
}
func BenchmarkAddOneBoundContainerDeltaAt10000(b *testing.B) {
	benchAddOneDelta(b, 10000, boundContainer)
}

func BenchmarkFullApply10000(b *testing.B) {
	s := bigState(10000)
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		ns := netns.New(b, "bench")
		fw := newFirewall(b, ns)
		b.StartTimer()
		ch, err := fw.Apply(context.Background(), s)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(ch.Batches), "batches")
	}
}

// BenchmarkReapply10000Fresh is a restart: a new instance reads the whole
// table, diffs and finds nothing to send.
func BenchmarkReapply10000Fresh(b *testing.B) {
	ns := netns.New(b, "bench")
	s := bigState(10000)
	if _, err := newFirewall(b, ns).Apply(context.Background(), s); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		ch, err := newFirewall(b, ns).Apply(context.Background(), s)
		if err != nil || !ch.Empty() {
			b.Fatalf("%+v %v", ch, err)
		}
	}
}

// BenchmarkReapply10000Cached is the steady state of Watch.
func BenchmarkReapply10000Cached(b *testing.B) {
	ns := netns.New(b, "bench")
	s := bigState(10000)
	fw := newFirewall(b, ns)
	if _, err := fw.Apply(context.Background(), s); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if ch, err := fw.Apply(context.Background(), s); err != nil || !ch.Empty() {
			b.Fatalf("%+v %v", ch, err)
		}
	}
}

// BenchmarkRevoke is what a commit that takes something away costs beside
// Apply: one dump of the (here empty) conntrack table, which walks the
// whole hash, and the judging of its flows.
func BenchmarkRevoke(b *testing.B) {
	ns := netns.New(b, "bench")
	fw := newFirewall(b, ns)
	s := bigStateOf(1000, boundContainer)
	if _, err := fw.Apply(context.Background(), s); err != nil {
		b.Fatal(err)
	}
	affected := map[netip.Addr]bool{s.Containers[0].Addr: true, s.Containers[0].Addr4: true}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := fw.revoke(affected); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCounters10000 is a /metrics scrape (or `v6reg status`) at
// 10,000 containers: it holds the Firewall's lock, so Apply waits for it.
// "conn" reads through google/nftables (a page per recvmsg), as before
// elemReader.
func BenchmarkCounters10000(b *testing.B) {
	ns := netns.New(b, "bench")
	fw := newFirewall(b, ns)
	if _, err := fw.Apply(context.Background(), bigStateOf(10000, boundContainer)); err != nil {
		b.Fatal(err)
	}
	readers := fw.elems
	for _, c := range []struct {
		name  string
		elems []*elemReader
	}{{"elemReader", readers}, {"conn", nil}} {
		b.Run(c.name, func(b *testing.B) {
			fw.elems = c.elems
			for i := 0; i < b.N; i++ {
				if cs, err := fw.Counters(context.Background()); err != nil || len(cs) != 10000 {
					b.Fatalf("%d %v", len(cs), err)
				}
			}
		})
	}
}

// BenchmarkPeerSetDelta*At10000 is a peer set's members changing (a
// `service:` peer's instances) with 10,000 containers programmed: one
// prefix comes and goes. The
// leaving half takes something away, so it also finds whose flows to
// revoke (the revocation itself is off, as in the add-one benchmarks).
// "AllUsers": every container names the set (@traefik); "OneUser": one
// container does (a service only it talks to).
func BenchmarkPeerSetDeltaAllUsersAt10000(b *testing.B) { benchPeerSetDelta(b, "@traefik") }
func BenchmarkPeerSetDeltaOneUserAt10000(b *testing.B)  { benchPeerSetDelta(b, "service:pg") }

func benchPeerSetDelta(b *testing.B, peer string) {
	ns := netns.New(b, "bench")
	fw := newFirewall(b, ns)
	fw.noRevoke = true
	s := bigState(10000)
	s.PeerSets["service:pg"] = []netip.Prefix{pfx("2001:db8:e::5/128")}
	s.Containers[0].Egress = append(s.Containers[0].Egress, Rule{Peer: "service:pg", Proto: TCP, Ports: ports(5432)})
	if _, err := fw.Apply(context.Background(), s); err != nil {
		b.Fatal(err)
	}
	grown := Delta{PeerSets: map[string][]netip.Prefix{peer: append(slices.Clone(s.PeerSets[peer]), pfx("2001:db8:f::/64"))}}
	back := Delta{PeerSets: map[string][]netip.Prefix{peer: s.PeerSets[peer]}}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		d := grown
		if i%2 == 1 {
			d = back
		}
		if ch, err := fw.ApplyDelta(context.Background(), d); err != nil || ch.Batches != 1 {
			b.Fatalf("apply delta: %+v %v", ch, err)
		}
	}
}
