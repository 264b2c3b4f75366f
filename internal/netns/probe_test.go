package netns

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

// TestWaitTCPQuiet: an open connection keeps the namespace busy (so the
// wait can fail), and once both sides close it is quiet.
func TestWaitTCPQuiet(t *testing.T) {
	ns := New(t, "quiet")
	lo := netip.MustParseAddr("::1")
	if err := ns.WaitTCPQuiet(time.Second); err != nil {
		t.Fatalf("fresh namespace: %v", err)
	}
	ns.ServeTCP(t, lo, 7000)
	if err := ns.WaitTCPQuiet(time.Second); err != nil {
		t.Fatalf("a listener only: %v", err)
	}
	c, err := ns.ConnectTCP(netip.Addr{}, lo, 7000, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	err = ns.WaitTCPQuiet(200 * time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "state 01") {
		t.Errorf("an established connection: got %v, want an error naming state 01 (ESTABLISHED)", err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := ns.WaitTCPQuiet(5 * time.Second); err != nil {
		t.Errorf("after both sides closed: %v", err)
	}
}

func TestBusyTCP(t *testing.T) {
	table := `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1B58 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:1B58 00000000000000000000000001000000:D2C4 08 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 20 4 0 10 -1
   2: 00000000000000000000000001000000:D2C4 00000000000000000000000001000000:1B58 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0000000000000000
`
	got := busyTCP(table)
	if len(got) != 1 || !strings.Contains(got[0], "state 08") {
		t.Errorf("busyTCP = %q, want only the CLOSE_WAIT socket", got)
	}
}
