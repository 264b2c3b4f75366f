// Command benchreport runs every v6reg benchmark (the Go benchmarks of
// firewall, ipam, policies and the policy check, and the end-to-end
// measurements of integration/bench_test.go) and writes BENCHMARKS.md:
// the machine, the date, the commit and, for each figure, the median and
// spread of the runs. Every number in the report is parsed from the runs'
// output; only medians, percentiles and ratios of those are computed here.
//
// `make bench` runs it as root from the repository root:
//
//	go run ./integration/cmd/benchreport -out BENCHMARKS.md -raw bench.out
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/v6reg/v6reg/integration/benchdata"
)

// step is one `go test -bench` invocation.
type step struct {
	pkg, bench, benchtime string
	count                 int
}

// The counts: 5 where a run is cheap, 3 where each iteration builds a
// 10,000-container table from scratch.
var steps = []step{
	{"./firewall", "^Benchmark(AddOneContainerAt|Reapply10000Cached)", "", 5},
	{"./firewall", "^Benchmark(AddOneContainerDeltaAt|PeerSetDelta)", "", 5},
	{"./firewall", "^Benchmark(FullApply10000|Reapply10000Fresh)$", "3x", 3},
	{"./firewall", "^BenchmarkConns", "", 5},
	{"./ipam", ".", "", 5},
	{"./policies", ".", "", 5},
	{"./cmd/v6reg", "^BenchmarkPolicyCheck", "", 5},
	{"./agent", "^BenchmarkBuildOneChanged", "", 5},
	// The agent at 1,000 containers: real firewall and Consul, replayed
	// Docker (integration/scale_bench_test.go). Each run starts Consul
	// and registers 1,000 containers first (~30 s).
	{"./integration", "^BenchmarkBurst100At1000$", "3x", 3},
	// Consul alone, the floor under the start-to-Consul target: a burst's
	// registrations sent straight to a Consul agent (~20 s a run).
	{"./integration", "^BenchmarkConsulAlone$", "5x", 3},
}

func main() {
	out := flag.String("out", "BENCHMARKS.md", "the report to write")
	raw := flag.String("raw", "bench.out", "where the raw output of every run goes (benchstat reads it)")
	total := flag.Duration("total", 19*time.Minute, "the whole run's budget; the end-to-end part gets what the Go benchmarks leave")
	skipE2E := flag.Bool("skip-e2e", false, "only the Go benchmarks")
	render := flag.Bool("render", false, "run nothing: write the report from the raw output of an earlier run (-raw); the machine and date are today's")
	flag.Parse()
	var err error
	if *render {
		err = renderOnly(*out, *raw)
	} else {
		err = run(*out, *raw, *total, *skipE2E)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchreport:", err)
		os.Exit(1)
	}
}

