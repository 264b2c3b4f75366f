package desired

import (
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/v6reg/v6reg/docker"
	"github.com/v6reg/v6reg/firewall"
	"github.com/v6reg/v6reg/peers"
	"github.com/v6reg/v6reg/policies"
	"github.com/v6reg/v6reg/registrar"
)

// TestServicePeerKeysCarryNamespace: service:NAME is the policy's own
// namespace's NAME, service:NS/NAME namespace NS's where the bounds allow;
// a v6reg-* name is refused, the container closed with the reason.
func TestServicePeerKeysCarryNamespace(t *testing.T) {
	in := testInput(
		labelContainer("ad01", "app", 21, map[string]string{
			"v6reg.egress":    "tcp/5432 to service:db, service:shared/db",
			"v6reg.namespace": "team",
		}),
		labelContainer("ad02", "thief", 22, map[string]string{
			"v6reg.services":  "v6reg-jobs:80",
			"v6reg.namespace": "team",
		}),
	)
	b := in.Operator.Namespaces["*"]
	b.ServiceNamespaces = []string{"shared"}
	in.Operator.Namespaces = map[string]policies.Bounds{"*": b}
	d := Build(in)
	want := map[peers.Key]bool{peers.ServiceKey("team", "db"): true, peers.ServiceKey("shared", "db"): true}
	if !maps.Equal(d.PeerKeys, want) {
		t.Errorf("PeerKeys = %v, want %v", d.PeerKeys, want)
	}
	for _, w := range d.Workloads {
		if w.Container.ID != cid("ad02") {
			continue
		}
		if !w.Closed || len(w.Errors) != 1 || !strings.Contains(w.Errors[0], `"v6reg-" are v6reg's own`) {
			t.Errorf("v6reg-jobs registrant: closed %v errors %q", w.Closed, w.Errors)
		}
	}
	for _, r := range d.Registrations {
		if r.Name == registrar.JobsService && r.Meta[registrar.MetaContainer] == cid("ad02")[:12] {
			t.Errorf("the refused container is in %s: %+v", registrar.JobsService, r)
		}
	}
}

// TestLabelsNamespace: a container without Nomad belongs to the operator's
// labels namespace; its v6reg.namespace label may only repeat it, unless
// the operator lets labels choose.
func TestLabelsNamespace(t *testing.T) {
	labels := func(ns string) map[string]string {
		l := map[string]string{"v6reg.ingress": "tcp/443 from any"}
		if ns != "" {
			l["v6reg.namespace"] = ns
		}
		return l
	}
	for _, tc := range []struct {
		name, label, def string
		choose           bool
		wantNS           string
		wantErr          string
	}{
		{name: "no label: the default namespace", wantNS: "default", wantErr: "'any' is not allowed"},
		{name: "no label: the operator's namespace", def: "open", wantNS: "open"},
		{name: "label repeats the operator's namespace", label: "open", def: "open", wantNS: "open"},
		{name: "label claims another namespace", label: "open", wantNS: "", wantErr: `belong to namespace "default" (docker.labels_namespace), not "open"`},
		{name: "label chooses where permitted (positive control)", label: "open", choose: true, wantNS: "open"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := testInput(labelContainer("ae01", "app", 21, labels(tc.label)))
			in.Operator.LabelsChooseNamespace = tc.choose
			in.Operator.LabelsNamespace = tc.def
			w := Build(in).Workloads[0]
			if w.Namespace != tc.wantNS {
				t.Errorf("namespace = %q, want %q", w.Namespace, tc.wantNS)
			}
			if tc.wantErr == "" {
				if w.Closed {
					t.Errorf("closed: %s %q", w.Reason, w.Errors)
				}
				return
			}
			if !w.Closed || len(w.Errors) != 1 || !strings.Contains(w.Errors[0], tc.wantErr) {
				t.Errorf("closed %v errors %q, want one with %q", w.Closed, w.Errors, tc.wantErr)
			}
		})
	}
}

