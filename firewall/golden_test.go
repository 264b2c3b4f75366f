package firewall

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/v6reg/v6reg/internal/golden"
	"github.com/v6reg/v6reg/internal/netns"
)

func TestGolden(t *testing.T) {
	ns := netns.New(t, "gold")
	fw := newFirewall(t, ns)
	ch, err := fw.Apply(context.Background(), smallState())
	if err != nil {
		t.Fatalf("apply: %v", err)
	}
	if !ch.TableCreated || !ch.BridgeTableCreated || ch.Batches != 1 {
		t.Errorf("first apply: got %+v, want both tables created in one batch", ch)
	}
	for _, g := range []struct{ family, file string }{{"inet", "small.nft"}, {"bridge", "small_bridge.nft"}} {
		got := nftList(t, ns, "list", "table", g.family, TableName)
		golden.Check(t, filepath.Join("testdata", g.file), got)
	}
	ch, err = fw.Apply(context.Background(), smallState())
	if err != nil || !ch.Empty() {
		t.Errorf("second apply of the same state: changes %+v, err %v; want nothing sent", ch, err)
	}
	// A fresh Firewall (no cache) also finds nothing to do.
	ch, err = newFirewall(t, ns).Apply(context.Background(), smallState())
	if err != nil || !ch.Empty() {
		t.Errorf("fresh instance, same state: changes %+v, err %v; want nothing sent", ch, err)
	}
}
