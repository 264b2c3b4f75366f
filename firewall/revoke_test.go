package firewall

import (
	"net"
	"testing"
	"time"
)

// echoes writes one byte on c and reads it back within d.
func echoes(c net.Conn, d time.Duration) error {
	_ = c.SetDeadline(time.Now().Add(d))
	if _, err := c.Write([]byte{'x'}); err != nil {
		return err
	}
	b := make([]byte, 1)
	_, err := c.Read(b)
	return err
}

// TestRevocationCutsEstablishedFlows: a narrowed policy, a peer that left
// its set and a removed container cut the established flows they no
// longer allow, at once; a flow the new state still allows goes on.
// Without the revocation each of them would go on until it closed (the
// table accepts established flows first).
func TestRevocationCutsEstablishedFlows(t *testing.T) {
	e := newEnv(t)
	tp := e.tp
	s := e.state()
	e.apply(t, s)
	open := func(what string) net.Conn {
		t.Helper()
		c, err := tp.ClientIn.ConnectTCP(none, tp.C1Addr, 8080, okWait)
		if err != nil {
			t.Fatalf("%s: client-in -> c1:8080: %v", what, err)
		}
		t.Cleanup(func() { _ = c.Close() })
		pass(t, what+": echo before the change", echoes(c, okWait))
		return c
	}
	// cutAfter applies s and reports how long after Apply returned the
	// last echo on c passed (probing every 10 ms for 500 ms); it fails if
	// any echo passes 250 ms after the change. The revocation runs right
	// after the commit, beside Apply: the kernel's conntrack dump walks
	// the whole hash (about 13 ms per family here, even when empty).
	cutAfter := func(what string, c net.Conn, s State) {
		t.Helper()
		e.apply(t, s)
		applied := time.Now()
		var last time.Duration = -1
		for time.Since(applied) < 500*time.Millisecond {
			if echoes(c, 10*time.Millisecond) == nil {
				last = time.Since(applied)
			}
		}
		t.Logf("%s: last echo %v after Apply returned (-1: none)", what, last)
		if last > 250*time.Millisecond {
			t.Errorf("%s: the established flow still passed %v after the change", what, last)
		}
	}

	// 1. The policy narrows: c1 no longer admits tcp/8080. Another flow
	// of c1 that the new state still allows (tcp/8081 is not opened
	// by the change... c1's 9000-9010 range stays) goes on.
	kept, err := tp.ClientIn.ConnectTCP(none, tp.C1Addr, 9005, okWait)
	if err != nil {
		t.Fatalf("client-in -> c1:9005: %v", err)
	}
	defer kept.Close()
	c := open("narrowed")
	narrowed := e.state()
	narrowed.Containers[0].Ingress = narrowed.Containers[0].Ingress[1:] // drop tcp/8080 from @in
	cutAfter("policy narrowed", c, narrowed)
	pass(t, "policy narrowed: the still-allowed flow to c1:9005", echoes(kept, okWait))

	// 2. The peer leaves the set: @in no longer holds client-in.
	e.apply(t, s)
	c = open("peer left")
	left := e.state()
	left.PeerSets["@in"] = nil
	cutAfter("peer left @in", c, left)

	// 3. The container goes.
	e.apply(t, s)
	c = open("container gone")
	gone := e.state()
	gone.Containers = gone.Containers[1:]
	cutAfter("container removed", c, gone)
}
