package integration

// Fault cases quick enough for `make test` (they run under
// `make test-faults` too): 6 (table flushed or deleted), 7 (lease store
// corrupt) and 9 (spoofing and escapes from a container).

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/v6reg/v6reg/api"

	"github.com/google/nftables"

	"github.com/v6reg/v6reg/firewall"
)

func TestFault6TableFlushedOrDeleted(t *testing.T) {
	row := recordFault(t, "6", "table flushed / deleted",
		"`nft flush ruleset`, then `nft delete table inet v6reg`, in the node namespace",
		"restored within 5 s (kernel set = running containers, flows right), log line, v6reg_firewall_restores_total +1 each")
	f := newFaultEnv(t, nil)
	db := f.run("fault-db", map[string]string{"v6reg.ingress": "tcp/5432 from @office", "v6reg.services": "db:5432:tcp"}, httpdShell(5432, "db"), false)
	f.waitOpen(db)
	f.invariants(15 * time.Second)
	const logLine = "firewall table restored after an outside change"
	for _, inj := range []struct{ name, cmd string }{
		{"flush ruleset", "flush ruleset"},
		{"delete table", "delete table inet v6reg"},
	} {
		m0, err := f.Metrics()
		if err != nil {
			t.Fatal(err)
		}
		logs0 := f.logCount(logLine)
		if out, err := f.nodeCmd("nft", strings.Fields(inj.cmd)...); err != nil {
			t.Fatalf("nft %s: %v: %s", inj.cmd, err, out)
		}
		start := time.Now()
		if _, _, err := liveTable(f.Env); err == nil && inj.name == "delete table" {
			t.Fatalf("the table still exists right after `nft %s`", inj.cmd)
		}
		err = WaitFor(f.ctx, 5*time.Second, func() error {
			if err := f.invariantsOnce(f.ctx); err != nil {
				return err
			}
			if f.logCount(logLine) <= logs0 {
				return fmt.Errorf("no %q log line yet", logLine)
			}
			m, err := f.Metrics()
			if err != nil {
				return err
			}
			if m["v6reg_firewall_restores_total"] <= m0["v6reg_firewall_restores_total"] {
				return fmt.Errorf("v6reg_firewall_restores_total still %v", m["v6reg_firewall_restores_total"])
			}
			return nil
		})
		if err != nil {
			t.Errorf("after `nft %s`: not restored within 5 s: %v", inj.cmd, err)
			continue
		}
		row.fig(t, "%s: restored in %s", inj.name, time.Since(start).Round(10*time.Millisecond))
		f.probeSentinel()
		if err := HTTPGet(f.Internet, db.Addr, 5432, denyWait); err == nil || !isTimeout(err) {
			t.Errorf("after %s: internet -> db:5432 not dropped: %v", inj.name, err)
		}
	}
	f.invariants(10 * time.Second)
}

