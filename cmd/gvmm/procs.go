package main

import (
	"os"
	"runtime"
)

// A vCPU goroutine spends its life in KVM_RUN, a system call, and the Go
// runtime gives its processor (P) to other goroutines meanwhile. At every
// exit to gvmm (each byte the guest writes to the UART is one) it needs a
// P back. With GOMAXPROCS at the host's CPU count and CPU-bound goroutines
// holding every P (a migration's encryption workers, one per CPU), it
// waits on the runtime's global queue until a running goroutine is
// preempted and the queue's turn comes: up to tens of milliseconds per
// exit. In the migration bench an idle guest's heartbeat stalled for
// 300 ms at a time during pre-copy, while QEMU's guest did not.
//
// So a process that runs vCPUs gets one P more per vCPU, and a migration
// keeps one encryption worker per P the runtime chose by itself
// (env.procs): a vCPU leaving KVM_RUN finds an idle P, and the kernel's
// scheduler, not Go's queue, shares the CPUs between it and the workers.
// A GOMAXPROCS set in the environment is left as it is.

// addVCPUProcs raises GOMAXPROCS to procs (the runtime's own choice) plus
// one per vCPU.
func addVCPUProcs(procs, vcpus int) {
	if os.Getenv("GOMAXPROCS") != "" || vcpus <= 0 {
		return
	}
	if want := procs + vcpus; runtime.GOMAXPROCS(0) < want {
		runtime.GOMAXPROCS(want)
	}
}
