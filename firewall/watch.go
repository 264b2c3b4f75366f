package firewall

import (
	"context"
	"time"
)

// WatchInterval is how often Watch checks the table. The check costs one
// netlink round trip (the ruleset generation) unless something changed.
const WatchInterval = time.Second

// Watch keeps the table equal to the newest valid state given to Apply or
// ApplyDelta until ctx ends: every WatchInterval it applies that state
// again, which is free when nothing committed to nftables since, and
// repairs the table when
// someone deleted or flushed it (counted in Restores, logged). Before the
// first Apply it does nothing. Errors are logged and retried on the next
// tick; Watch returns ctx's error.
//
// The state to restore is taken under the lock every Apply and ApplyDelta
// holds, not handed in by the caller: a tick that waits behind an Apply
// restores what that Apply took, never the state before it. Apply,
// ApplyDelta and the repair are one writer.
func (f *Firewall) Watch(ctx context.Context) error {
	t := time.NewTicker(WatchInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		if _, err := f.repair(ctx); err != nil && ctx.Err() == nil {
			f.log.Error("firewall watch: apply failed", "err", err)
		}
	}
}
