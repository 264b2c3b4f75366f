// Package backoff is the capped exponential backoff every source and
// output of the agent retries with.
package backoff

import "time"

// Backoff doubles from Min to Max; Reset starts over.
type Backoff struct {
	min, max, cur time.Duration
}

// New is a backoff from minD to maxD.
func New(minD, maxD time.Duration) *Backoff { return &Backoff{min: minD, max: maxD} }

// Next is the wait before the next attempt.
func (b *Backoff) Next() time.Duration {
	if b.cur == 0 {
		b.cur = b.min
	} else {
		b.cur *= 2
		if b.cur > b.max {
			b.cur = b.max
		}
	}
	return b.cur
}

// Reset starts over at the minimum, after a success.
func (b *Backoff) Reset() { b.cur = 0 }
