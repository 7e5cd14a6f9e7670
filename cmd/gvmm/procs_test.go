package main

import (
	"runtime"
	"testing"
)

func TestAddVCPUProcs(t *testing.T) {
	orig := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { runtime.GOMAXPROCS(orig) })
	for _, tc := range []struct {
		name        string
		env         string // GOMAXPROCS in the environment
		start       int
		procs, cpus int
		want        int
	}{
		{"one P per vCPU on top", "", 2, 2, 2, 4},
		{"one vCPU", "", 2, 2, 1, 3},
		{"already enough", "", 8, 2, 2, 8},
		{"no vCPUs", "", 2, 2, 0, 2},
		{"set by the user", "2", 2, 2, 4, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("GOMAXPROCS", tc.env)
			runtime.GOMAXPROCS(tc.start)
			addVCPUProcs(tc.procs, tc.cpus)
			if got := runtime.GOMAXPROCS(0); got != tc.want {
				t.Fatalf("GOMAXPROCS %d, want %d", got, tc.want)
			}
		})
	}
}
