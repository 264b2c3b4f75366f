package firewall

import (
	"context"
	"net/netip"
	"testing"

	"github.com/google/nftables"
	"github.com/v6reg/v6reg/internal/netns"
)

// TestElemReaderComparesInPlace: every set of a programmed table compares
// equal to the model through elemReader, without an error (so a restart
// does not silently fall back to the slow read), and one changed element
// makes its set differ.
func TestElemReaderComparesInPlace(t *testing.T) {
	ns := netns.New(t, "liveread")
	fw := newFirewall(t, ns)
	s := smallState()
	s.PeerSets["@mon"] = []netip.Prefix{pfx("2001:db8:b::/64")}
	for i := 0; i < 300; i++ {
		s.Containers = append(s.Containers, boundContainer(i))
	}
	if _, err := fw.Apply(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	want := desired(s)
	r := &elemReader{nsfd: ns.Fd()}
	defer r.close()
	for name, spec := range want.sets {
		tb, n := tableOf(name)
		same, err := r.sameElems(&nftables.Set{Table: tb, Name: n, IsMap: spec.idMap}, want.elems[name])
		if err != nil || !same {
			t.Errorf("set %s (%d elements): same=%v err=%v, want the same, no error", name, len(want.elems[name]), same, err)
		}
	}
	for _, name := range []string{"in_port_list", "lists", inBridge("port_src"), "src_mac4"} {
		tb, n := tableOf(name)
		for id, e := range want.elems[name] {
			changed := map[string]elem{}
			for k, v := range want.elems[name] {
				changed[k] = v
			}
			e.comment += "x"
			changed[id] = e
			set := &nftables.Set{Table: tb, Name: n, IsMap: want.sets[name].idMap}
			if same, err := r.sameElems(set, changed); err != nil || same {
				t.Errorf("set %s with one comment changed: same=%v err=%v, want different", name, same, err)
			}
			delete(changed, id)
			if same, err := r.sameElems(set, changed); err != nil || same {
				t.Errorf("set %s with one element fewer wanted: same=%v err=%v, want different", name, same, err)
			}
			break
		}
	}
}

// TestCountersFastRead: every drop set's elements carry a counter through
// elemReader (so Counters does not fall back to the slow read), and the
// counters it reads are those google/nftables reads.
func TestCountersFastRead(t *testing.T) {
	ns := netns.New(t, "liveread")
	fw := newFirewall(t, ns)
	s := bigStateOf(200, boundContainer)
	if _, err := fw.Apply(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"in_drop", "eg_drop", "eg4_drop"} {
		set := &nftables.Set{Table: table, Name: name}
		n, with := 0, 0
		whole, err := fw.elems[0].dump(set, func(e *dumpElem) {
			n++
			if e.counter != nil {
				with++
			}
		})
		if err != nil || !whole || n != 200 || with != n {
			t.Errorf("set %s: whole=%v err=%v, %d elements, %d with a counter; want 200, all with one", name, whole, err, n, with)
		}
	}
	fast, err := fw.Counters(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	fw.elems = nil
	slow, err := fw.Counters(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(fast) != 200 || len(fast) != len(slow) {
		t.Fatalf("counters: %d containers fast, %d slow, want 200", len(fast), len(slow))
	}
	for id, c := range slow {
		if fast[id] != c {
			t.Errorf("counters of %s: fast %+v, slow %+v", id, fast[id], c)
		}
	}
}
