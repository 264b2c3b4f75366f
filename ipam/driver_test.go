package ipam

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/v6reg/v6reg/internal/keepalive"
)

// pluginClient speaks the protocol to a unix socket, as dockerd does.
type pluginClient struct {
	hc *http.Client
}

func newPluginClient(sock string) *pluginClient {
	return &pluginClient{hc: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}, Timeout: 10 * time.Second}}
}

// call posts body to method and returns status and decoded reply.
func (c *pluginClient) call(t testing.TB, method, body string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, "http://plugin/"+method, strings.NewReader(body))
	req.Header.Set("Accept", pluginContentType)
	resp, err := c.hc.Do(req)
	if err != nil {
		t.Fatalf("%s: %v", method, err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != pluginContentType {
		t.Errorf("%s: content type %q", method, ct)
	}
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatalf("%s: reply is not JSON: %v", method, err)
	}
	return resp.StatusCode, out
}

func testConfig(t testing.TB) Config {
	dir := t.TempDir()
	return Config{
		Prefix:      netip.MustParsePrefix("fd00:db8:1:2:3::/80"),
		IPv4Subnet:  netip.MustParsePrefix("172.30.0.0/16"),
		Reserved:    []netip.Addr{netip.MustParseAddr("fd00:db8:1:2:3::53")},
		HoldDown:    time.Hour,
		StateFile:   filepath.Join(dir, "state", "ipam.db"),
		PluginDir:   dir,
		PluginName:  "v6reg-test",
		NetworkName: "v6reg",
	}.WithDefaults()
}