// TestDuplicateMAC: of two containers with one MAC, the newer stays closed
// (no firewall element, no registration) with the reason; the older keeps
// working. Distinct MACs (positive control) are both open.
func TestDuplicateMAC(t *testing.T) {
	mac := func(s string) net.HardwareAddr { m, _ := net.ParseMAC(s); return m }
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	labels := map[string]string{"v6reg.ingress": "tcp/80 from @ops", "v6reg.services": "web:80"}
	older := labelContainer("ff01", "older", 21, labels)
	older.MAC, older.Created, older.Port = mac("02:42:ac:11:00:02"), at, 11
	newer := labelContainer("0f02", "newer", 22, labels) // sorts first by ID
	newer.MAC, newer.Created, newer.Port = mac("02:42:ac:11:00:02"), at.Add(time.Minute), 12
	other := labelContainer("ff03", "other", 23, labels)
	other.MAC, other.Created, other.Port = mac("02:42:ac:11:00:03"), at.Add(2*time.Minute), 13
	d := Build(testInput(newer, older, other))
	for _, w := range d.Workloads {
		wantClosed := w.Container.ID == newer.ID
		if w.Closed != wantClosed {
			t.Errorf("%s: closed %v (%s), want %v", w.Container.Name, w.Closed, w.Reason, wantClosed)
		}
		if wantClosed && (!strings.Contains(w.Reason, "MAC 02:42:ac:11:00:02 is also container "+older.ShortID()) ||
			!strings.Contains(w.Reason, "its bridge port drops everything it sends")) {
			t.Errorf("reason %q", w.Reason)
		}
	}
	// The newer is in the state with its port closed and nothing else:
	// left out, its port would be unconstrained and it could send from
	// the older's MAC. The older keeps its MAC bound to its own port.
	fcs := map[string]firewall.Container{}
	for _, c := range d.Firewall.Containers {
		fcs[c.ID] = c
	}
	if len(fcs) != 3 {
		t.Errorf("firewall containers %v, want the older, the other and the newer closed", slices.Collect(maps.Keys(fcs)))
	}
	if c := fcs[newer.ID]; !c.Closed || c.Port != newer.Port || c.Addr.IsValid() || c.MAC != nil || len(c.Ingress)+len(c.Egress) > 0 {
		t.Errorf("the newer: got %+v, want only its port %d, closed", c, newer.Port)
	}
	for _, o := range []docker.Container{older, other} {
		if c := fcs[o.ID]; c.Closed || c.Port != o.Port || c.MAC.String() != o.MAC.String() || len(c.Ingress) == 0 {
			t.Errorf("%s: got %+v, want bound to its port %d and MAC %s, with its rules", o.Name, c, o.Port, o.MAC)
		}
	}
	if err := d.Firewall.Validate(); err != nil {
		t.Errorf("the firewall state: %v", err)
	}
	if got := d.Holders()[older.MAC.String()]; got != older.ID {
		t.Errorf("MAC holder %q, want the older", got)
	}
	for _, r := range d.Registrations {
		if r.Meta[registrar.MetaContainer] == newer.ShortID() {
			t.Errorf("the newer is registered: %+v", r)
		}
	}

	// The older goes: the newer is itself, its port bound, no longer
	// closed (the same ID, so the firewall's delta replaces the element).
	in := testInput(newer, other)
	in.Holders = d.Holders()
	d2 := Build(in)
	for _, c := range d2.Firewall.Containers {
		if c.ID == newer.ID && (c.Closed || c.Port != newer.Port || c.MAC.String() != newer.MAC.String() || c.Addr != newer.Addr) {
			t.Errorf("the newer after the older went: got %+v, want its address, MAC and port bound", c)
		}
	}
	if w := workloadOf(t, d2, newer.ID); w.Closed {
		t.Errorf("the newer after the older went: closed (%s)", w.Reason)
	}
}

// TestAddressConflictClosesPort: a container that asks for another's
// address (or an address outside the prefix, or the gateway's) has its
// bridge port closed when the port is known, and the reason says whether
// it is; the first keeps its address and its port bound.
func TestAddressConflictClosesPort(t *testing.T) {
	first := labelContainer("aa01", "first", 31, nil)
	first.Port = 21
	taker := labelContainer("bb02", "taker", 31, nil) // first's address
	taker.Port = 22
	outside := labelContainer("cc03", "outside", 32, nil)
	outside.Addr, outside.Port = netip.MustParseAddr("2001:db8:ffff::1"), 23
	unknown := labelContainer("dd04", "unknown-port", 31, nil) // port 0
	sharer := labelContainer("ee05", "sharer", 35, nil)        // behind first's port
	sharer.Port = first.Port
	d := Build(testInput(first, taker, outside, unknown, sharer))
	if err := d.Firewall.Validate(); err != nil {
		t.Fatalf("the firewall state: %v", err)
	}
	fcs := map[string]firewall.Container{}
	for _, c := range d.Firewall.Containers {
		fcs[c.ID] = c
	}
	if c := fcs[first.ID]; c.Closed || c.Addr != first.Addr || c.Port != first.Port {
		t.Errorf("first: got %+v, want its address and port", c)
	}
	for _, x := range []docker.Container{taker, outside} {
		if c := fcs[x.ID]; !c.Closed || c.Port != x.Port || c.Addr.IsValid() {
			t.Errorf("%s: got %+v, want its port %d closed", x.Name, c, x.Port)
		}
		if w := workloadOf(t, d, x.ID); !w.Closed || !strings.Contains(w.Reason, "its bridge port drops everything it sends") {
			t.Errorf("%s: closed %v, reason %q", x.Name, w.Closed, w.Reason)
		}
	}
	if c, ok := fcs[unknown.ID]; ok {
		t.Errorf("unknown port: in the firewall state as %+v, want left out (nothing to close)", c)
	}
	if w := workloadOf(t, d, unknown.ID); !w.Closed || !strings.Contains(w.Reason, "its bridge port is not known, so it is not closed") {
		t.Errorf("unknown port: closed %v, reason %q", w.Closed, w.Reason)
	}
	// Behind first's port: closed, and first's port stays bound (never
	// closed under it).
	if c, ok := fcs[sharer.ID]; ok {
		t.Errorf("sharer: in the firewall state as %+v, want left out (its port is first's)", c)
	}
	if w := workloadOf(t, d, sharer.ID); !w.Closed || !strings.Contains(w.Reason, "bridge port 21 is also container "+first.ShortID()) {
		t.Errorf("sharer: closed %v, reason %q", w.Closed, w.Reason)
	}
}

