package docker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/v6reg/v6reg/internal/testlog"

	"github.com/v6reg/v6reg/internal/testwait"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
)

// TestWatchDockerReconnects breaks the event stream three ways (an error
// after an event, an error right away, a closed channel) and checks that
// the watch reconnects with a growing backoff, resumes from the last event
// it saw, asks for a relist after every (re)subscription, and only returns
// when its context ends.
func TestWatchDockerReconnects(t *testing.T) {
	t1 := time.Date(2026, 11, 22, 0, 55, 13, 123456789, time.UTC)
	type call struct{ since string }
	calls := make(chan call, 10)
	var mu sync.Mutex
	n := 0
	api := eventsOnly(func(_ context.Context, o events.ListOptions) (<-chan events.Message, <-chan error) {
		mu.Lock()
		n++
		k := n
		mu.Unlock()
		calls <- call{o.Since}
		msgs, errs := make(chan events.Message, 4), make(chan error, 1)
		switch k {
		case 1:
			// An event on another network is not ours; then one that is.
			msgs <- events.Message{Type: events.NetworkEventType, Action: "connect", TimeNano: t1.Add(-time.Second).UnixNano(),
				Actor: events.Actor{Attributes: map[string]string{"name": "bridge"}}}
			msgs <- events.Message{Type: events.ContainerEventType, Action: "start", TimeNano: t1.UnixNano(), Actor: events.Actor{ID: "c1"}}
			go func() {
				// The error comes after both events were read.
				for len(msgs) > 0 {
					time.Sleep(time.Millisecond)
				}
				errs <- errors.New("unexpected EOF")
			}()
		case 2:
			errs <- errors.New("connection refused")
		case 3:
			close(msgs)
		}
		return msgs, errs
	})
	var backoffs []time.Duration
	after := func(d time.Duration) <-chan time.Time {
		backoffs = append(backoffs, d)
		c := make(chan time.Time, 1)
		c <- time.Now()
		return c
	}
	triggers := make(chan string, 100)
	errCount := 0
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		Watch(ctx, api, testNetwork, testlog.New(t), funcSink{
			container: func(id, r string) { triggers <- r + " " + id },
			relist:    func(r string) { triggers <- r },
		}, func() { errCount++ }, after)
	}()

	first := testwait.Recv(t, calls, "the first subscription")
	if first.since == "" {
		t.Errorf("first subscription has no since")
	}
	wantSince := fmt.Sprintf("%d.%09d", t1.Unix(), t1.Nanosecond())
	for i := 2; i <= 4; i++ {
		c := testwait.Recv(t, calls, fmt.Sprintf("subscription %d", i))
		if c.since != wantSince {
			t.Errorf("subscription %d since %q, want the last event's time %q", i, c.since, wantSince)
		}
	}
	select {
	case <-done:
		t.Fatal("Watch returned before its context ended")
	default:
	}
	// A relist per subscription (the 4th comes right after its Events
	// call returned) and one for the start event.
	var got []string
	subs, starts := 0, 0
	for subs < 4 {
		r := testwait.Recv(t, triggers, "a trigger")
		got = append(got, r)
		switch {
		case strings.Contains(r, "subscribed"):
			subs++
		case r == "docker: container start c1":
			starts++
		default:
			t.Errorf("unexpected trigger %q (an event of another network?)", r)
		}
	}
	cancel()
	testwait.Recv(t, done, "Watch to return after cancel")
	if starts != 1 || len(triggers) != 0 {
		t.Errorf("triggers %q (and %d more): want 4 subscriptions and one start", got, len(triggers))
	}
	// The event reset the backoff; the next two breaks doubled it.
	want := []time.Duration{250 * time.Millisecond, 500 * time.Millisecond, time.Second}
	if len(backoffs) != 3 || backoffs[0] != want[0] || backoffs[1] != want[1] || backoffs[2] != want[2] {
		t.Errorf("backoffs = %v, want %v", backoffs, want)
	}
	if errCount != 3 {
		t.Errorf("errors counted = %d, want 3", errCount)
	}
}

// funcSink is a Sink of functions.
type funcSink struct {
	container func(id, reason string)
	relist    func(reason string)
}

func (f funcSink) ContainerEvent(id, reason string) { f.container(id, reason) }
func (f funcSink) RelistEvent(reason string)        { f.relist(reason) }

const testNetwork = "v6"

// eventsOnly is an engine that only serves events.
type eventsOnly func(ctx context.Context, o events.ListOptions) (<-chan events.Message, <-chan error)

func (f eventsOnly) Events(ctx context.Context, o events.ListOptions) (<-chan events.Message, <-chan error) {
	return f(ctx, o)
}

func (eventsOnly) ContainerList(context.Context, container.ListOptions) ([]container.Summary, error) {
	return nil, errors.New("not in this test")
}

func (eventsOnly) ContainerInspect(context.Context, string) (container.InspectResponse, error) {
	return container.InspectResponse{}, errors.New("not in this test")
}
