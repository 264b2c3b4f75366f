package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/v6reg/v6reg/integration/benchdata"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
	"github.com/google/nftables"

	"github.com/v6reg/v6reg/firewall"
	"github.com/v6reg/v6reg/internal/netns"
)

// The end-to-end measurements of `make bench` (issue 9, figures 5 and 6):
// the real agent, dockerd and Consul in the node namespace. They are a
// Test gated by V6REG_BENCH=1, not a Benchmark, because one run is a
// fixed workload (a burst of containers) whose every sample is a figure;
// `make test` skips them. The results go as JSON to V6REG_BENCH_OUT for
// integration/cmd/benchreport, which writes BENCHMARKS.md.

const (
	benchStarters   = 4
	benchPoll       = 25 * time.Millisecond
	benchIdle       = 10 * time.Second
	benchClockTicks = 100 // USER_HZ: /proc/<pid>/stat counts in 1/100 s on Linux
)

func TestBenchEndToEnd(t *testing.T) {
	if os.Getenv("V6REG_BENCH") != "1" {
		t.Skip("end-to-end measurements: set V6REG_BENCH=1 (make bench runs them)")
	}
	netns.RequireRoot(t)
	begin := time.Now()
	budget := 12 * time.Minute
	if s := os.Getenv("V6REG_BENCH_BUDGET"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("V6REG_BENCH_BUDGET=%q: %v (want a duration like 12m)", s, err)
		}
		budget = d
	}
	bursts := 3
	if s := os.Getenv("V6REG_BENCH_BURSTS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("V6REG_BENCH_BURSTS=%q: want a count >= 1", s)
		}
		bursts = n
	}
	// TestMain's binary has the race detector, which multiplies CPU and
	// memory; the figures are for the binary operators run.
	bin := filepath.Join(t.TempDir(), "v6reg-plain")
	build := exec.Command("go", "build", "-trimpath", "-o", bin, "../cmd/v6reg")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building v6reg without -race: %v\n%s", err, out)
	}
	// info-level logging, as in production: debug lines per container
	// would measure the log writer.
	e, ctx := newTestEnv(t, "v6b-", budget+5*time.Minute, bin)
	cfgText, err := os.ReadFile(e.Config)
	if err != nil || !strings.Contains(string(cfgText), `log_level       = "debug"`) {
		t.Fatalf("the agent config %s has no debug log_level to lower (%v)", e.Config, err)
	}
	if err := os.WriteFile(e.Config, []byte(strings.Replace(string(cfgText), `log_level       = "debug"`, `log_level       = "info"`, 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := e.StartAgent(ctx); err != nil {
		t.Fatal(err)
	}
	bn := &bencher{t: t, e: e}
	// Registered after StartAgent, so it runs before the agent stops: the
	// agent is the IPAM plugin dockerd calls on every removal.
	// Teardown, not a measurement: what is left after the limit, dockerd's
	// cleanup kills and unmounts.
	t.Cleanup(func() {
		rctx, rcancel := context.WithTimeout(context.Background(), 4*time.Minute)
		defer rcancel()
		if _, err := bn.removeAll(rctx); err != nil {
			t.Logf("teardown: %v (dockerd's cleanup removes the rest)", err)
		}
	})
	bn.pid, err = e.AgentPID()
	if err != nil {
		t.Fatal(err)
	}
	conn, err := nftables.New(nftables.WithNetNSFd(e.Node.Fd()))
	if err != nil {
		t.Fatalf("nftables conn: %v", err)
	}
	bn.fw = firewall.New(conn, e.Node.Fd(), slog.New(slog.NewTextHandler(io.Discard, nil)))

	res := benchdata.Results{Started: begin, Starters: benchStarters, PollInterval: benchPoll.String()}
	res.Resources = append(res.Resources, bn.idle(ctx, 0))
	const n = 100
	for i := 0; i < bursts; i++ {
		b, rp := bn.burst(ctx, n)
		res.Bursts = append(res.Bursts, b)
		res.Resources = append(res.Resources, rp)
		t.Logf("burst %d of %d: wall %.1fs, firewall median %.0f ms, consul median %.0f ms, missing %d",
			i+1, n, b.WallSec, benchMedian(b.FirewallMs), benchMedian(b.ConsulMs), b.Missing)
		if i < bursts-1 {
			r, err := bn.removeAll(ctx)
			if err != nil {
				t.Fatal(err)
			}
			res.Removals = append(res.Removals, r)
		}
	}
	res.Resources = append(res.Resources, bn.idle(ctx, len(bn.ids)))
	res.Largest = len(bn.ids)

	// 1,000 containers if the rest fits the budget, else the largest
	// multiple of 100 that does, judged from the last burst of 100 (per
	// container, times 1.3 for the growth of the table, Consul and
	// dockerd) and the last removal (the containers must go again).
	last := res.Bursts[len(res.Bursts)-1]
	perStart := last.WallSec / float64(last.Containers) * 1.3
	perRemove := 0.3
	if len(res.Removals) > 0 {
		r := res.Removals[len(res.Removals)-1]
		perRemove = r.WallSec / float64(r.Containers)
	}
	have := len(bn.ids)
	left := budget - time.Since(begin) - 2*benchIdle - time.Minute
	fits := have + int(left.Seconds()/(perStart+perRemove))/100*100
	target := min(1000, fits)
	if target < 1000 {
		res.ScaleNote = fmt.Sprintf("1,000 containers did not fit the %s budget: from the last burst of 100 (%.1f s) and the last removal "+
			"(%.2f s a container), 1,000 needed about %s more and %s was left",
			budget, last.WallSec, perRemove, (time.Duration(float64(1000-have)*(perStart+perRemove)*float64(time.Second)) + 2*benchIdle).Round(time.Second),
			left.Round(time.Second))
		t.Log(res.ScaleNote)
	}
	if target > have {
		b, rp := bn.burst(ctx, target-have)
		res.Bursts = append(res.Bursts, b)
		res.Resources = append(res.Resources, rp)
		t.Logf("burst of %d on %d: wall %.1fs, firewall median %.0f ms, consul median %.0f ms, missing %d",
			b.Containers, b.Before, b.WallSec, benchMedian(b.FirewallMs), benchMedian(b.ConsulMs), b.Missing)
		res.Resources = append(res.Resources, bn.idle(ctx, len(bn.ids)))
		res.Largest = len(bn.ids)
	}
	res.Seconds = time.Since(begin).Seconds()
	data, _ := json.MarshalIndent(res, "", "  ")
	if out := os.Getenv("V6REG_BENCH_OUT"); out != "" {
		if err := os.WriteFile(out, data, 0o644); err != nil {
			t.Fatalf("writing results: %v", err)
		}
	} else {
		t.Logf("results:\n%s", data)
	}
}

type bencher struct {
	t   *testing.T
	e   *Env
	pid int
	fw  *firewall.Firewall
	seq int

	mu  sync.Mutex
	ids []string // containers started and not removed
}

// burst starts n containers from benchStarters goroutines and times, for
// each, its start event to its firewall elements and its Consul service.
func (bn *bencher) burst(ctx context.Context, n int) (benchdata.Burst, benchdata.Resource) {
	t, e := bn.t, bn.e
	res := benchdata.Burst{Before: len(bn.ids), Containers: n}
	before, err := bn.histogram()
	if err != nil {
		t.Fatalf("metrics before the burst: %v", err)
	}

	ectx, ecancel := context.WithCancel(ctx)
	defer ecancel()
	// Since replays what the daemon saw from a second ago, so a start
	// that beats the subscription is not lost.
	since := fmt.Sprintf("%d.%09d", time.Now().Add(-time.Second).Unix(), 0)
	msgs, errs := e.Docker.Client.Events(ectx, events.ListOptions{Since: since, Filters: filters.NewArgs(
		filters.Arg("type", string(events.ContainerEventType)), filters.Arg("event", string(events.ActionStart)))})
	var emu sync.Mutex
	started := map[string]time.Time{}
	go func() {
		for {
			select {
			case m := <-msgs:
				emu.Lock()
				started[m.Actor.ID] = time.Unix(0, m.TimeNano)
				emu.Unlock()
			case <-errs:
				return
			case <-ectx.Done():
				return
			}
		}
	}()
	ours := map[string]string{} // short ID -> ID
	var omu sync.Mutex
	names := make(chan int)
	var wg sync.WaitGroup
	var startErr error
	t0 := time.Now()
	ticks0 := bn.ticks()
	for w := 0; w < benchStarters; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range names {
				id, err := bn.start(ctx, i)
				omu.Lock()
				if err != nil && startErr == nil {
					startErr = err
				}
				if err == nil {
					ours[id[:12]] = id
				}
				omu.Unlock()
			}
		}()
	}
	go func() {
		for i := 0; i < n; i++ {
			names <- bn.seq
			bn.seq++
		}
		close(names)
	}()

	fwSeen, consulSeen := map[string]time.Time{}, map[string]time.Time{}
	var peakRSS float64
	startsDone := make(chan struct{})
	go func() { wg.Wait(); close(startsDone) }()
	// Starting is paced by dockerd, not the agent: the deadline is a
	// minute after the last start returned, however long starting took.
	startedAll := false
	var deadline time.Time
	for ctx.Err() == nil && (!startedAll || time.Now().Before(deadline)) {
		if !startedAll {
			select {
			case <-startsDone:
				startedAll = true
				res.StartSec = time.Since(t0).Seconds()
				deadline = time.Now().Add(time.Minute)
			default:
			}
		}
		if rss, _ := benchProcMiB(bn.pid, "VmRSS"); rss > peakRSS {
			peakRSS = rss
		}
		counters, err := bn.fw.Counters(ctx)
		now := time.Now()
		omu.Lock()
		if err == nil {
			for id := range counters {
				if _, ok := fwSeen[id]; !ok && ours[shortID(id)] == id {
					fwSeen[id] = now
				}
			}
		}
		omu.Unlock()
		svcs, err := e.ConsulServices()
		now = time.Now()
		omu.Lock()
		if err == nil {
			for sid := range svcs {
				for short, id := range ours {
					if _, ok := consulSeen[id]; !ok && strings.Contains(sid, "-"+short+"-") {
						consulSeen[id] = now
					}
				}
			}
		}
		omu.Unlock()
		if startedAll && len(fwSeen) >= len(ours) && len(consulSeen) >= len(ours) {
			break
		}
		time.Sleep(benchPoll)
	}
	res.WallSec = time.Since(t0).Seconds()
	ticks1 := bn.ticks()
	<-startsDone
	if startErr != nil {
		t.Fatalf("starting containers: %v\n%s", startErr, e.Docker.LogTail(20))
	}
	// Events may trail the last start by a moment.
	_ = WaitFor(ctx, 5*time.Second, func() error {
		emu.Lock()
		defer emu.Unlock()
		for _, id := range ours {
			if _, ok := started[id]; !ok {
				return fmt.Errorf("no start event for %s", shortID(id))
			}
		}
		return nil
	})
	emu.Lock()
	for _, id := range ours {
		ev, ok := started[id]
		f, fok := fwSeen[id]
		c, cok := consulSeen[id]
		if !ok || !fok || !cok {
			res.Missing++
			continue
		}
		res.FirewallMs = append(res.FirewallMs, float64(f.Sub(ev))/float64(time.Millisecond))
		res.ConsulMs = append(res.ConsulMs, float64(c.Sub(ev))/float64(time.Millisecond))
	}
	emu.Unlock()
	bn.mu.Lock()
	for _, id := range ours {
		bn.ids = append(bn.ids, id)
	}
	bn.mu.Unlock()
	after, err := bn.histogram()
	if err != nil {
		t.Fatalf("metrics after the burst: %v", err)
	}
	res.Agent = after.Sub(before)
	hwm, _ := benchProcMiB(bn.pid, "VmHWM")
	rp := benchdata.Resource{Phase: "burst", Containers: len(bn.ids), WallSec: res.WallSec,
		CPUPercent: benchCPUPercent(ticks1-ticks0, res.WallSec), RSSMiB: peakRSS, HWMMiB: hwm}
	return res, rp
}

