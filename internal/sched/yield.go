package sched

import (
	"runtime"
	"time"
)

// DefaultEvery is how often Maybe yields: well inside the runtime's
// 10 ms preemption period.
const DefaultEvery = 2 * time.Millisecond

// Yielder yields the calling goroutine to the scheduler at most once per
// Every. The zero value yields every DefaultEvery. It belongs to one
// goroutine.
type Yielder struct {
	Every time.Duration
	last  time.Time
}

// Maybe yields if Every has passed since the last yield, and says
// whether it did. For a goroutine locked to its thread a yield hands the
// P to another thread and back (two wake-ups), so the period should not
// be much shorter than the default.
func (y *Yielder) Maybe() bool {
	now := time.Now()
	every := y.Every
	if every <= 0 {
		every = DefaultEvery
	}
	switch {
	case y.last.IsZero(): // the first call starts the clock
		y.last = now
		return false
	case now.Sub(y.last) < every:
		return false
	}
	runtime.Gosched()
	y.last = now
	return true
}
