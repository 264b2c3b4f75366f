// Package benchdata is the contract between the end-to-end measurements
// (integration/bench_test.go writes it as JSON) and benchreport (reads it
// and renders BENCHMARKS.md): one declaration, so the two cannot drift.
package benchdata

import "time"

// Results is the JSON TestBenchEndToEnd writes.
type Results struct {
	Started      time.Time  `json:"started"`
	Seconds      float64    `json:"seconds"`
	Starters     int        `json:"starters"`
	PollInterval string     `json:"poll_interval"`
	Bursts       []Burst    `json:"bursts"`
	Removals     []Removal  `json:"removals"`
	Resources    []Resource `json:"resources"`
	Largest      int        `json:"largest"`
	ScaleNote    string     `json:"scale_note,omitempty"`
}

// Burst is one burst of containers started while Before were
// already managed. Latencies are per container, in milliseconds, from
// the container's start event (dockerd's own timestamp) to the poll that
// first saw its elements in the kernel table (FirewallMs) and its service
// in Consul (ConsulMs).
type Burst struct {
	Before     int       `json:"before"`
	Containers int       `json:"containers"`
	WallSec    float64   `json:"wall_seconds"` // first create to last registration seen
	StartSec   float64   `json:"start_seconds"`
	FirewallMs []float64 `json:"firewall_ms"`
	ConsulMs   []float64 `json:"consul_ms"`
	Missing    int       `json:"missing"` // containers never seen applied before the deadline
	// Agent is the agent's own v6reg_event_to_applied_seconds histogram
	// over the burst (the difference of two scrapes).
	Agent Histogram `json:"agent_histogram"`
}

// Removal is the removal of a burst's containers: from the first
// remove call until the table and Consul hold none of them.
type Removal struct {
	Containers int     `json:"containers"`
	WallSec    float64 `json:"wall_seconds"`
}

// Resource is the agent's RSS and CPU over one phase.
type Resource struct {
	Phase      string  `json:"phase"` // "idle" or "burst"
	Containers int     `json:"containers"`
	WallSec    float64 `json:"wall_seconds"`
	CPUPercent float64 `json:"cpu_percent"` // of one core, utime+stime over wall time
	RSSMiB     float64 `json:"rss_mib"`     // last sample (idle) or peak sample (burst)
	HWMMiB     float64 `json:"hwm_mib"`     // VmHWM at the end of the phase
}

// Histogram is a Prometheus histogram: cumulative bucket counts by upper
// bound (seconds).
type Histogram struct {
	Buckets map[string]float64 `json:"buckets"`
	Count   float64            `json:"count"`
	Sum     float64            `json:"sum"`
}

// Add sums two histograms bucket by bucket.
func (h Histogram) Add(o Histogram) Histogram {
	r := Histogram{Buckets: map[string]float64{}, Count: h.Count + o.Count, Sum: h.Sum + o.Sum}
	for k, v := range h.Buckets {
		r.Buckets[k] += v
	}
	for k, v := range o.Buckets {
		r.Buckets[k] += v
	}
	return r
}

// Sub is h minus o bucket by bucket: the histogram of what happened
// between two scrapes.
func (h Histogram) Sub(o Histogram) Histogram {
	d := Histogram{Buckets: map[string]float64{}, Count: h.Count - o.Count, Sum: h.Sum - o.Sum}
	for k, v := range h.Buckets {
		d.Buckets[k] = v - o.Buckets[k]
	}
	return d
}
