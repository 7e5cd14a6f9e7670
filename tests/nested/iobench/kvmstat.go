package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// kvmStats are the L1 KVM counters of one VM that explain a difference
// between two VMMs running the same guest: how often the guest left
// (exits, by kind) and how many interrupts KVM injected into it.
var kvmStats = []string{"exits", "io_exits", "mmio_exits", "irq_exits", "halt_exits", "irq_injections", "irq_window_exits", "signal_exits"}

// debugfsKVM is where KVM keeps one directory per VM, "PID-FD".
const debugfsKVM = "/sys/kernel/debug/kvm"

// kvmProbe samples the KVM counters of the VMs a process holds.
type kvmProbe struct {
	pid    int
	before map[string]uint64
	err    error
}

// startKVMProbe mounts debugfs if it must and samples pid's counters.
func startKVMProbe(pid int) *kvmProbe {
	if _, err := os.Stat(debugfsKVM); err != nil {
		// L1's init does not mount debugfs; iobench runs as root there.
		_ = mountDebugfs()
	}
	p := &kvmProbe{pid: pid}
	p.before, p.err = readKVMStats(debugfsKVM, pid)
	return p
}

// report gives the counters' growth since the start, with per-MiB rates
// for mib MiB moved.
func (p *kvmProbe) report(mib int) string {
	if p.err != nil {
		return fmt.Sprintf("kvm: %v", p.err)
	}
	after, err := readKVMStats(debugfsKVM, p.pid)
	if err != nil {
		return fmt.Sprintf("kvm: %v", err)
	}
	return formatKVMDelta(p.before, after, mib)
}

// formatKVMDelta prints each counter's growth per MiB.
func formatKVMDelta(before, after map[string]uint64, mib int) string {
	var b strings.Builder
	b.WriteString("kvm per MiB:")
	for _, name := range kvmStats {
		a, ok := after[name]
		if !ok {
			continue
		}
		d := a - before[name]
		if a < before[name] {
			d = 0
		}
		fmt.Fprintf(&b, " %s=%.0f", name, float64(d)/float64(max(mib, 1)))
	}
	return b.String()
}

// readKVMStats sums kvmStats over every VM directory of pid under dir.
func readKVMStats(dir string, pid int) (map[string]uint64, error) {
	vms, err := filepath.Glob(filepath.Join(dir, strconv.Itoa(pid)+"-*"))
	if err != nil || len(vms) == 0 {
		return nil, fmt.Errorf("no KVM statistics for process %d under %s", pid, dir)
	}
	out := make(map[string]uint64)
	for _, vm := range vms {
		for _, name := range kvmStats {
			b, err := os.ReadFile(filepath.Join(vm, name))
			if err != nil {
				continue // not kept by this kernel
			}
			v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
			if err != nil {
				return nil, fmt.Errorf("%s/%s: %w", vm, name, err)
			}
			out[name] += v
		}
	}
	return out, nil
}

// mountDebugfs mounts debugfs at /sys/kernel/debug.
func mountDebugfs() error {
	return unix.Mount("debugfs", "/sys/kernel/debug", "debugfs", 0, "")
}