func startService(t testing.TB, cfg Config, o ServiceOptions) *Service {
	t.Helper()
	s, err := NewService(cfg, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	return s
}

func TestDriverOverSocket(t *testing.T) {
	cfg := testConfig(t)
	clock := newClock()
	startService(t, cfg, ServiceOptions{Now: clock.Now, Rand: seeded(7)})
	if fi, err := os.Stat(cfg.SocketPath()); err != nil || fi.Mode().Perm() != 0o600 || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("socket %s: %v %v", cfg.SocketPath(), fi.Mode(), err)
	}
	c := newPluginClient(cfg.SocketPath())
	v6 := cfg.Prefix.String()
	var leased string
	steps := []struct {
		name, method, body string
		status             int
		check              func(t *testing.T, r map[string]any)
	}{
		{"activate", "Plugin.Activate", "", 200, func(t *testing.T, r map[string]any) {
			if fmt.Sprint(r["Implements"]) != "[IpamDriver]" {
				t.Fatalf("Implements = %v", r["Implements"])
			}
		}},
		{"capabilities", "IpamDriver.GetCapabilities", "{}", 200, func(t *testing.T, r map[string]any) {
			if r["RequiresMACAddress"] != false || r["RequiresRequestReplay"] != false {
				t.Fatalf("capabilities %v", r)
			}
		}},
		{"address spaces", "IpamDriver.GetDefaultAddressSpaces", "", 200, func(t *testing.T, r map[string]any) {
			if r["LocalDefaultAddressSpace"] != localAddressSpace || r["GlobalDefaultAddressSpace"] != globalAddressSpace {
				t.Fatalf("spaces %v", r)
			}
		}},
		{"v6 pool, any", "IpamDriver.RequestPool", `{"AddressSpace":"v6reg-local","V6":true}`, 200, func(t *testing.T, r map[string]any) {
			if r["PoolID"] != v6 || r["Pool"] != v6 {
				t.Fatalf("pool %v", r)
			}
		}},
		{"v6 pool, the configured one", "IpamDriver.RequestPool", `{"Pool":"fd00:db8:1:2:3::/80","V6":true,"Options":{}}`, 200, nil},
		{"v6 pool, another one", "IpamDriver.RequestPool", `{"Pool":"fd00:db8:9::/80","V6":true}`, 500, wantErr("fd00:db8:9::/80", "fd00:db8:1:2:3::/80")},
		{"v6 pool, sub-pool", "IpamDriver.RequestPool", `{"Pool":"fd00:db8:1:2:3::/80","SubPool":"fd00:db8:1:2:3::/96","V6":true}`, 500, wantErr("--ip-range")},
		{"v6 pool, not a prefix", "IpamDriver.RequestPool", `{"Pool":"banana","V6":true}`, 500, wantErr("banana")},
		{"v4 pool", "IpamDriver.RequestPool", `{"V6":false}`, 200, func(t *testing.T, r map[string]any) {
			if r["PoolID"] != "172.30.0.0/16" {
				t.Fatalf("pool %v", r)
			}
		}},
		// What Docker's plugin client resends after a restart cut a call off.
		{"address, empty body", "IpamDriver.RequestAddress", "", 400, wantErr("empty request body", "restart")},
		{"release, empty body", "IpamDriver.ReleaseAddress", " \n", 400, wantErr("empty request body")},
		{"v4 pool, another one", "IpamDriver.RequestPool", `{"Pool":"10.0.0.0/8"}`, 500, wantErr("10.0.0.0/8", "172.30.0.0/16")},
		{"gateway", "IpamDriver.RequestAddress", `{"PoolID":"` + v6 + `","Options":{"RequestAddressType":"com.docker.network.gateway"}}`, 200, wantAddr("fd00:db8:1:2:3::1/80")},
		{"gateway, the configured one", "IpamDriver.RequestAddress", `{"PoolID":"` + v6 + `","Address":"fd00:db8:1:2:3::1","Options":{"RequestAddressType":"com.docker.network.gateway"}}`, 200, wantAddr("fd00:db8:1:2:3::1/80")},
		{"gateway, another one", "IpamDriver.RequestAddress", `{"PoolID":"` + v6 + `","Address":"fd00:db8:1:2:3::fe","Options":{"RequestAddressType":"com.docker.network.gateway"}}`, 500, wantErr("fd00:db8:1:2:3::1")},
		{"v4 gateway", "IpamDriver.RequestAddress", `{"PoolID":"172.30.0.0/16","Options":{"RequestAddressType":"com.docker.network.gateway"}}`, 200, wantAddr("172.30.0.1/16")},
		{"any address", "IpamDriver.RequestAddress", `{"PoolID":"` + v6 + `","Options":{"com.docker.network.endpoint.macaddress":"02:42:ac:1e:00:02"}}`, 200, func(t *testing.T, r map[string]any) {
			p, err := netip.ParsePrefix(fmt.Sprint(r["Address"]))
			if err != nil || p.Bits() != 80 || !cfg.Prefix.Contains(p.Addr()) {
				t.Fatalf("address %v", r["Address"])
			}
			leased = p.Addr().String()
		}},
		{"specific address", "IpamDriver.RequestAddress", `{"PoolID":"` + v6 + `","Address":"fd00:db8:1:2:3::abc"}`, 200, wantAddr("fd00:db8:1:2:3::abc/80")},
		{"specific address again (docker re-claiming)", "IpamDriver.RequestAddress", `{"PoolID":"` + v6 + `","Address":"fd00:db8:1:2:3::abc"}`, 200, wantAddr("fd00:db8:1:2:3::abc/80")},
		{"reserved address", "IpamDriver.RequestAddress", `{"PoolID":"` + v6 + `","Address":"fd00:db8:1:2:3::53"}`, 500, wantErr("reserved")},
		{"address outside", "IpamDriver.RequestAddress", `{"PoolID":"` + v6 + `","Address":"2001:db8::1"}`, 500, wantErr("outside")},
		{"malformed address", "IpamDriver.RequestAddress", `{"PoolID":"` + v6 + `","Address":"fd00::zz"}`, 500, wantErr("not an IP address")},
		{"unknown pool", "IpamDriver.RequestAddress", `{"PoolID":"fd00:dead::/80"}`, 500, wantErr("unknown pool")},
		{"bad json", "IpamDriver.RequestAddress", `{"PoolID":`, 400, wantErr("JSON")},
		{"release", "IpamDriver.ReleaseAddress", `{"PoolID":"` + v6 + `","Address":"fd00:db8:1:2:3::abc"}`, 200, nil},
		{"released is held down", "IpamDriver.RequestAddress", `{"PoolID":"` + v6 + `","Address":"fd00:db8:1:2:3::abc"}`, 500, wantErr("hold-down until")},
		{"release gateway (network removal)", "IpamDriver.ReleaseAddress", `{"PoolID":"` + v6 + `","Address":"fd00:db8:1:2:3::1"}`, 200, nil},
		{"release outside", "IpamDriver.ReleaseAddress", `{"PoolID":"` + v6 + `","Address":"2001:db8::1"}`, 500, wantErr("outside")},
		{"release pool", "IpamDriver.ReleasePool", `{"PoolID":"` + v6 + `"}`, 200, nil},
		{"unknown method", "IpamDriver.Frobnicate", `{}`, 404, wantErr("does not implement")},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			status, r := c.call(t, s.method, s.body)
			if status != s.status {
				t.Fatalf("status %d, want %d (reply %v)", status, s.status, r)
			}
			if s.check != nil {
				s.check(t, r)
			}
		})
	}
	if leased == "" {
		t.Fatal("no address leased")
	}
}