func run(outPath, rawPath string, total time.Duration, skipE2E bool) error {
	begin := time.Now()
	m := machine()
	m.LoadStart = loadavg()
	rawF, err := os.Create(rawPath) //nolint:gosec // G304: the -raw flag names the output file
	if err != nil {
		return fmt.Errorf("raw output: %w", err)
	}
	// On the error paths; the success path closes it and checks.
	defer func() { _ = rawF.Close() }()

	var all bytes.Buffer
	for _, s := range steps {
		args := []string{"test", "-run", "^$", "-bench", s.bench, "-benchmem", "-count", strconv.Itoa(s.count), "-timeout", "15m"}
		if s.benchtime != "" {
			args = append(args, "-benchtime", s.benchtime)
		}
		args = append(args, s.pkg)
		fmt.Fprintf(os.Stderr, "== go %s\n", strings.Join(args, " "))
		cmd := exec.Command("go", args...)
		var buf bytes.Buffer
		cmd.Stdout = io.MultiWriter(&buf, rawF, os.Stderr)
		cmd.Stderr = io.MultiWriter(rawF, os.Stderr)
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("go %s: %w", strings.Join(args, " "), err)
		}
		all.Write(buf.Bytes())
	}
	benches := parseBench(all.String())
	goSecs := time.Since(begin).Seconds()

	var e2e *benchdata.Results
	var e2eFailed error
	e2eNote := ""
	if !skipE2E {
		// The test itself needs ~1.5 min besides its budget: the agent
		// builds, the topology, and removing the containers at the end.
		budget := total - time.Since(begin) - 3*time.Minute
		if budget < 3*time.Minute {
			budget = 3 * time.Minute
		}
		f, err := os.CreateTemp("", "v6reg-e2e-*.json")
		if err != nil {
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
		defer func() { _ = os.Remove(f.Name()) }() // a leftover temp file harms no one
		args := []string{"test", "-run", "^TestBenchEndToEnd$", "-v", "-count=1", "-timeout", "30m", "./integration"}
		fmt.Fprintf(os.Stderr, "== go %s (budget %s)\n", strings.Join(args, " "), budget.Round(time.Second))
		cmd := exec.Command("go", args...)
		cmd.Env = append(os.Environ(), "V6REG_BENCH=1", "V6REG_BENCH_OUT="+f.Name(), "V6REG_BENCH_BUDGET="+budget.Round(time.Second).String())
		cmd.Stdout = io.MultiWriter(rawF, os.Stderr)
		cmd.Stderr = io.MultiWriter(rawF, os.Stderr)
		runErr := cmd.Run()
		b, err := os.ReadFile(f.Name())
		if err != nil || len(b) == 0 {
			return fmt.Errorf("end-to-end results %s: empty or unreadable (%v, test: %v); see %s", f.Name(), err, runErr, rawPath)
		}
		if runErr != nil {
			// The measurements were written; a failure after them (the
			// teardown) is reported, not allowed to lose them.
			e2eFailed = fmt.Errorf("end-to-end test (go %s): %w; its results were written, see %s", strings.Join(args, " "), runErr, rawPath)
		}
		e2e = &benchdata.Results{}
		if err := json.Unmarshal(b, e2e); err != nil {
			return fmt.Errorf("end-to-end results: %w", err)
		}
		if _, err := fmt.Fprintf(rawF, "%s%s\n", e2eMarker, b); err != nil {
			return fmt.Errorf("raw output: %w", err)
		}
	} else {
		e2eNote = "not run (-skip-e2e)"
	}
	m.LoadEnd = loadavg()
	m.Total = time.Since(begin)
	m.GoSecs = goSecs

	if err := rawF.Close(); err != nil {
		return fmt.Errorf("raw output: %w", err)
	}
	var md bytes.Buffer
	report(&md, m, benches, e2e, e2eNote)
	if err := os.WriteFile(outPath, md.Bytes(), 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", outPath, err)
	}
	fmt.Fprintf(os.Stderr, "wrote %s and %s in %s\n", outPath, rawPath, m.Total.Round(time.Second))
	return e2eFailed
}

const e2eMarker = "\n# end-to-end results (JSON)\n"

// renderOnly rewrites the report from a raw file run wrote, to change the
// report's layout without measuring again.
func renderOnly(outPath, rawPath string) error {
	b, err := os.ReadFile(rawPath) //nolint:gosec // G304: the -raw flag names the input file
	if err != nil {
		return fmt.Errorf("raw output: %w", err)
	}
	s := string(b)
	var e2e *benchdata.Results
	note := "not in " + rawPath
	if i := strings.Index(s, e2eMarker); i >= 0 {
		e2e = &benchdata.Results{}
		if err := json.Unmarshal([]byte(s[i+len(e2eMarker):]), e2e); err != nil {
			return fmt.Errorf("end-to-end results in %s: %w", rawPath, err)
		}
		s = s[:i]
	}
	m := machine()
	m.LoadStart, m.LoadEnd = "not recorded (-render)", "not recorded"
	var md bytes.Buffer
	report(&md, m, parseBench(s), e2e, note)
	return os.WriteFile(outPath, md.Bytes(), 0o644)
}

// ---- machine

type machineInfo struct {
	CPU, Kernel, Go, Docker, Commit, Date string
	Cores                                 int
	MemGiB                                float64
	LoadStart, LoadEnd                    string
	Total                                 time.Duration
	GoSecs                                float64
}

