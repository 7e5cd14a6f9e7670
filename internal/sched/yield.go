package sched

import (
	"runtime"
	"time"
)

// DefaultEvery is how often Maybe yields: well inside the runtime's
// 10 ms preemption period.
const DefaultEvery = 2 * time.Millisecond

// A yield is slow when it kept the goroutine away for longer than
// slowYield: every P was busy, or the threads that hand the P over waited
// for a CPU. The period then doubles, up to MaxEvery, and halves back
// towards Every after each yield that was not slow.
const (
	slowYield = time.Millisecond
	// MaxEvery is the longest period a Yielder backs off to.
	MaxEvery = time.Second
)

// Yielder yields the calling goroutine to the scheduler about once per
// period: Every while yields are cheap, longer while they are slow. The
// zero value starts at DefaultEvery. It belongs to one goroutine.
//
// Backing off matters most to a vCPU. A yield by a goroutine locked to its
// thread hands the P to another thread and back, two wake-ups; while a
// migration's workers keep every CPU busy each of them waits for a CPU,
// and one yield kept a vCPU out of the guest for 25 to 85 ms in the
// nested bench. Had the period run from the start of that yield, the
// next exit would have yielded again at once: the guest's heartbeat
// stalled for 300 to 650 ms at a time during pre-copy.
type Yielder struct {
	Every time.Duration

	last   time.Time     // when the last yield ended; zero before the first call
	period time.Duration // the current period; zero until the first call

	// now and gosched stand in for time.Now and runtime.Gosched in tests.
	now     func() time.Time
	gosched func()
}

// Maybe yields if the current period has passed since the last yield
// ended, and says whether it did.
func (y *Yielder) Maybe() bool {
	now := y.clock()
	every := y.Every
	if every <= 0 {
		every = DefaultEvery
	}
	switch {
	case y.last.IsZero(): // the first call starts the clock
		y.last, y.period = now, every
		return false
	case now.Sub(y.last) < y.period:
		return false
	}
	if y.gosched != nil {
		y.gosched()
	} else {
		runtime.Gosched()
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