func wantAddr(a string) func(t *testing.T, r map[string]any) {
	return func(t *testing.T, r map[string]any) {
		t.Helper()
		if r["Address"] != a {
			t.Fatalf("Address = %v, want %s", r["Address"], a)
		}
	}
}

func wantErr(subs ...string) func(t *testing.T, r map[string]any) {
	return func(t *testing.T, r map[string]any) {
		t.Helper()
		msg, _ := r["Err"].(string)
		if msg == "" {
			t.Fatalf("no Err in %v", r)
		}
		for _, s := range subs {
			if !strings.Contains(msg, s) {
				t.Errorf("Err %q lacks %q", msg, s)
			}
		}
	}
}

// TestServiceRestartKeepsLeases closes and reopens the service on the same
// state file, as an agent restart does.
func TestServiceRestartKeepsLeases(t *testing.T) {
	cfg := testConfig(t)
	clock := newClock()
	s1, err := NewService(cfg, ServiceOptions{Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	if err := s1.Start(); err != nil {
		t.Fatal(err)
	}
	c := newPluginClient(cfg.SocketPath())
	var addrs []string
	for range 10 {
		_, r := c.call(t, "IpamDriver.RequestAddress", `{"PoolID":"`+cfg.Prefix.String()+`"}`)
		addrs = append(addrs, fmt.Sprint(r["Address"]))
	}
	c.call(t, "IpamDriver.ReleaseAddress", `{"PoolID":"`+cfg.Prefix.String()+`","Address":"`+strings.TrimSuffix(addrs[0], "/80")+`"}`)
	if err := s1.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s1.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	s2 := startService(t, cfg, ServiceOptions{Now: clock.Now})
	var got []string
	for _, l := range s2.Allocator().Leases() {
		got = append(got, netip.PrefixFrom(l.Addr, 80).String())
	}
	want := slices.Clone(addrs[1:])
	sort.Strings(want)
	sort.Strings(got)
	if !slices.Equal(got, want) {
		t.Fatalf("leases after restart %v, want %v", got, want)
	}
	if hs := s2.Allocator().Holds(); len(hs) != 1 || netip.PrefixFrom(hs[0].Addr, 80).String() != addrs[0] {
		t.Fatalf("holds after restart %v", hs)
	}
	c = newPluginClient(cfg.SocketPath())
	if st, r := c.call(t, "IpamDriver.RequestAddress", `{"PoolID":"`+cfg.Prefix.String()+`","Address":"`+strings.TrimSuffix(addrs[0], "/80")+`"}`); st != 500 {
		t.Fatalf("held address granted after restart: %v", r)
	}
}

// FuzzDriverRequest throws arbitrary bodies at every endpoint: the driver
// must answer JSON, put a message in Err on failure, and never lease an
// address outside its pools or twice.
func FuzzDriverRequest(f *testing.F) {
	methods := []string{"Plugin.Activate", "IpamDriver.GetCapabilities", "IpamDriver.GetDefaultAddressSpaces", "IpamDriver.RequestPool", "IpamDriver.ReleasePool", "IpamDriver.RequestAddress", "IpamDriver.ReleaseAddress"}
	f.Add(uint8(3), []byte(`{"V6":true,"Pool":"fd00:db8:1:2:3::/80"}`))
	f.Add(uint8(5), []byte(`{"PoolID":"fd00:db8:1:2:3::/80","Address":"fd00:db8:1:2:3::5"}`))
	f.Add(uint8(5), []byte(`{"PoolID":"172.30.0.0/16","Options":{"RequestAddressType":"com.docker.network.gateway"}}`))
	f.Add(uint8(6), []byte(`{"PoolID":"fd00:db8:1:2:3::/80","Address":"fd00:db8:1:2:3::5/80"}`))
	f.Add(uint8(5), []byte(`{"PoolID":"fd00:db8:1:2:3::/80","Address":"::ffff:172.30.0.5"}`))
	f.Add(uint8(5), []byte(`[1,2]`))
	cfg := Config{Prefix: netip.MustParsePrefix("fd00:db8:1:2:3::/80"), IPv4Subnet: netip.MustParsePrefix("172.30.0.0/16")}.WithDefaults()
	f.Fuzz(func(t *testing.T, m uint8, body []byte) {
		alloc, err := NewAllocator(NewMemStore(), cfg.poolConfigs(), AllocatorOptions{})
		if err != nil {
			t.Fatal(err)
		}
		h := NewDriver(alloc, cfg, slog.New(slog.DiscardHandler)).Handler()
		do := func(method string, body []byte) (int, map[string]any) {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/"+method, bytes.NewReader(body)))
			var out map[string]any
			if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
				t.Fatalf("%s: reply not a JSON object: %q", method, rec.Body.String())
			}
			if rec.Code != 200 {
				if msg, _ := out["Err"].(string); msg == "" {
					t.Fatalf("%s: status %d without Err: %v", method, rec.Code, out)
				}
			}
			return rec.Code, out
		}
		// Lease one address first so duplicates are detectable.
		_, first := do("IpamDriver.RequestAddress", []byte(`{"PoolID":"fd00:db8:1:2:3::/80","Address":"fd00:db8:1:2:3::5"}`))
		method := methods[int(m)%len(methods)]
		code, out := do(method, body)
		if code == 200 && method == "IpamDriver.RequestAddress" {
			p, err := netip.ParsePrefix(fmt.Sprint(out["Address"]))
			if err != nil {
				t.Fatalf("granted address %v is not CIDR", out["Address"])
			}
			if !cfg.Prefix.Contains(p.Addr()) && !cfg.IPv4Subnet.Contains(p.Addr()) {
				t.Fatalf("granted %s outside the pools", p)
			}
			var req requestAddressRequest
			_ = json.Unmarshal(body, &req)
			if p.Addr() == netip.MustParseAddr("fd00:db8:1:2:3::5") && req.Address == "" {
				t.Fatalf("random pick handed out the leased %s (first %v)", p, first)
			}
		}
	})
}

func FuzzParsePrefix(f *testing.F) {
	for _, s := range []string{"fd00::/80", "2001:db8:1:2:3::/80", "fd00::1/80", "fd00::/63", "fd00::/113", "10.0.0.0/8", "::ffff:10.0.0.0/104", "fe80::%eth0/64", "", " fd00::/64 ", "172.30.0.0/16"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if p, err := ParseIPv6Prefix(s); err == nil {
			if ValidateIPv6Prefix(p) != nil || !p.Addr().Is6() || p.Masked() != p || p.Bits() < 64 || p.Bits() > 112 {
				t.Fatalf("accepted bad prefix %q -> %s", s, p)
			}
			if q, err := ParseIPv6Prefix(p.String()); err != nil || q != p {
				t.Fatalf("round trip %s: %v %v", p, q, err)
			}
			// offsetAddr must stay inside for any offset.
			if a := offsetAddr(p, ^uint64(0)); !p.Contains(a) {
				t.Fatalf("last address %s outside %s", a, p)
			}
		} else if err.Error() == "" {
			t.Fatal("empty error")
		}
		if p, err := ParseIPv4Subnet(s); err == nil {
			if !p.Addr().Is4() || p.Masked() != p || !p.Contains(lastAddr(p)) {
				t.Fatalf("accepted bad subnet %q -> %s", s, p)
			}
		}
	})
}