func machine() machineInfo {
	m := machineInfo{Cores: runtime.NumCPU(), Date: time.Now().UTC().Format("2006-01-02 15:04 MST")}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "MemTotal:"); ok {
				kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
				m.MemGiB = kb / (1 << 20)
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	m.Go = cmdOut("go", "version")
	m.Docker = cmdOut("dockerd", "--version")
	m.Commit = cmdOut("git", "rev-parse", "HEAD")
	if st := cmdOut("git", "status", "--porcelain", "--untracked-files=no"); st != "" && !strings.HasPrefix(st, "(") {
		m.Commit += " (with uncommitted changes in the working tree)"
	}
	return m
}

func cmdOut(name string, args ...string) string {
	b, err := exec.Command(name, args...).Output()
	if err != nil {
		return fmt.Sprintf("(%s: %v)", name, err)
	}
	return strings.TrimSpace(string(b))
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// ---- go test -bench output

// benchResults maps a benchmark (without the -GOMAXPROCS suffix) to its
// values by unit, one per run.
type benchResults map[string]map[string][]float64

var benchLine = regexp.MustCompile(`^(Benchmark\S+?)(?:-\d+)?\s+(\d+)\s+(.+)$`)

func parseBench(s string) benchResults {
	r := benchResults{}
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		m := benchLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		f := strings.Fields(m[3])
		if r[m[1]] == nil {
			r[m[1]] = map[string][]float64{}
		}
		for i := 0; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				continue
			}
			r[m[1]][f[i+1]] = append(r[m[1]][f[i+1]], v)
		}
	}
	return r
}

type summary struct {
	Med, Min, Max float64
	N             int
}

func summarize(xs []float64) summary {
	if len(xs) == 0 {
		return summary{Med: math.NaN(), Min: math.NaN(), Max: math.NaN()}
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return summary{Med: med, Min: s[0], Max: s[len(s)-1], N: len(s)}
}

// percentile is the nearest-rank percentile of xs.
func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	i := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}

func (r benchResults) get(name, unit string) summary { return summarize(r[name][unit]) }

// ---- end-to-end results: the JSON of integration/bench_test.go

// quantileBound is the upper bound of the bucket that holds quantile q:
// the histogram says only "at most this".
func quantileBound(h benchdata.Histogram, q float64) string {
	if h.Count == 0 {
		return "–"
	}
	type b struct {
		le  float64
		cnt float64
	}
	var bs []b
	for k, v := range h.Buckets {
		le, err := strconv.ParseFloat(k, 64)
		if k == "+Inf" {
			le, err = math.Inf(1), nil
		}
		if err == nil {
			bs = append(bs, b{le, v})
		}
	}
	slices.SortFunc(bs, func(x, y b) int {
		if x.le < y.le {
			return -1
		}
		if x.le > y.le {
			return 1
		}
		return 0
	})
	for _, x := range bs {
		if x.cnt >= q*h.Count {
			if math.IsInf(x.le, 1) {
				return "> largest bucket"
			}
			return "≤ " + fmtDur(x.le*1e9)
		}
	}
	return "?"
}

// ---- formatting

// fmtDur formats nanoseconds with a unit that keeps 3 significant digits.
func fmtDur(ns float64) string {
	switch {
	case math.IsNaN(ns):
		return "–"
	case ns >= 1e9:
		return fmt.Sprintf("%.3g s", ns/1e9)
	case ns >= 1e6:
		return fmt.Sprintf("%.3g ms", ns/1e6)
	case ns >= 1e3:
		return fmt.Sprintf("%.3g µs", ns/1e3)
	}
	return fmt.Sprintf("%.3g ns", ns)
}

func fmtNum(v float64) string {
	if math.IsNaN(v) {
		return "–"
	}
	if v >= 100 {
		return strconv.FormatFloat(math.Round(v), 'f', -1, 64)
	}
	return strconv.FormatFloat(v, 'g', 3, 64)
}

func ratio(a, b float64) string {
	if math.IsNaN(a) || math.IsNaN(b) || b == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f×", a/b)
}

type table struct {
	w *bytes.Buffer
}

func newTable(w *bytes.Buffer, head ...string) table {
	fmt.Fprintf(w, "| %s |\n|%s\n", strings.Join(head, " | "), strings.Repeat(" --- |", len(head)))
	return table{w}
}

func (t table) row(cells ...string) { fmt.Fprintf(t.w, "| %s |\n", strings.Join(cells, " | ")) }