// start creates and starts one benchmark container, as a job would:
// ingress from @office and one service.
func (bn *bencher) start(ctx context.Context, i int) (string, error) {
	e := bn.e
	labels := map[string]string{
		"v6reg.job":      "bench",
		"v6reg.ingress":  "tcp/8080 from @office",
		"v6reg.services": fmt.Sprintf("bench%d:8080:tcp", i),
	}
	cfg := &container.Config{Image: e.Image, Labels: labels, Cmd: []string{"/bin/sh", "-c", "exec sleep 3600"}}
	hc := &container.HostConfig{NetworkMode: container.NetworkMode(NetworkName)}
	nc := &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{NetworkName: {}}}
	created, err := e.Docker.Client.ContainerCreate(ctx, cfg, hc, nc, nil, fmt.Sprintf("bench-%d", i))
	if err != nil {
		return "", fmt.Errorf("creating bench-%d: %w", i, err)
	}
	if err := e.Docker.Client.ContainerStart(ctx, created.ID, container.StartOptions{}); err != nil {
		return "", fmt.Errorf("starting bench-%d: %w", i, err)
	}
	return created.ID, nil
}

// removeAll removes every benchmark container (benchStarters at a time)
// and waits until the table and Consul hold none of them.
func (bn *bencher) removeAll(ctx context.Context) (benchdata.Removal, error) {
	bn.mu.Lock()
	ids := bn.ids
	bn.ids = nil
	bn.mu.Unlock()
	res := benchdata.Removal{Containers: len(ids)}
	if len(ids) == 0 {
		return res, nil
	}
	t0 := time.Now()
	ch := make(chan string)
	var wg sync.WaitGroup
	for w := 0; w < benchStarters; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range ch {
				if err := bn.e.Remove(ctx, id); err != nil && ctx.Err() == nil {
					bn.t.Logf("removing %s: %v", shortID(id), err)
				}
			}
		}()
	}
	for _, id := range ids {
		ch <- id
	}
	close(ch)
	wg.Wait()
	err := WaitFor(ctx, 3*time.Minute, func() error {
		counters, err := bn.fw.Counters(ctx)
		if err != nil {
			return err
		}
		if len(counters) != 0 {
			return fmt.Errorf("%d containers still in the table", len(counters))
		}
		svcs, err := bn.e.ConsulServices()
		if err != nil {
			return err
		}
		for sid := range svcs {
			if strings.Contains(sid, "bench") {
				return fmt.Errorf("still registered: %s", sid)
			}
		}
		return nil
	})
	res.WallSec = time.Since(t0).Seconds()
	if err != nil {
		return res, fmt.Errorf("after removing %d containers: %w", len(ids), err)
	}
	return res, nil
}