func FuzzParseAddr(f *testing.F) {
	for _, s := range []string{"fd00::1", "fd00::1/80", "172.30.0.5", "::ffff:1.2.3.4", "fe80::1%eth0", "", "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := parseAddr(s)
		if err != nil {
			return
		}
		if !a.IsValid() || a.Zone() != "" {
			t.Fatalf("parseAddr(%q) = %v", s, a)
		}
	})
}

// BenchmarkDriverSocket measures a RequestAddress + ReleaseAddress round
// trip through the unix socket with the bbolt store (two fsync'd commits),
// reporting p50/p99 of each call.
func BenchmarkDriverSocket(b *testing.B) {
	cfg := testConfig(b)
	cfg.HoldDown = time.Nanosecond
	startService(b, cfg, ServiceOptions{})
	c := newPluginClient(cfg.SocketPath())
	var reqT, relT []time.Duration
	b.ResetTimer()
	for b.Loop() {
		t0 := time.Now()
		_, r := c.call(b, "IpamDriver.RequestAddress", `{"PoolID":"`+cfg.Prefix.String()+`"}`)
		t1 := time.Now()
		c.call(b, "IpamDriver.ReleaseAddress", `{"PoolID":"`+cfg.Prefix.String()+`","Address":"`+fmt.Sprint(r["Address"])+`"}`)
		reqT = append(reqT, t1.Sub(t0))
		relT = append(relT, time.Since(t1))
	}
	b.StopTimer()
	for name, ds := range map[string][]time.Duration{"request": reqT, "release": relT} {
		slices.Sort(ds)
		b.ReportMetric(float64(ds[len(ds)/2].Microseconds()), name+"-p50-µs")
		b.ReportMetric(float64(ds[len(ds)*99/100].Microseconds()), name+"-p99-µs")
	}
}

