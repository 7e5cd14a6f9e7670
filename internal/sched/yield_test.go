package sched

import (
	"testing"
	"time"
)

func TestYielder(t *testing.T) {
	for _, tc := range []struct {
		name  string
		every time.Duration
		sleep time.Duration
		want  []bool
	}{
		{"first call starts the clock", time.Hour, 0, []bool{false, false, false}},
		{"yields once the period passed", time.Millisecond, 2 * time.Millisecond, []bool{false, true, true}},
		{"zero value uses the default", 0, 2 * DefaultEvery, []bool{false, true, true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			y := Yielder{Every: tc.every}
			for i, want := range tc.want {
				if got := y.Maybe(); got != want {
					t.Fatalf("call %d: Maybe() = %v, want %v", i, got, want)
				}
				time.Sleep(tc.sleep)
			}
		})
	}
}