// idle measures the agent's CPU and RSS over benchIdle with nothing
// changing.
func (bn *bencher) idle(ctx context.Context, containers int) benchdata.Resource {
	// Let the last burst's stragglers (health checks' first runs, a
	// resync) settle first.
	select {
	case <-ctx.Done():
	case <-time.After(2 * time.Second):
	}
	t0 := time.Now()
	ticks0 := bn.ticks()
	select {
	case <-ctx.Done():
	case <-time.After(benchIdle):
	}
	ticks1 := bn.ticks()
	wall := time.Since(t0).Seconds()
	rss, _ := benchProcMiB(bn.pid, "VmRSS")
	hwm, _ := benchProcMiB(bn.pid, "VmHWM")
	return benchdata.Resource{Phase: "idle", Containers: containers, WallSec: wall, CPUPercent: benchCPUPercent(ticks1-ticks0, wall), RSSMiB: rss, HWMMiB: hwm}
}

func (bn *bencher) ticks() uint64 {
	n, err := benchProcTicks(bn.pid)
	if err != nil {
		bn.t.Fatalf("agent CPU: %v", err)
	}
	return n
}

func benchCPUPercent(ticks uint64, wall float64) float64 {
	if wall <= 0 {
		return 0
	}
	return float64(ticks) / benchClockTicks / wall * 100
}

