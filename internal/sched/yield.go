package sched

import (
	"runtime"
	"time"
)

// DefaultEvery is how often Maybe yields: well inside the runtime's
// 10 ms preemption period.
const DefaultEvery = 2 * time.Millisecond

// Back-off (Yielder.Backoff): a yield is slow when it kept the goroutine
// away for longer than slowYield; the period then doubles, up to
// MaxEvery, and halves back towards Every after each yield that was not.
const (
	slowYield = time.Millisecond
	// MaxEvery is the longest period a Yielder backs off to.
	MaxEvery = time.Second
)

// Yielder yields the calling goroutine to the scheduler about once per
// period. The zero value yields every DefaultEvery. It belongs to one
// goroutine.
//
// Without Backoff the period is Every and runs from the start of the last
// yield. With Backoff it runs from the end of the last yield and grows
// while yields are slow. That is for a vCPU while a migration keeps every
// CPU busy: a goroutine locked to its thread yields through two thread
// wake-ups, each then waiting for a CPU, and in the nested bench one
// yield kept the vCPU out of the guest for 25 to 85 ms. With the period
// running from the start of that yield, the next exit yielded again at
// once, and the guest's heartbeat stalled for 300 to 650 ms at a time
// during pre-copy.
type Yielder struct {
	Every time.Duration
	// Backoff may change between calls; turning it off puts the period
	// back to Every.
	Backoff bool

	last   time.Time     // see Backoff; zero before the first call
	period time.Duration // the current period; zero until the first call

	// now and gosched stand in for time.Now and runtime.Gosched in tests.
	now     func() time.Time
	gosched func()
}

// Maybe yields if the current period has passed since the last yield,
// and says whether it did.
func (y *Yielder) Maybe() bool {
	now := y.clock()
	every := y.Every
	if every <= 0 {
		every = DefaultEvery
	}
	if !y.Backoff || y.period == 0 {
		y.period = every
	}
	switch {
	case y.last.IsZero(): // the first call starts the clock
		y.last = now
		return false
	case now.Sub(y.last) < y.period:
		return false
	}
	if y.gosched != nil {
		y.gosched()
	} else {
		runtime.Gosched()
	}
	if !y.Backoff {
		y.last = now
		return true
	}
	y.last = y.clock()
	if y.last.Sub(now) > slowYield {
		y.period = min(2*y.period, max(MaxEvery, every))
	} else {
		y.period = max(y.period/2, every)
	}
	return true
}

// Period is how long Maybe now waits between yields.
func (y *Yielder) Period() time.Duration { return y.period }

func (y *Yielder) clock() time.Time {
	if y.now != nil {
		return y.now()
	}
	return time.Now()
}
