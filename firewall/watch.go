package firewall

import (
	"context"
	"time"
)

// WatchInterval is how often Watch checks the table. The check costs one
// netlink round trip (the ruleset generation) unless something changed.
const WatchInterval = time.Second

// Watch keeps the table equal to state() until ctx ends: every
// WatchInterval it applies the current desired state, which is free when
// nothing committed to nftables since, and repairs the table when someone
// deleted or flushed it (counted in Restores, logged). Errors are logged
// and retried on the next tick; Watch returns ctx's error.
func (f *Firewall) Watch(ctx context.Context, state func() State) error {
	t := time.NewTicker(WatchInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		if _, err := f.Apply(ctx, state()); err != nil && ctx.Err() == nil {
			f.log.Error("firewall watch: apply failed", "err", err)
		}
	}
}
