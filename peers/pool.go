package peers

import (
	"context"
	"time"

	"github.com/v6reg/v6reg/internal/backoff"
)

// Peer watches with a bounded number of Consul connections.
//
// A blocking query holds one HTTP connection for as long as it waits (up
// to 5 minutes), and Consul refuses a client more than 200 of them
// (limits.http_max_conns_per_client). One query per service:/job: peer
// would let the node's jobs decide how many connections the agent opens.
// So the watches share a budget of consul.watch_connections (limits
// block, default 32):
//
//   - dedicated: the first keys (in key order, when they first appear)
//     get a blocking health query each, as before: a change reaches the
//     table as soon as Consul answers;
//   - shared: every other key. One blocking query on the catalog's
//     service index (/v1/catalog/services) returns whenever a service
//     registration changes anywhere; every shared key is then queued
//     (once: a key already waiting is not queued twice) and a few workers
//     (peerWatchWorkers) refresh them with non-blocking health queries. A
//     change reaches the table after the catalog query answers and the
//     queue drains: seconds for hundreds of keys. Every
//     sharedResync the shared keys are refreshed even without a change
//     (health-only changes do not move the service index, and v6reg does
//     not use health, but a missed answer must not last).
//
// Connections: dedicated + 1 + workers = consul.watch_connections. The
// watch client's transport is capped at that many connections to Consul
// (MaxConnsPerHost) as a backstop, and counts them
// (v6reg_consul_watch_connections). Everything else (registration,
// status) uses the agent's other client, one short connection per call.
//
// What does not change: only v6reg's own registrations are peers
// (peerAddr), ignored entries are counted, persisted sets stand in until
// Consul answers for a key, and a reconcile that starts a key waits
// (bounded) for its first answer, dedicated or shared.

// DefaultWatchConnections is the default of consul.watch_connections:
// well under Consul's default of 200 connections per client, leaving
// room for the agent's other calls and other clients on the node.
const DefaultWatchConnections = 32

// MinWatchConnections is the smallest budget: the catalog query, one
// worker, one dedicated query.
const MinWatchConnections = 3

// MaxWatchConnections stays under Consul's default per-client limit
// (200) with room for the agent's other calls.
const MaxWatchConnections = 150

// peerWatchWorkers is how many shared keys are refreshed at once.
const peerWatchWorkers = 4

// sharedResync refreshes the shared keys even when the catalog's index
// did not move.
const sharedResync = 5 * time.Minute

// sharedMinInterval spaces the refresh rounds of the shared keys: when
// the catalog changes all the time (a large cluster), the shared keys
// are refreshed at most this often, not continuously.
const sharedMinInterval = time.Second

// peerWatchSplit divides a connection budget: one for the catalog query,
// up to peerWatchWorkers workers (at least one), the rest dedicated.
func peerWatchSplit(conns int) (dedicated, workers int) {
	conns = max(conns, MinWatchConnections)
	workers = min(peerWatchWorkers, max(1, (conns-1)/4))
	return conns - 1 - workers, workers
}

// CatalogIndexer is what the shared watch asks of Consul, besides
// HealthService: a blocking query on the catalog's service list that
// returns its index when it changes. consulclient.Client has it; a API
// without it gets its shared keys polled every sharedPoll.
type CatalogIndexer interface {
	CatalogIndex(ctx context.Context, waitIndex uint64) (uint64, error)
}

// sharedPoll refreshes the shared keys of a API without CatalogIndexer.
const sharedPoll = 10 * time.Second

// enqueue queues a shared key for a refresh, once. Called with w.mu held.
func (w *Watches) enqueue(key string) { w.enqueueAt(key, false) }

// enqueueAt queues key at the back, or at the front: a key just
// referenced is waited for by a reconcile (waitPeers), so it does not
// wait behind a whole refresh round. Called with w.mu held.
func (w *Watches) enqueueAt(key string, front bool) {
	if w.queued[key] {
		return
	}
	w.queued[key] = true
	if front {
		w.queue = append([]string{key}, w.queue...)
	} else {
		w.queue = append(w.queue, key)
	}
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// enqueueShared queues every shared key.
func (w *Watches) enqueueShared() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for k, pw := range w.running {
		if pw.cancel == nil {
			w.enqueue(k)
		}
	}
}

// nextShared takes the next queued key still shared, with its watch.
func (w *Watches) nextShared() (string, *peerWatch, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for len(w.queue) > 0 {
		k := w.queue[0]
		w.queue = w.queue[1:]
		delete(w.queued, k)
		if pw, ok := w.running[k]; ok && pw.cancel == nil {
			return k, pw, true
		}
	}
	w.queue = nil // let the backing array go
	return "", nil, false
}

// startShared runs the catalog watch and the workers until ctx ends.
// Called with w.mu held.
func (w *Watches) startShared(ctx context.Context) {
	go w.catalogLoop(ctx)
	for range w.workers {
		go w.refreshLoop(ctx)
	}
}

// catalogLoop queues every shared key when the catalog's service index
// moves (and every sharedResync), at most every sharedMinInterval.
func (w *Watches) catalogLoop(ctx context.Context) {
	ci, ok := w.api.(CatalogIndexer)
	b := backoff.New(500*time.Millisecond, 30*time.Second)
	var index uint64
	last := time.Time{}
	for ctx.Err() == nil {
		if !ok {
			w.enqueueShared()
			sleepCtx(ctx, sharedPoll)
			continue
		}
		next, err := ci.CatalogIndex(ctx, index)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			w.onError()
			d := b.Next()
			w.log.Warn("consul catalog watch failed; shared peer sets keep their last known addresses", "err", err, "retry_in", d)
			sleepCtx(ctx, d)
			continue
		}
		b.Reset()
		if next < index {
			next = 0 // Consul's index went back (a restored server): start over
		}
		if next != index || time.Since(last) > sharedResync {
			w.enqueueShared()
			last = time.Now()
			sleepCtx(ctx, sharedMinInterval)
		}
		index = next
	}
}

// refreshLoop refreshes queued shared keys, one at a time, with
// non-blocking queries.
func (w *Watches) refreshLoop(ctx context.Context) {
	for ctx.Err() == nil {
		key, pw, ok := w.nextShared()
		if !ok {
			select {
			case <-ctx.Done():
				return
			case <-w.wake:
			}
			continue
		}
		q, ok := peerQueryOf(key)
		if !ok {
			continue
		}
		entries, _, err := w.api.HealthService(ctx, q.service, q.tag, 0)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			w.onError()
			w.mu.Lock()
			d := pw.backoff.Next()
			w.sharedFailing = true
			w.mu.Unlock()
			w.log.Warn("consul query failed; keeping last known peers", "peer", key, "err", err, "retry_in", d)
			time.AfterFunc(d, func() {
				w.mu.Lock()
				defer w.mu.Unlock()
				if w.running[key] == pw {
					w.enqueue(key)
				}
			})
			continue
		}
		w.mu.Lock()
		pw.backoff.Reset()
		back := w.sharedFailing
		w.sharedFailing = false
		w.mu.Unlock()
		if back {
			w.trigger("consul: reachable again (" + key + ")")
		}
		w.store(key, pw, q, entries)
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