// durRow is a ns/op benchmark: median, min–max, runs, B/op, allocs/op.
func durRow(t table, r benchResults, label, name string) {
	s := r.get(name, "ns/op")
	t.row(label, fmtDur(s.Med), fmtDur(s.Min)+" – "+fmtDur(s.Max), strconv.Itoa(s.N),
		fmtNum(r.get(name, "B/op").Med), fmtNum(r.get(name, "allocs/op").Med), "`"+name+"`")
}

func metricRow(t table, r benchResults, label, name, unit, shown string) {
	s := r.get(name, unit)
	t.row(label, fmtNum(s.Med)+" "+shown, fmtNum(s.Min)+" – "+fmtNum(s.Max), strconv.Itoa(s.N), "`"+name+"`")
}

func report(w *bytes.Buffer, m machineInfo, r benchResults, e *benchdata.Results, e2eNote string) {
	fmt.Fprintf(w, "# v6reg benchmarks\n\n")
	fmt.Fprintf(w, "Generated by `make bench` (integration/cmd/benchreport); do not edit by hand. "+
		"Every figure is parsed from the output of the runs (kept in `bench.out`, which benchstat reads); "+
		"medians, percentiles and ratios are computed from those numbers, nothing else.\n\n")
	fmt.Fprintf(w, "## Machine\n\n")
	t := newTable(w, "", "")
	t.row("CPU", m.CPU)
	t.row("cores", strconv.Itoa(m.Cores))
	t.row("memory", fmt.Sprintf("%.1f GiB", m.MemGiB))
	t.row("kernel", m.Kernel)
	t.row("Go", m.Go)
	t.row("dockerd", m.Docker)
	t.row("date", m.Date)
	t.row("commit", m.Commit)
	t.row("load average (1, 5, 15 min) at start / end", m.LoadStart+" / "+m.LoadEnd)
	if m.Total > 0 {
		t.row("time for the whole `make bench`", fmt.Sprintf("%s (Go benchmarks %s)", m.Total.Round(time.Second), (time.Duration(m.GoSecs)*time.Second).Round(time.Second)))
	}
	fmt.Fprintf(w, "\nThe machine is shared (other builds and tests may run at the same time; see the load average), "+
		"so read the spread before the median. \"Spread\" is the minimum – maximum over the runs (`-count`).\n\n")

	targets(w, r)

	fmt.Fprintf(w, "## 1. Firewall: apply cost for one container\n\n"+
		"One `Apply` that adds (or removes) one container, with 0, 1,000 and 10,000 containers already programmed "+
		"(each with 3 ingress and 2 egress rules), in a network namespace of its own, as one netlink batch.\n\n")
	head := []string{"figure", "median", "spread", "runs", "B/op", "allocs/op", "benchmark"}
	t = newTable(w, head...)
	durRow(t, r, "add one at 0", "BenchmarkAddOneContainerAt0")
	durRow(t, r, "add one at 1,000", "BenchmarkAddOneContainerAt1000")
	durRow(t, r, "add one at 10,000", "BenchmarkAddOneContainerAt10000")
	a0, a1k, a10k := r.get("BenchmarkAddOneContainerAt0", "ns/op"), r.get("BenchmarkAddOneContainerAt1000", "ns/op"), r.get("BenchmarkAddOneContainerAt10000", "ns/op")
	fmt.Fprintf(w, "\nRatio of the medians: **10k:0 = %s**, 1k:0 = %s (worst case, slowest 10k run over fastest 0 run: %s).\n\n",
		ratio(a10k.Med, a0.Med), ratio(a1k.Med, a0.Med), ratio(a10k.Max, a0.Min))
	fmt.Fprintf(w, "The agent sends a container's start as a delta (`ApplyDelta`: only that container, against the table's model, with no pass over the others); a change of one peer set likewise:\n\n")
	t = newTable(w, head...)
	durRow(t, r, "add one at 0, by delta", "BenchmarkAddOneContainerDeltaAt0")
	durRow(t, r, "add one at 10,000, by delta", "BenchmarkAddOneContainerDeltaAt10000")
	durRow(t, r, "a peer set named by one of 10,000 changes", "BenchmarkPeerSetDeltaOneUserAt10000")
	durRow(t, r, "a peer set named by all 10,000 changes", "BenchmarkPeerSetDeltaAllUsersAt10000")
	d0, d10k := r.get("BenchmarkAddOneContainerDeltaAt0", "ns/op"), r.get("BenchmarkAddOneContainerDeltaAt10000", "ns/op")
	fmt.Fprintf(w, "\nRatio of the medians, by delta: **10k:0 = %s**.\n\n", ratio(d10k.Med, d0.Med))

	fmt.Fprintf(w, "## 2. Firewall: full apply and re-apply of 10,000 containers\n\n")
	t = newTable(w, head...)
	durRow(t, r, "full apply of 10,000 from empty", "BenchmarkFullApply10000")
	durRow(t, r, "re-apply, new instance (restart: reads the table, sends nothing)", "BenchmarkReapply10000Fresh")
	durRow(t, r, "re-apply, same instance (steady state: sends nothing)", "BenchmarkReapply10000Cached")
	if b := r.get("BenchmarkFullApply10000", "batches"); b.N > 0 {
		fmt.Fprintf(w, "\nThe full apply went out in %s netlink batches (median). Both re-applies fail the benchmark if they send anything.\n", fmtNum(b.Med))
	}
	fmt.Fprintln(w)

	fmt.Fprintf(w, "## 3. Data path: short TCP connections through the node\n\n"+
		"Connect, greeting, 1-byte echo, close, from a client namespace to a container behind the node's bridge "+
		"(br_netfilter on), one at a time. \"v6reg\" has the v6reg table with 10,000 other containers; "+
		"\"naive\" has one `ip6 daddr X tcp dport 8080 accept` rule per container (10,000, the target's last), "+
		"the way per-container ip6tables chains grow.\n\n")
	t = newTable(w, "figure", "median", "spread", "runs", "benchmark")
	metricRow(t, r, "no table", "BenchmarkConnsNoTable", "conns/s", "conns/s")
	metricRow(t, r, "v6reg, 10,000 containers", "BenchmarkConnsV6reg10000", "conns/s", "conns/s")
	metricRow(t, r, "naive chain, 10,000 rules", "BenchmarkConnsNaive10000", "conns/s", "conns/s")
	none, v6, naive := r.get("BenchmarkConnsNoTable", "conns/s"), r.get("BenchmarkConnsV6reg10000", "conns/s"), r.get("BenchmarkConnsNaive10000", "conns/s")
	fmt.Fprintf(w, "\nRatios of the medians (rate, higher is better): **v6reg:none = %s**, **naive:none = %s**, v6reg:naive = %s.\n\n",
		ratio(v6.Med, none.Med), ratio(naive.Med, none.Med), ratio(v6.Med, naive.Med))

	fmt.Fprintf(w, "## 4. IPAM\n\n"+
		"RequestAddress and ReleaseAddress through the Docker remote-IPAM plugin socket, with the bbolt lease store "+
		"(each call one fsync'd commit). The p50/p99 are of the calls within one run; the table gives their median and spread over the runs.\n\n")
	t = newTable(w, "figure", "median", "spread", "runs", "benchmark")
	metricRow(t, r, "RequestAddress p50", "BenchmarkDriverSocket", "request-p50-µs", "µs")
	metricRow(t, r, "RequestAddress p99", "BenchmarkDriverSocket", "request-p99-µs", "µs")
	metricRow(t, r, "ReleaseAddress p50", "BenchmarkDriverSocket", "release-p50-µs", "µs")
	metricRow(t, r, "ReleaseAddress p99", "BenchmarkDriverSocket", "release-p99-µs", "µs")
	fmt.Fprintln(w)
	t = newTable(w, head...)
	durRow(t, r, "socket round trip (request + release)", "BenchmarkDriverSocket")
	durRow(t, r, "allocator request + release, 10k leases", "BenchmarkAllocate10k")
	durRow(t, r, "allocator request + release, 100k leases", "BenchmarkAllocate100k")
	durRow(t, r, "allocator, /112 with 60k of 65k used", "BenchmarkAllocateSmallNearlyFull")
	fmt.Fprintln(w)

	fmt.Fprintf(w, "## 5. Event to applied, with a real dockerd\n\n")
	if e == nil {
		fmt.Fprintf(w, "End-to-end measurements %s.\n\n", e2eNote)
	} else {
		e2eLatency(w, e)
	}
	fmt.Fprintf(w, "## 6. Agent memory and CPU\n\n")
	if e == nil {
		fmt.Fprintf(w, "End-to-end measurements %s.\n\n", e2eNote)
	} else {
		e2eResources(w, e)
	}

	fmt.Fprintf(w, "## 7. Policies\n\n")
	t = newTable(w, head...)
	durRow(t, r, "parse a 50-rule ingress policy", "BenchmarkParse50Rules")
	durRow(t, r, "parse + resolve (Evaluate) a 50-rule policy", "BenchmarkEvaluate50Rules")
	durRow(t, r, "`v6reg policy check` of a 20-group job", "BenchmarkPolicyCheck20Groups")
	fmt.Fprintln(w)

	fmt.Fprintf(w, "## 8. The agent at 1,000 containers\n\n"+
		"`BenchmarkBurst100At1000`: 100 container starts (their events at once) while 1,000 are managed, from each start event "+
		"to the firewall holding its rules and to Consul holding its registrations; percentiles over the 300 starts of a run. "+
		"The agent's own code (agent.New and Run), the kernel firewall in a network namespace and a real Consul agent; "+
		"Docker is replayed (list, inspect and events with Docker's bodies, 2 ms a call) because 1,100 real containers do not fit "+
		"beside dockerd on 2 cores. Section 5 has the same path with a real dockerd, smaller. "+
		"`BenchmarkBuildOneChanged*`: one pass's desired state when one container changed and the others are memoized.\n\n")
	t = newTable(w, "figure", "median", "spread", "runs", "benchmark")
	metricRow(t, r, "start event to firewall, p50", "BenchmarkBurst100At1000", "fw-p50-ms", "ms")
	metricRow(t, r, "start event to firewall, p99", "BenchmarkBurst100At1000", "fw-p99-ms", "ms")
	metricRow(t, r, "start event to Consul, p50", "BenchmarkBurst100At1000", "consul-p50-ms", "ms")
	metricRow(t, r, "start event to Consul, p99", "BenchmarkBurst100At1000", "consul-p99-ms", "ms")
	metricRow(t, r, "one Consul register call (mean)", "BenchmarkBurst100At1000", "consul-register-call-ms", "ms")
	metricRow(t, r, "Consul register calls a burst", "BenchmarkBurst100At1000", "consul-register-calls", "")
	metricRow(t, r, "a burst's time inside Consul's register calls", "BenchmarkBurst100At1000", "consul-in-calls-ms", "ms")
	fmt.Fprintln(w)
	fmt.Fprintf(w, "Consul alone (`BenchmarkConsulAlone`): a burst's 200 registrations (100 services with a TCP check, 100 `v6reg-jobs` "+
		"entries, as the agent makes them) sent back to back to a Consul agent, no v6reg in between.\n\n")
	t = newTable(w, head...)
	durRow(t, r, "100 containers' registrations, Consul holding none", "BenchmarkConsulAlone/at=0")
	durRow(t, r, "100 containers' registrations, Consul holding 1,000 containers'", "BenchmarkConsulAlone/at=1000")
	fmt.Fprintln(w)
	t = newTable(w, head...)
	durRow(t, r, "desired state, one of 1,000 changed", "BenchmarkBuildOneChangedAt1000")
	durRow(t, r, "desired state, one of 10,000 changed", "BenchmarkBuildOneChangedAt10000")
	fmt.Fprintf(w, "\nConsul's agent takes registrations one at a time, each in a time that grows with the services and checks it holds: "+
		"its register handler syncs the agent's whole local state to the catalog before it answers (hashicorp/consul#8990), and the "+
		"catalog's register reads every service of the node. A burst of 100 containers is 200 registrations (each container's "+
		"service and its `v6reg-jobs` entry), so the last one is in Consul no sooner than the burst's time inside the register calls: "+
		"that, not the agent, bounds the Consul figure. The p99 less that time is v6reg's own share.\n\n")
}