// TestDuplicateMACSameSecond: Docker lists creation in whole seconds; of
// two containers created in one second, the one that held the MAC in the
// last desired state keeps it, whatever the IDs.
func TestDuplicateMACSameSecond(t *testing.T) {
	mac, _ := net.ParseMAC("02:42:ac:11:00:02")
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	older := labelContainer("ff01", "older", 21, nil)
	older.MAC, older.Created = mac, at
	newer := labelContainer("0f02", "newer", 22, nil) // the smaller ID
	newer.MAC, newer.Created = mac, at
	first := Build(testInput(older))
	in := testInput(newer, older)
	in.Holders = first.Holders()
	for _, w := range Build(in).Workloads {
		if got, want := w.Closed, w.Container.ID == newer.ID; got != want {
			t.Errorf("%s: closed %v (%s), want %v", w.Container.Name, got, w.Reason, want)
		}
	}
	// Without a holder (a first build), the smaller ID wins the tie.
	for _, w := range Build(testInput(newer, older)).Workloads {
		if got, want := w.Closed, w.Container.ID == older.ID; got != want {
			t.Errorf("no holder: %s closed %v, want %v", w.Container.Name, got, want)
		}
	}
}

// TestDuplicateAddress: a task may ask Docker for another container's
// address (Nomad's ipv6_address, ipv4_address), and Docker lets the IPAM
// driver decide. Of two containers with one IPv6 address the one in
// force, else the older, keeps it, whatever the IDs: the newer is closed
// with the reason. Of two with one IPv4 address, the newer is programmed
// without it. Distinct addresses (positive control) are all open.
func TestDuplicateAddress(t *testing.T) {
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	labels := map[string]string{"v6reg.ingress": "tcp/80 from @ops", "v6reg.egress": "tcp/443 to @ops", "v6reg.services": "web:80"}
	victim := labelContainer("ff01", "victim", 21, labels)
	victim.Created, victim.Addr4 = at, netip.MustParseAddr("10.200.0.21")
	thief := labelContainer("0f02", "thief", 22, labels) // sorts first by ID
	thief.Created, thief.Addr = at.Add(time.Minute), victim.Addr
	victim.Port, thief.Port = 21, 22
	thief4 := labelContainer("0f03", "thief4", 23, labels)
	thief4.Created, thief4.Addr4 = at.Add(time.Minute), victim.Addr4
	other := labelContainer("ff04", "other", 24, labels)
	other.Created, other.Addr4 = at.Add(2*time.Minute), netip.MustParseAddr("10.200.0.24")

	d := Build(testInput(thief, thief4, victim, other))
	for _, w := range d.Workloads {
		wantClosed := w.Container.ID == thief.ID
		if w.Closed != wantClosed {
			t.Errorf("%s: closed %v (%s), want %v", w.Container.Name, w.Closed, w.Reason, wantClosed)
		}
		if wantClosed && !strings.Contains(w.Reason, "address "+victim.Addr.String()+" is also container "+victim.ShortID()) {
			t.Errorf("reason %q", w.Reason)
		}
	}
	got := map[string]netip.Addr{}
	for _, c := range d.Firewall.Containers {
		got[c.ID] = c.Addr4
		// The thief is there only as its bridge port, closed; the victim
		// keeps its port bound.
		if c.ID == thief.ID && (!c.Closed || c.Addr.IsValid() || c.Port != thief.Port) {
			t.Errorf("the thief of the IPv6 address is programmed as %+v, want only its port closed", c)
		}
		if c.ID == victim.ID && (c.Closed || c.Port != victim.Port) {
			t.Errorf("the victim is programmed as %+v, want its port %d bound", c, victim.Port)
		}
	}
	if _, ok := got[thief.ID]; !ok {
		t.Errorf("the thief of the IPv6 address is not in the firewall state: its port is left open")
	}
	if got[victim.ID] != victim.Addr4 || got[other.ID] != other.Addr4 {
		t.Errorf("IPv4: victim %v, other %v; want their own", got[victim.ID], got[other.ID])
	}
	if a, ok := got[thief4.ID]; !ok || a.IsValid() {
		t.Errorf("the thief of the IPv4 address: programmed %v with %v, want programmed without IPv4", ok, a)
	}
	for _, r := range d.Registrations {
		if r.Meta[registrar.MetaContainer] == thief.ShortID() {
			t.Errorf("the thief is registered: %+v", r)
		}
	}

	// Created in the same second as the victim: the one in force keeps it.
	thief.Created = at
	in := testInput(thief, victim)
	in.Holders = Build(testInput(victim)).Holders()
	for _, w := range Build(in).Workloads {
		if got, want := w.Closed, w.Container.ID == thief.ID; got != want {
			t.Errorf("same second: %s closed %v (%s), want %v", w.Container.Name, got, w.Reason, want)
		}
	}
}