func TestFault7CorruptLeaseStore(t *testing.T) {
	row := recordFault(t, "7", "lease store truncated / corrupted",
		"agent stopped; ipam.db (1) truncated to half, (2) 8 bytes of one lease record flipped, (3) every page after the meta pages overwritten",
		"agent refuses to start naming the file and `v6reg ipam rebuild`; after the rebuild it starts with every running container's lease")
	f := newFaultEnv(t, nil)
	other := f.run("fault-other", map[string]string{"v6reg.ingress": "tcp/8080 from @office"}, httpdShell(8080, "other"), false)
	f.waitOpen(other)
	f.invariants(15 * time.Second)
	db := filepath.Join(f.Dir, "state", "ipam.db")
	for _, c := range []struct {
		name   string
		damage func([]byte) []byte
	}{
		{"truncated", func(b []byte) []byte { return b[:len(b)/2] }},
		// Bit rot in one lease record: the bytes after the key (the
		// sentinel's address text) are the record's CRC and JSON.
		{"record corrupted", func(b []byte) []byte {
			i := bytes.Index(b, []byte(f.web.Addr.String()))
			if i < 0 {
				t.Fatalf("the store holds no record keyed %s", f.web.Addr)
			}
			i += len(f.web.Addr.String())
			for k := i; k < i+8 && k < len(b); k++ {
				b[k] ^= 0x5a
			}
			return b
		}},
		// Every page after bbolt's two meta pages overwritten.
		{"pages overwritten", func(b []byte) []byte {
			for i := 2 * 4096; i < len(b); i++ {
				b[i] = byte(i*131 + 7)
			}
			return b
		}},
	} {
		f.StopAgent(syscall.SIGTERM)
		b, err := os.ReadFile(db)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(db, c.damage(b), 0o600); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(f.ctx, 30*time.Second)
		err = f.StartAgent(ctx)
		cancel()
		if err == nil {
			t.Errorf("%s store: the agent started (it must refuse)", c.name)
			continue
		}
		msg := err.Error()
		if !strings.Contains(msg, db) || !strings.Contains(msg, "v6reg ipam rebuild") {
			t.Errorf("%s store: the refusal does not name %s and `v6reg ipam rebuild`:\n%s", c.name, db, msg)
		}
		// The firewall stays while the agent is down.
		f.probeSentinel()
		var out bytes.Buffer
		cmd := exec.Command(agentBin, "ipam", "rebuild", "-config", f.Config)
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := f.Node.Start(cmd); err != nil {
			t.Fatal(err)
		}
		if err := cmd.Wait(); err != nil {
			t.Fatalf("v6reg ipam rebuild: %v\n%s", err, out.String())
		}
		moved, _ := filepath.Glob(db + ".corrupt-*")
		if len(moved) == 0 {
			t.Errorf("rebuild did not keep the damaged file as %s.corrupt-*", db)
		}
		start := time.Now()
		if err := f.StartAgent(f.ctx); err != nil {
			t.Fatalf("after rebuild: %v", err)
		}
		f.invariants(10 * time.Second)
		row.fig(t, "%s: refused with the file and the command named; rebuilt, every lease back %s after start", c.name, time.Since(start).Round(10*time.Millisecond))
	}
}