// targets checks the figures issue 18 set against what was measured.
func targets(w *bytes.Buffer, r benchResults) {
	fmt.Fprintf(w, "## Targets\n\n")
	t := newTable(w, "target", "measured (median of runs)", "met", "from")
	check := func(name, shown string, v, limit float64, from string) {
		met := "no"
		switch {
		case v == 0 || math.IsNaN(v):
			shown, met = "not run", "?"
		case v <= limit:
			met = "yes"
		}
		t.row(name, shown, met, from)
	}
	fw := r.get("BenchmarkBurst100At1000", "fw-p99-ms").Med
	check("start to firewall p99 <= 100 ms (burst of 100 at 1,000)", fmtNum(fw)+" ms", fw, 100, "§8")
	co := r.get("BenchmarkBurst100At1000", "consul-p99-ms").Med
	check("start to Consul p99 <= 150 ms (burst of 100 at 1,000)", fmtNum(co)+" ms", co, 150, "§8")
	if floor := r.get("BenchmarkConsulAlone/at=1000", "ns/op").Med; floor > 0 {
		t.row("  the same burst's registrations into Consul alone (the floor)", fmtDur(floor), "-", "§8")
	}
	for _, c := range []struct{ label, at0, at10k string }{
		{"add one at 10,000 <= 1.5x add one at 0 (by delta, as the agent sends it)", "BenchmarkAddOneContainerDeltaAt0", "BenchmarkAddOneContainerDeltaAt10000"},
		{"the same through Apply of the whole state (the resync's path)", "BenchmarkAddOneContainerAt0", "BenchmarkAddOneContainerAt10000"},
	} {
		a0, a10k := r.get(c.at0, "ns/op").Med, r.get(c.at10k, "ns/op").Med
		rat := math.NaN()
		if a0 > 0 {
			rat = a10k / a0
		}
		check(c.label, ratio(a10k, a0), rat, 1.5, "§1")
	}
	fresh := r.get("BenchmarkReapply10000Fresh", "ns/op").Med
	check("restart with 10,000 programmed: read and diff <= 300 ms", fmtDur(fresh), fresh/1e6, 300, "§2")
	fmt.Fprintln(w)
}

