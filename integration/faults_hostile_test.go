package integration

// Case 8: hostile input (fuzzed labels on real containers) and a large
// firewall (1,000 containers x 50 rules) programmed in a fresh namespace.

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/v6reg/v6reg/firewall"
	"github.com/v6reg/v6reg/internal/netns"
	"github.com/v6reg/v6reg/policies/policytest"
)

func TestFaults8HostileLabels(t *testing.T) {
	requireSlowFaults(t)
	rounds := envInt("V6REG_FAULT_HOSTILE_ROUNDS", 15)
	cases := envInt("V6REG_FAULT_HOSTILE_CASES", 200000)
	const slots = 3
	row := recordFault(t, "8", "hostile input",
		fmt.Sprintf("%d real containers (%d slots recreated %d times) with mutated/random v6reg.ingress, v6reg.egress, v6reg.services labels (NUL, invalid UTF-8, huge values, edge numbers); and %d generated cases of hostile job meta (job/group/task level, both key spellings) and labels through the desired-state builder (desired TestHostileInput). And 1,000 containers x 50 rules applied to a fresh table (TestFault8FirewallScale)", slots*rounds, slots, rounds, cases),
		"the agent stays up (same pid); a refused container is closed (office and internet -> :8080 dropped); every error names its label key; invariants. Generated cases: no panic, the node's state stays appliable, a refused container has no rules and only critical checks, no rule open to any outside allow_any namespaces, every error names its meta key or label, the neighbour's rules unchanged")
	f := newFaultEnv(t, nil)
	pid := f.agentPid()
	r := rand.New(rand.NewPCG(8, uint64(time.Now().UnixNano())))
	cur := make([]Workload, slots)
	var refused, accepted, errsSeen int
	for round := range rounds {
		for i := range slots {
			if cur[i].ID != "" {
				if err := f.Remove(f.ctx, cur[i].ID); err != nil {
					t.Fatal(err)
				}
			}
			labels := map[string]string{}
			for _, k := range policytest.Keys {
				if r.IntN(3) > 0 {
					labels[k] = policytest.Value(r, k)
				}
			}
			if len(labels) == 0 {
				labels["v6reg.ingress"] = policytest.Mutate(r, "tcp/8080 from @office")
			}
			w, err := f.start(f.ctx, fmt.Sprintf("hostile-%d-%d", round, i), labels, httpdShell(8080, "hostile"), runOpts{})
			if err != nil {
				// Docker itself may refuse a label (it did not reach the agent).
				t.Logf("docker refused hostile labels %q: %v", labels, err)
				cur[i] = Workload{}
				if w.ID != "" {
					_ = f.Remove(f.ctx, w.ID)
				}
				continue
			}
			cur[i] = w
		}
		// Wait until the agent has seen every slot, then check each.
		var states map[string]struct {
			closed bool
			errs   []string
		}
		err := WaitFor(f.ctx, 20*time.Second, func() error {
			s, err := f.Status()
			if err != nil {
				return err
			}
			states = map[string]struct {
				closed bool
				errs   []string
			}{}
			for _, c := range s.Containers {
				states[c.ID] = struct {
					closed bool
					errs   []string
				}{c.Closed, c.Errors}
			}
			for _, w := range cur {
				if _, ok := states[w.ID]; w.ID != "" && !ok {
					return fmt.Errorf("%s not in status", w.Name)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		var mu sync.Mutex
		for _, w := range cur {
			if w.ID == "" {
				continue
			}
			st := states[w.ID]
			for _, e := range st.errs {
				errsSeen++
				if !strings.Contains(e, "v6reg.ingress") && !strings.Contains(e, "v6reg.egress") && !strings.Contains(e, "v6reg.services") {
					t.Errorf("%s: error does not name its label: %q", w.Name, e)
				}
			}
			if !st.closed {
				accepted++
				continue
			}
			refused++
			wg.Add(1)
			go func() {
				defer wg.Done()
				for _, from := range []*netns.NS{f.Office, f.Internet} {
					if err := HTTPGet(from, w.Addr, 8080, denyWait); err == nil || !isTimeout(err) {
						mu.Lock()
						t.Errorf("%s is closed (policy refused) but %s -> :8080 was not dropped: %v", w.Name, from.Name, err)
						mu.Unlock()
					}
				}
			}()
		}
		wg.Wait()
		if !f.agentAlive() || f.agentPid() != pid {
			t.Fatalf("the agent died on hostile labels (round %d):\n%s", round, f.AgentLogTail(40))
		}
	}
	f.invariants(15 * time.Second)
	row.fig(t, "%d containers: %d refused and closed (probes dropped), %d accepted, %d errors all naming their label; agent pid unchanged",
		refused+accepted, refused, accepted, errsSeen)
	row.fig(t, "%s", hostileCorpus(t, cases))
}

var reHostileSummary = regexp.MustCompile(`hostile input: ([^\n]*)`)

// hostileCorpus runs the desired-state builder's TestHostileInput with n generated cases
// of hostile job meta and labels: the tens of thousands of cases that real
// containers cannot carry, through the code that turns them into the
// node's state. It returns the test's own summary.
func hostileCorpus(t *testing.T, n int) string {
	t.Helper()
	cmd := exec.Command("go", "test", "-count=1", "-run", "^TestHostileInput$", "-v", "../desired/")
	cmd.Env = append(os.Environ(), fmt.Sprintf("V6REG_HOSTILE_CASES=%d", n))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("hostile input corpus (%d cases): %v\n%s", n, err, tail(string(out), 40))
	}
	m := reHostileSummary.FindStringSubmatch(string(out))
	if m == nil {
		t.Fatalf("hostile input corpus: no summary in its output:\n%s", tail(string(out), 20))
	}
	return "desired TestHostileInput: " + m[1]
}

// TestFault8FirewallScale programs 1,000 containers with 50 rules each
// (25 ingress, 25 egress; 50,000 rules) into a fresh namespace through the
// firewall package, as the agent would, and reports time and Go heap. A
// real dockerd cannot run 1,000 containers on these 2 cores.
func TestFault8FirewallScale(t *testing.T) {
	requireSlowFaults(t)
	netns.RequireRoot(t)
	scaleRow := recordFault(t, "8b", "1,000 containers x 50 rules",
		"firewall.Apply of 1,000 containers x 50 rules (25 ingress + 25 egress, 4 peer sets) into a fresh namespace (a real dockerd cannot run 1,000 containers on 2 cores)",
		"applied (chunked batches), read back: 1,000 owners; one more container; an unchanged re-apply; Go heap of the firewall side")
	ns := netns.New(t, "scale")
	conn, err := nftables.New(nftables.AsLasting(), nftables.WithNetNSFd(ns.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseLasting()
	fw := firewall.New(conn, ns.Fd(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	peers := map[string][]netip.Prefix{
		"office":   {OfficePrefix},
		"internet": {netip.MustParsePrefix("::/0")},
		"ops":      {netip.MustParsePrefix("2001:db8:200::/48"), netip.MustParsePrefix("2001:db8:300::/48")},
		"dns":      {netip.MustParsePrefix("2001:db8:53::/64")},
	}
	names := []string{"office", "internet", "ops", "dns"}
	mk := func(i int) firewall.Container {
		a := NodePrefix.Addr().As16()
		v := i + 0x100 // clear of the gateway (::1)
		a[13], a[14], a[15] = byte(v>>16), byte(v>>8), byte(v)
		c := firewall.Container{ID: fmt.Sprintf("%064x", i+1), Addr: netip.AddrFrom16(a)}
		for k := range 25 {
			p := uint16(1000 + k*7 + i%5)
			c.Ingress = append(c.Ingress, firewall.Rule{Peer: names[k%4], Proto: firewall.TCP, Ports: []firewall.PortRange{{First: p, Last: p}}})
			c.Egress = append(c.Egress, firewall.Rule{Peer: names[(k+1)%4], Proto: firewall.UDP, Ports: []firewall.PortRange{{First: p, Last: p + 1}}})
		}
		return c
	}
	st := firewall.State{Prefix: NodePrefix, Gateway: NodePrefix.Addr().Next(), PeerSets: peers}
	for i := range 1000 {
		st.Containers = append(st.Containers, mk(i))
	}
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	ctx := context.Background()
	start := time.Now()
	if _, err := fw.Apply(ctx, st); err != nil {
		t.Fatalf("applying 1,000 x 50: %v", err)
	}
	first := time.Since(start)
	runtime.GC()
	runtime.ReadMemStats(&m1)
	counters, err := fw.Counters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(counters) != 1000 {
		t.Errorf("read back %d owners, want 1000", len(counters))
	}
	st.Containers = append(st.Containers, mk(1000))
	start = time.Now()
	if _, err := fw.Apply(ctx, st); err != nil {
		t.Fatal(err)
	}
	one := time.Since(start)
	start = time.Now()
	if _, err := fw.Apply(ctx, st); err != nil {
		t.Fatal(err)
	}
	same := time.Since(start)
	// A fresh instance (an agent restart) reads and diffs, never wipes.
	fw2 := firewall.New(conn, ns.Fd(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	start = time.Now()
	ch, err := fw2.Apply(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	restart := time.Since(start)
	if ch.TableCreated {
		t.Errorf("a fresh instance recreated the table: %+v", ch)
	}
	scaleRow.fig(t, "first apply %s, +1 container at 1,000 %s, unchanged re-apply %s, fresh-instance read+diff %s; Go heap held by the firewall after the apply %.1f MiB (total alloc %.0f MiB)",
		first.Round(time.Millisecond), one.Round(100*time.Microsecond), same.Round(100*time.Microsecond), restart.Round(time.Millisecond),
		float64(int64(m1.HeapAlloc)-int64(m0.HeapAlloc))/(1<<20), float64(m1.TotalAlloc-m0.TotalAlloc)/(1<<20))
}
