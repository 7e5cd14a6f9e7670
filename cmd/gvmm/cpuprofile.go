package main

import (
	"fmt"
	"os"
	"runtime/pprof"
)

// cpuProfileEnv names a file that gvmm run writes a Go CPU profile of the
// whole run to (runtime/pprof; read it with go tool pprof). It is for
// benchmarks (tests/nested/iobench), where no debugger reaches the VMM.
const cpuProfileEnv = "GVMM_CPUPROFILE"

// startCPUProfile starts the profile cpuProfileEnv asks for, if any, and
// returns what stops it and closes the file.
func startCPUProfile() (stop func() error, err error) {
	path := os.Getenv(cpuProfileEnv)
	if path == "" {
		return func() error { return nil }, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", cpuProfileEnv, err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: start CPU profile: %w", cpuProfileEnv, err)
	}
	return func() error {
		pprof.StopCPUProfile()
		if err := f.Close(); err != nil {
			return fmt.Errorf("%s: %w", cpuProfileEnv, err)
		}
		return nil
	}, nil
}