func e2eLatency(w *bytes.Buffer, e *benchdata.Results) {
	fmt.Fprintf(w, "Containers started in a burst by %d concurrent starters (`docker create` + `start`, busybox `exec sleep 3600`, "+
		"labels `v6reg.ingress=tcp/8080 from @office` and `v6reg.services=benchN:8080:tcp`) on the v6reg network, "+
		"with the agent (built without -race, log level info), dockerd and a Consul dev agent in the node's network namespace. "+
		"For each container: from its `start` event (dockerd's timestamp, from the event stream) to the first poll that saw "+
		"(a) its elements in the kernel's nftables table and (b) its service in Consul's agent catalogue. "+
		"The table and Consul are polled every %s, plus the time a poll takes, so each latency is high by up to one poll.\n\n",
		e.Starters, e.PollInterval)
	var fw, cs []float64
	var fwMeds, csMeds []float64
	var hist benchdata.Histogram
	n100 := 0
	t := newTable(w, "burst", "containers", "already managed", "all started", "all applied", "→ firewall median / p99 / max", "→ Consul median / p99 / max", "not seen")
	for i, b := range e.Bursts {
		t.row(strconv.Itoa(i+1), strconv.Itoa(b.Containers), strconv.Itoa(b.Before),
			fmt.Sprintf("%.1f s", b.StartSec), fmt.Sprintf("%.1f s", b.WallSec),
			fmtDur(percentile(b.FirewallMs, 50)*1e6)+" / "+fmtDur(percentile(b.FirewallMs, 99)*1e6)+" / "+fmtDur(percentile(b.FirewallMs, 100)*1e6),
			fmtDur(percentile(b.ConsulMs, 50)*1e6)+" / "+fmtDur(percentile(b.ConsulMs, 99)*1e6)+" / "+fmtDur(percentile(b.ConsulMs, 100)*1e6),
			strconv.Itoa(b.Missing))
		if b.Before == 0 && b.Containers == 100 {
			n100++
			fw = append(fw, b.FirewallMs...)
			cs = append(cs, b.ConsulMs...)
			fwMeds = append(fwMeds, percentile(b.FirewallMs, 50))
			csMeds = append(csMeds, percentile(b.ConsulMs, 50))
			if hist.Buckets == nil {
				hist = b.Agent
			} else {
				hist = hist.Add(b.Agent)
			}
		}
	}
	if n100 > 0 {
		fs, css := summarize(fwMeds), summarize(csMeds)
		fmt.Fprintf(w, "\nThe %d bursts of 100 together (%d containers):\n\n", n100, len(fw))
		t = newTable(w, "start event to", "median", "p99", "max", "spread of the per-burst medians")
		t.row("firewall elements in the kernel", fmtDur(percentile(fw, 50)*1e6), fmtDur(percentile(fw, 99)*1e6), fmtDur(percentile(fw, 100)*1e6),
			fmtDur(fs.Min*1e6)+" – "+fmtDur(fs.Max*1e6))
		t.row("Consul service registered", fmtDur(percentile(cs, 50)*1e6), fmtDur(percentile(cs, 99)*1e6), fmtDur(percentile(cs, 100)*1e6),
			fmtDur(css.Min*1e6)+" – "+fmtDur(css.Max*1e6))
		mean := math.NaN()
		if hist.Count > 0 {
			mean = hist.Sum / hist.Count * 1e9
		}
		fmt.Fprintf(w, "\nCross-check, the agent's own `v6reg_event_to_applied_seconds` over those bursts (one observation per reconcile, "+
			"from the first event that asked for it to its changes applied; a burst coalesces into few reconciles): "+
			"%s observations, mean %s, median %s, p99 %s (bucket bounds).\n\n",
			fmtNum(hist.Count), fmtDur(mean), quantileBound(hist, 0.5), quantileBound(hist, 0.99))
	}
	if len(e.Removals) > 0 {
		var rs []string
		for _, r := range e.Removals {
			rs = append(rs, fmt.Sprintf("%d in %.1f s", r.Containers, r.WallSec))
		}
		fmt.Fprintf(w, "Removing a burst (`docker rm -f`, %d at a time) until the table and Consul held none of it: %s.\n\n", e.Starters, strings.Join(rs, ", "))
	}
	if e.ScaleNote != "" {
		fmt.Fprintf(w, "**%s.** The largest number of containers measured is %d.\n\n", e.ScaleNote, e.Largest)
	}
}

