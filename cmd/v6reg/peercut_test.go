package main

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/v6reg/v6reg/api"
	"github.com/v6reg/v6reg/internal/golden"
)

// peerCutSnapshot is healthSnapshot with two peer sets cut: one used by
// two containers, one by a container that left since.
func peerCutSnapshot() *api.Snapshot {
	s := healthSnapshot()
	s.At = time.Date(2026, 12, 3, 15, 0, 0, 0, time.UTC)
	s.PeerSetsCut = []api.PeerSetCut{
		{Peer: "job:default/p-crawler", Registrations: 5000, Kept: 2048, Limit: 2048, Containers: []string{"ee01-gone"}},
		{Peer: "service:default/db", Registrations: 3000, Kept: 2048, Limit: 2048, Containers: []string{"aa01", "dd01"}},
	}
	return s
}

func TestPrintStatusPeerSetsCut(t *testing.T) {
	got := printedStatus(t, peerCutSnapshot())
	for _, want := range []string{
		"PEER SETS CUT to limits.peer_set_addresses (the first registered are kept):\n",
		"  service:default/db: 3000 in Consul, 2048 kept (limit 2048)\n    used by p-cerebro-frontend/cerebro, p-fetch\n",
		"  job:default/p-crawler: 5000 in Consul, 2048 kept (limit 2048)\n    used by ee01-gone\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("status lacks %q:\n%s", want, got)
		}
	}
	golden.Check(t, filepath.Join("testdata", "status-peercut.golden"), reAgo.ReplaceAllString(got, "reconciled <dur> ago"))

	// Nothing cut: no section.
	if got := printedStatus(t, healthSnapshot()); strings.Contains(got, "PEER SETS CUT") {
		t.Errorf("a cut section with nothing cut:\n%s", got)
	}
}

// stubAgent serves fixed answers on the API.
type stubAgent struct {
	snap *api.Snapshot
	ans  api.ExplainAnswer
}

func (a stubAgent) Status(context.Context) *api.Snapshot { return a.snap }
func (a stubAgent) Explain(context.Context, api.ExplainQuery) (api.ExplainAnswer, error) {
	return a.ans, nil
}

func serveStub(t *testing.T, a stubAgent) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "v6reg.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: api.Handler(a), ReadHeaderTimeout: time.Second}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return sock
}

// The JSON of `v6reg status` and `v6reg explain` carries the cut sets as
// the agent serves them.
func TestStatusAndExplainJSONPeerCut(t *testing.T) {
	cut := api.PeerSetCut{Peer: "service:default/db", Registrations: 3000, Kept: 2048, Limit: 2048}
	ans := api.ExplainAnswer{Container: healthSnapshot().Containers[0], Verdict: "deny", PeerCut: &cut,
		Reason: "no egress rule allows to 2001:db8:9::5 port 5432/tcp; the default is deny; rule \"tcp/5432 to service:db\" would admit it, " +
			"but service:default/db has 3000 addresses in Consul; limits.peer_set_addresses keeps the first 2048 registered: 2001:db8:9::5 is not among them (registered later)"}
	sock := serveStub(t, stubAgent{snap: peerCutSnapshot(), ans: ans})
	var out, errs bytes.Buffer
	if rc := runStatus([]string{"-socket", sock, "-format", "json"}, &out, &errs); rc != 0 {
		t.Fatalf("status: rc %d: %s", rc, errs.String())
	}
	golden.Check(t, filepath.Join("testdata", "status-peercut.json.golden"), out.String())

	out.Reset()
	if rc := runExplain([]string{"-socket", sock, "-format", "json", "web", "to", "2001:db8:9::5", "port", "5432"}, &out, &errs); rc != 0 {
		t.Fatalf("explain: rc %d: %s", rc, errs.String())
	}
	if want := `"peer_cut": {
    "peer": "service:default/db",
    "registrations": 3000,
    "kept": 2048,
    "limit": 2048
  }`; !strings.Contains(out.String(), want) {
		t.Errorf("explain JSON lacks %s:\n%s", want, out.String())
	}
	out.Reset()
	if rc := runExplain([]string{"-socket", sock, "web", "to", "2001:db8:9::5", "port", "5432"}, &out, &errs); rc != 0 {
		t.Fatalf("explain: rc %d: %s", rc, errs.String())
	}
	if want := "DENY: " + ans.Reason + "\n"; !strings.Contains(out.String(), want) {
		t.Errorf("explain text lacks %q:\n%s", want, out.String())
	}
}