// TestFaults9SpoofingAndEscapes: from inside a container (with NET_ADMIN,
// so it can change its own addresses), forge another container's source
// address, reach another container's port that its policy does not open,
// and reach a node service on the prefix gateway.
func TestFault9SpoofingAndEscapes(t *testing.T) {
	row := recordFault(t, "9", "spoofing and escapes from a container",
		"attacker (NET_ADMIN) takes the victim's address and connects to office:80 (open only to the victim), then takes the victim's MAC too and connects again; an ordinary attacker (NET_RAW) sends ARP from the victim's MAC; connects to victim:7000 (not in its policy); connects to the gateway [prefix::1]:9999 (a node service)",
		"nothing arrives (receiver TCP InSegs in office; HTTP answers), the victim's MAC stays on its bridge port (forwarding table notifications), SpoofDrops / v6reg_spoofed_packets / per-container drop counters grow; the victim itself passes (control)")
	f := newFaultEnv(t, nil)
	stopOffice, err := ServeHTTP(f.Office, OfficeAddr, 80, "office:80")
	if err != nil {
		t.Fatal(err)
	}
	defer stopOffice()
	gw := NodePrefix.Addr().Next()
	stopGW, err := ServeHTTP(f.Node, gw, 9999, "node service")
	if err != nil {
		t.Fatal(err)
	}
	defer stopGW()
	victim := f.run("fault-victim", map[string]string{"v6reg.egress": "tcp/80 to @office", "v6reg.ingress": "tcp/8080 from @office"},
		"mkdir -p /www && echo v > /www/index.html && httpd -p [::]:7000 -h /www && exec httpd -f -p [::]:8080 -h /www", false)
	attacker, err := f.start(f.ctx, "fault-attacker", map[string]string{"v6reg.ingress": "tcp/8080 from @office"}, "exec sleep 3600", runOpts{capAdd: []string{"NET_ADMIN"}})
	if err != nil {
		t.Fatal(err)
	}
	f.waitOpen(victim, attacker)
	// Controls: the victim reaches the office; the office sees segments.
	if err := WaitFor(f.ctx, allowWait, func() error { return f.Fetch(f.ctx, victim.ID, OfficeAddr, 80, 2*time.Second) }); err != nil {
		t.Fatalf("control: victim -> office:80 fails: %v", err)
	}
	inSegs := func() uint64 {
		var v uint64
		err := f.Office.Run(func() error {
			b, err := os.ReadFile("/proc/thread-self/net/snmp")
			v = parseSNMP(string(b))["Tcp:InSegs"]
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	spoof0 := spoofDrops(t, f)

	// 1. Forged source: the attacker puts the victim's address on lo (no
	// duplicate address detection there; busybox ip has no nodad) and
	// drops its own, so the kernel picks the victim's as source; the
	// default route stays.
	shell := fmt.Sprintf("ip -6 addr add %s/128 dev lo && ip -6 addr del %s/80 dev eth0 && ip -6 addr && ip -6 route", victim.Addr, attacker.Addr)
	if code, out, err := f.Exec(f.ctx, attacker.ID, "/bin/sh", "-c", shell); err != nil || code != 0 {
		t.Fatalf("attacker taking the victim's address: %v exit %d: %s", err, code, out)
	}
	before := inSegs()
	for range 3 {
		if err := f.Fetch(f.ctx, attacker.ID, OfficeAddr, 80, time.Second); err == nil {
			t.Errorf("the attacker reached office:80 with the victim's source address")
		}
	}
	arrived := inSegs() - before
	if arrived != 0 {
		t.Errorf("BUG: office received %d TCP segments from the forged source (the victim's address, sent by the attacker); want 0", arrived)
	}
	spoof1 := spoofDrops(t, f)
	if spoof1 <= spoof0 {
		t.Errorf("SpoofDrops did not grow (%d -> %d) after forged packets", spoof0, spoof1)
	}
	row.fig(t, "forged source: %d segments arrived at the office, SpoofDrops +%d", arrived, spoof1-spoof0)

	// 1b. Forged source and MAC: the attacker also takes the victim's MAC
	// on its eth0 (NET_ADMIN; NET_RAW alone writes any source MAC per
	// frame), so the MAC check of table inet v6reg passes. The frames
	// still enter the bridge through the attacker's port, and table
	// bridge v6reg binds the victim's address to the victim's port.
	ins, err := f.Docker.Client.ContainerInspect(f.ctx, victim.ID)
	if err != nil {
		t.Fatal(err)
	}
	victimMAC := ins.NetworkSettings.Networks[NetworkName].MacAddress
	if err := WaitFor(f.ctx, allowWait, func() error { return portBound(t, f, victim) }); err != nil {
		t.Fatalf("the agent did not bind the victim's address to its bridge port: %v\n%s", err, f.AgentLogTail(20))
	}
	shell = fmt.Sprintf("ip link set dev eth0 address %s && ip link show dev eth0", victimMAC)
	if code, out, err := f.Exec(f.ctx, attacker.ID, "/bin/sh", "-c", shell); err != nil || code != 0 || !strings.Contains(out, victimMAC) {
		t.Fatalf("attacker taking the victim's MAC %s: %v exit %d: %s", victimMAC, err, code, out)
	}
	before = inSegs()
	bridge1 := bridgeDrops(t, f)
	for range 3 {
		if err := f.Fetch(f.ctx, attacker.ID, OfficeAddr, 80, time.Second); err == nil {
			t.Errorf("the attacker reached office:80 with the victim's source address and MAC")
		}
	}
	arrived = inSegs() - before
	if arrived != 0 {
		t.Errorf("BUG: office received %d TCP segments from the forged source and MAC (the victim's, sent by the attacker); want 0", arrived)
	}
	spoof2, bridge2 := spoofDrops(t, f), bridgeDrops(t, f)
	if bridge2 <= bridge1 || spoof2-spoof1 < bridge2-bridge1 {
		t.Errorf("the bridge port check counted no drop (chain bridge v6reg prerouting %d -> %d), or SpoofDrops (%d -> %d) does not include it", bridge1, bridge2, spoof1, spoof2)
	}
	row.fig(t, "forged source and MAC: %d segments arrived at the office, SpoofDrops +%d (bridge port check +%d)", arrived, spoof2-spoof1, bridge2-bridge1)
	// The next attempts come from a second, ordinary container.
	if err := f.Remove(f.ctx, attacker.ID); err != nil {
		t.Fatal(err)
	}
	attacker = f.run("fault-attacker2", map[string]string{"v6reg.ingress": "tcp/8080 from @office"}, "exec sleep 3600", false)
	f.waitOpen(attacker)

	// 1c. The victim's MAC on the bridge: with Docker's default NET_RAW the
	// attacker writes gratuitous ARPs from the victim's MAC (no address
	// forged, not IPv6), which would make the bridge switch the victim's
	// frames to the attacker. The bridge's forwarding table notifications
	// must never show the victim's MAC anywhere but its own port, every
	// frame must be counted, and the office still reaches the victim.
	victimHW, err := net.ParseMAC(victimMAC)
	if err != nil {
		t.Fatal(err)
	}
	victimPort, err := f.Node.FDBPort(victimHW)
	if err != nil || victimPort == 0 {
		t.Fatalf("the node's bridge has no port for the victim's MAC %s (%d): %v", victimMAC, victimPort, err)
	}
	moves := f.Node.WatchFDB(t, victimHW)
	bridge3 := bridgeDrops(t, f)
	const forged = 20
	if code, out, err := f.Exec(f.ctx, attacker.ID, "/bin/v6probe", "forge-arp", "eth0", victimMAC, strconv.Itoa(forged)); err != nil || code != 0 {
		t.Fatalf("attacker sending ARP from the victim's MAC: %v exit %d: %s", err, code, out)
	}
	var bridge4 uint64
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if bridge4 = bridgeDrops(t, f); bridge4-bridge3 >= forged || time.Now().After(deadline) {
			break
		}
	}
	if bridge4-bridge3 < forged {
		t.Errorf("the bridge port check counted %d of the %d frames from the victim's MAC", bridge4-bridge3, forged)
	}
	if got, err := moves(); err != nil {
		t.Error(err)
	} else if slices.ContainsFunc(got, func(p int) bool { return p != victimPort }) {
		t.Errorf("BUG: the bridge learned the victim's MAC %s on another port than its own (%d): updates %v", victimMAC, victimPort, got)
	}
	if err := HTTPGet(f.Office, victim.Addr, 8080, 2*time.Second); err != nil {
		t.Errorf("office -> victim:8080 after the MAC forgery: %v", err)
	}
	m, err := f.Metrics()
	if err != nil {
		t.Fatal(err)
	}
	metric := m[`v6reg_spoofed_packets{check="bridge_port"}`]
	if metric < float64(bridge4) {
		t.Errorf(`v6reg_spoofed_packets{check="bridge_port"} = %v, want at least the kernel's %d`, metric, bridge4)
	}
	body, err := f.APIGet("/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	var st api.Snapshot
	if err := json.Unmarshal(body, &st); err != nil {
		t.Fatalf("status API: %v\n%s", err, body)
	}
	if st.Spoofed == nil || st.Spoofed.BridgePortPackets < bridge4 {
		t.Errorf("status API spoofed = %+v, want bridge port packets >= the kernel's %d", st.Spoofed, bridge4)
	}
	row.fig(t, "ARP from the victim's MAC (NET_RAW only): %d frames, bridge port check +%d, the victim's MAC never left its port, v6reg_spoofed_packets{check=\"bridge_port\"} %v", forged, bridge4-bridge3, metric)
	drops0 := dropCounters(t, f)

	// 2. Another container's port outside its policy.
	for range 3 {
		if err := f.Fetch(f.ctx, attacker.ID, victim.Addr, 7000, time.Second); err == nil {
			t.Errorf("the attacker reached victim:7000 (the victim opens only tcp/8080 to @office)")
		}
	}
	drops1 := dropCounters(t, f)
	grew := drops1[attacker.ID].EgressDropped.Packets - drops0[attacker.ID].EgressDropped.Packets + drops1[victim.ID].IngressDropped.Packets - drops0[victim.ID].IngressDropped.Packets
	if grew == 0 {
		t.Errorf("no drop counted for attacker -> victim:7000 (attacker egress %+v, victim ingress %+v)", drops1[attacker.ID].EgressDropped, drops1[victim.ID].IngressDropped)
	}
	row.fig(t, "victim:7000: dropped, %d drops counted", grew)

	// 3. A node service on the gateway address.
	if err := WaitFor(f.ctx, allowWait, func() error { return HTTPGet(f.Node, gw, 9999, time.Second) }); err != nil {
		t.Fatalf("control: the node service on [%s]:9999 does not answer in the node: %v", gw, err)
	}
	if err := f.Fetch(f.ctx, attacker.ID, gw, 9999, 2*time.Second); err == nil {
		t.Errorf("BUG: a container reached the node service on the prefix gateway [%s]:9999 with no policy allowing it (the table filters only the forward hook; traffic to the node's own addresses goes through input)", gw)
		row.fig(t, "gateway:9999: REACHED (not filtered)")
	} else {
		row.fig(t, "gateway:9999: dropped")
	}
	f.invariants(10 * time.Second)
}

func spoofDrops(t *testing.T, f *faultEnv) uint64 {
	t.Helper()
	c, err := nodeFirewall(t, f).SpoofDrops(context.Background())
	if err != nil {
		t.Fatalf("reading SpoofDrops: %v", err)
	}
	return c.Packets
}

// portBound checks that set port_src of table bridge v6reg binds w's
// address to a bridge port (the agent found it).
func portBound(t *testing.T, f *faultEnv, w Workload) error {
	t.Helper()
	conn, err := nftables.New(nftables.WithNetNSFd(f.Node.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	tbl := &nftables.Table{Family: nftables.TableFamilyBridge, Name: firewall.TableName}
	elems, err := conn.GetSetElements(&nftables.Set{Table: tbl, Name: "port_src"})
	if err != nil {
		return fmt.Errorf("reading set bridge v6reg port_src: %w", err)
	}
	a := w.Addr.As16()
	for _, e := range elems {
		if len(e.Key) == 20 && string(e.Key[:16]) == string(a[:]) && e.Comment == w.ID {
			return nil
		}
	}
	return fmt.Errorf("set bridge v6reg port_src has no element for %s (%d elements)", w.Addr, len(elems))
}

// bridgeDrops reads the drops of the bridge port check alone
// (SpoofDrops sums it with the inet table's checks).
func bridgeDrops(t *testing.T, f *faultEnv) uint64 {
	t.Helper()
	c, err := nodeFirewall(t, f).PortSpoofDrops(context.Background())
	if err != nil {
		t.Fatalf("reading PortSpoofDrops: %v", err)
	}
	return c.Packets
}

// nodeFirewall reads the node's table with a conn of its own (the agent's
// is in another process).
func nodeFirewall(t *testing.T, f *faultEnv) *firewall.Firewall {
	t.Helper()
	conn, err := nftables.New(nftables.WithNetNSFd(f.Node.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	return firewall.New(conn, f.Node.Fd(), slog.New(slog.DiscardHandler))
}

func dropCounters(t *testing.T, f *faultEnv) map[string]firewall.DirCounters {
	t.Helper()
	c, err := nodeFirewall(t, f).Counters(context.Background())
	if err != nil {
		t.Fatalf("reading counters: %v", err)
	}
	return c
}