// benchProcTicks is utime+stime of pid, in clock ticks.
func benchProcTicks(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name may hold spaces; the fields follow its ')'.
	s := string(b)
	fs := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(fs) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields after the name, want >= 13", pid, len(fs))
	}
	// fs[0] is field 3 (state); utime and stime are fields 14 and 15.
	u, err1 := strconv.ParseUint(fs[11], 10, 64)
	st, err2 := strconv.ParseUint(fs[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: utime %q stime %q", pid, fs[11], fs[12])
	}
	return u + st, nil
}

// benchProcMiB reads a kB field of /proc/<pid>/status, in MiB.
func benchProcMiB(pid int, field string) (float64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || k != field {
			continue
		}
		kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/%d/status %s: %q", pid, field, v)
		}
		return kb / 1024, nil
	}
	return 0, fmt.Errorf("/proc/%d/status has no %s", pid, field)
}

// histogram scrapes v6reg_event_to_applied_seconds from /metrics.
func (bn *bencher) histogram() (benchdata.Histogram, error) {
	resp, err := bn.e.Node.HTTPClient().Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", MetricsPort))
	if err != nil {
		return benchdata.Histogram{}, err
	}
	defer resp.Body.Close()
	h := benchdata.Histogram{Buckets: map[string]float64{}}
	const name = "v6reg_event_to_applied_seconds"
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) {
			continue
		}
		key, val, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
		if err != nil {
			continue
		}
		switch {
		case key == name+"_sum":
			h.Sum = v
		case key == name+"_count":
			h.Count = v
		case strings.HasPrefix(key, name+`_bucket{le="`):
			h.Buckets[strings.TrimSuffix(strings.TrimPrefix(key, name+`_bucket{le="`), `"}`)] = v
		}
	}
	if len(h.Buckets) == 0 {
		return h, fmt.Errorf("no %s in /metrics", name)
	}
	return h, sc.Err()
}

func benchMedian(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}