func e2eResources(w *bytes.Buffer, e *benchdata.Results) {
	fmt.Fprintf(w, "The agent process (found by its config path in /proc/*/cmdline): RSS from /proc/<pid>/status, "+
		"CPU as utime+stime from /proc/<pid>/stat over the wall time of the phase, in %% of one core. "+
		"Idle is one %s window (after 2 s of settling) with nothing changing; burst is from the first `docker create` "+
		"to the last registration seen, with the peak RSS sampled at every poll.\n\n", "10 s")
	t := newTable(w, "containers managed", "phase", "runs", "CPU % of one core: median (spread)", "RSS MiB: median (spread)", "VmHWM MiB at the end")
	type key struct {
		phase string
		n     int
	}
	var order []key
	groups := map[key][]benchdata.Resource{}
	for _, r := range e.Resources {
		k := key{r.Phase, r.Containers}
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], r)
	}
	for _, k := range order {
		var cpu, rss, hwm []float64
		for _, r := range groups[k] {
			cpu = append(cpu, r.CPUPercent)
			rss = append(rss, r.RSSMiB)
			hwm = append(hwm, r.HWMMiB)
		}
		phase := k.phase
		if phase == "burst" {
			phase = fmt.Sprintf("burst up to %d", k.n)
		}
		c, s, h := summarize(cpu), summarize(rss), summarize(hwm)
		spread := func(s summary, f string) string {
			if s.N == 1 {
				return fmt.Sprintf(f, s.Med)
			}
			return fmt.Sprintf(f+" ("+f+" – "+f+")", s.Med, s.Min, s.Max)
		}
		t.row(strconv.Itoa(k.n), phase, strconv.Itoa(c.N), spread(c, "%.1f"), spread(s, "%.1f"), fmt.Sprintf("%.1f", h.Max))
	}
	fmt.Fprintln(w)
	if e.ScaleNote != "" {
		fmt.Fprintf(w, "1,000 containers did not fit this run's budget (see section 5); the largest number measured is %d.\n\n", e.Largest)
	}
}
