// Package testwait is how unit tests wait for what goroutines do: with a
// deadline that only a broken implementation reaches.
package testwait

import (
	"testing"
	"time"
)

// Limit is the deadline: generous, since reaching it is a failure anyway.
const Limit = 10 * time.Second

// Recv receives from ch or fails the test.
func Recv[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(Limit):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

// Until polls cond until it holds, or fails the test.
func Until(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(Limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// Drain empties a buffered channel.
func Drain[T any](ch chan T) {
	for {
		select {
		case <-ch:
		default:
			return
		}
	}
}
