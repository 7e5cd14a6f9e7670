package sched

import (
	"testing"
	"time"
)

func TestYielder(t *testing.T) {
	const ms = time.Millisecond
	// step is one call to Maybe: the time that passes before it, how long
	// a yield inside it takes, and what it should do.
	type step struct {
		before, yieldTakes time.Duration
		wantYield          bool
		wantPeriod         time.Duration
		backoff            bool
	}
	for _, tc := range []struct {
		name  string
		every time.Duration
		steps []step
	}{
		{"first call starts the clock", 5 * ms, []step{
			{0, 0, false, 5 * ms, false},
			{4 * ms, 0, false, 5 * ms, false},
		}},
		{"yields once the period passed", 5 * ms, []step{
			{0, 0, false, 5 * ms, false},
			{5 * ms, 0, true, 5 * ms, false},
			{4 * ms, 0, false, 5 * ms, false},
			{1 * ms, 0, true, 5 * ms, false},
		}},
		{"zero value uses the default", 0, []step{
			{0, 0, false, DefaultEvery, false},
			{DefaultEvery, 0, true, DefaultEvery, false},
		}},
		{"a slow yield doubles the period, counted from its end", 5 * ms, []step{
			{0, 0, false, 5 * ms, true},
			{5 * ms, 60 * ms, true, 10 * ms, true},
			{0, 0, false, 10 * ms, true}, // an exit right after the slow yield does not yield again
			{9 * ms, 0, false, 10 * ms, true},
			{1 * ms, 40 * ms, true, 20 * ms, true},
			{20 * ms, 0, true, 10 * ms, true}, // a cheap yield halves it back
			{10 * ms, 0, true, 5 * ms, true},
			{5 * ms, 0, true, 5 * ms, true}, // never below Every
		}},
		{"without Backoff a slow yield changes nothing", 5 * ms, []step{
			{0, 0, false, 5 * ms, false},
			{5 * ms, 60 * ms, true, 5 * ms, false},
			{0, 0, true, 5 * ms, false}, // the period ran from the yield's start
		}},
		{"turning Backoff off puts the period back", 5 * ms, []step{
			{0, 0, false, 5 * ms, true},
			{5 * ms, 60 * ms, true, 10 * ms, true},
			{10 * ms, 60 * ms, true, 20 * ms, true},
			{5 * ms, 0, true, 5 * ms, false},
		}},
		{"the period stops growing at MaxEvery", 400 * ms, []step{
			{0, 0, false, 400 * ms, true},
			{400 * ms, 2 * ms, true, 800 * ms, true},
			{800 * ms, 2 * ms, true, MaxEvery, true},
			{MaxEvery, 2 * ms, true, MaxEvery, true},
		}},
		{"an Every above MaxEvery is kept", 2 * time.Second, []step{
			{0, 0, false, 2 * time.Second, true},
			{2 * time.Second, 2 * ms, true, 2 * time.Second, true},
		}},
		{"a yield of exactly slowYield is not slow", 5 * ms, []step{
			{0, 0, false, 5 * ms, true},
			{5 * ms, slowYield, true, 5 * ms, true},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock := time.Unix(1000, 0)
			var yieldTakes time.Duration
			yields := 0
			y := Yielder{
				Every:   tc.every,
				now:     func() time.Time { return clock },
				gosched: func() { yields++; clock = clock.Add(yieldTakes) },
			}
			for i, s := range tc.steps {
				clock = clock.Add(s.before)
				yieldTakes = s.yieldTakes
				y.Backoff = s.backoff
				before := yields
				got := y.Maybe()
				if got != s.wantYield || (yields > before) != s.wantYield {
					t.Fatalf("step %d: Maybe() = %v after %d yields (%d before), want %v", i, got, yields, before, s.wantYield)
				}
				if p := y.Period(); p != s.wantPeriod {
					t.Fatalf("step %d: period %v, want %v", i, p, s.wantPeriod)
				}
			}
		})
	}
}

// TestYielderRealClock runs the real time.Now and runtime.Gosched.
func TestYielderRealClock(t *testing.T) {
	y := Yielder{Every: time.Millisecond}
	if y.Maybe() {
		t.Fatal("the first call yielded")
	}
	time.Sleep(2 * time.Millisecond)
	if !y.Maybe() {
		t.Fatal("no yield after the period passed")
	}
	if p := y.Period(); p < time.Millisecond || p > MaxEvery {
		t.Fatalf("period %v out of [%v, %v]", p, time.Millisecond, MaxEvery)
	}
}