// TestDriverSocketClosesIdleConnections: a keep-alive connection on the
// driver socket that sends nothing more is closed after idleTimeout, so
// idle connections left by Docker's plugin clients cannot pile up.
func TestDriverSocketClosesIdleConnections(t *testing.T) {
	defer func(d time.Duration) { idleTimeout = d }(idleTimeout)
	idleTimeout = 200 * time.Millisecond
	cfg := testConfig(t)
	startService(t, cfg, ServiceOptions{Now: newClock().Now, Rand: seeded(7)})
	took, err := keepalive.ClosedWhenIdle(cfg.SocketPath(), "POST /Plugin.Activate HTTP/1.1\r\nHost: plugin\r\nContent-Length: 0\r\n\r\n", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if took > 3*time.Second {
		t.Errorf("idle connection closed after %s, want about %s", took, idleTimeout)
	}
}

// TestEndpointIdentity replays what Docker 29 sends (the endpoint name in
// every RequestAddress; 28 sends Options null): a container restarting
// within hold-down gets its own address back, also across an agent
// restart and when it asks for it by address; another container is
// refused that address and gets another.
func TestEndpointIdentity(t *testing.T) {
	cfg := testConfig(t)
	clock := newClock()
	s1 := startService(t, cfg, ServiceOptions{Now: clock.Now})
	pool := cfg.Prefix.String()
	c := newPluginClient(cfg.SocketPath())
	req := func(c *pluginClient, addr, name string) (int, string) {
		t.Helper()
		body := `{"PoolID":"` + pool + `","Address":"` + addr + `","Options":{"com.docker.network.endpoint.name":"` + name + `"}}`
		st, r := c.call(t, "IpamDriver.RequestAddress", body)
		if st != 200 {
			return st, fmt.Sprint(r["Err"])
		}
		return st, strings.TrimSuffix(fmt.Sprint(r["Address"]), "/80")
	}
	release := func(c *pluginClient, addr string) {
		t.Helper()
		if st, r := c.call(t, "IpamDriver.ReleaseAddress", `{"PoolID":"`+pool+`","Address":"`+addr+`"}`); st != 200 {
			t.Fatalf("release %s: %v", addr, r)
		}
	}
	_, web := req(c, "", "web-1")
	_, db := req(c, "", "db-1")
	release(c, web)
	clock.Advance(time.Minute)
	if st, got := req(c, "", "web-1"); st != 200 || got != web {
		t.Fatalf("web-1 restarting within hold-down: %d %s, want its own %s", st, got, web)
	}
	release(c, web)
	if st, got := req(c, web, "other"); st != 500 || !strings.Contains(got, "hold-down") {
		t.Fatalf("another container asking for web-1's held address: %d %s, want refused", st, got)
	}
	if st, got := req(c, "", "other"); st != 200 || got == web || got == db {
		t.Fatalf("another container: %d %s, want a fresh address", st, got)
	}
	if st, got := req(c, db, "other"); st != 500 || !strings.Contains(got, `leased to endpoint "db-1"`) {
		t.Fatalf("another container asking for db-1's leased address: %d %s, want refused", st, got)
	}
	if st, got := req(c, db, "db-1"); st != 200 || got != db {
		t.Fatalf("db-1 re-claiming its own leased address: %d %s", st, got)
	}
	// The identity is in the store: an agent restart keeps it.
	if err := s1.Close(); err != nil {
		t.Fatal(err)
	}
	startService(t, cfg, ServiceOptions{Now: clock.Now})
	c = newPluginClient(cfg.SocketPath())
	if st, got := req(c, web, "web-1"); st != 200 || got != web {
		t.Fatalf("web-1 asking for its own address by address after an agent restart: %d %s", st, got)
	}
}
