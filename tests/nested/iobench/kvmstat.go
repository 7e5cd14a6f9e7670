package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
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
	p.before, p.err = readKVMStats(debugfsKVM, vmDirs(debugfsKVM, pid))
	return p
}

// vmDirs lists the debugfs directories of the VMs process pid holds. KVM
// names each "TID-FD" after the thread that created the VM (for QEMU the
// main thread, for gvmm whichever runtime thread it ran on), so the
// process's threads are matched, and FD must be a KVM VM in its table.
func vmDirs(dir string, pid int) []string {
	ids := []string{strconv.Itoa(pid)}
	if ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid)); err == nil {
		for _, e := range ents {
			ids = append(ids, e.Name())
		}
	}
	var out []string
	for _, id := range ids {
		vms, _ := filepath.Glob(filepath.Join(dir, id+"-*"))
		for _, vm := range vms {
			_, fd, _ := strings.Cut(filepath.Base(vm), "-")
			if l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd)); err == nil && l == "anon_inode:kvm-vm" && !slices.Contains(out, vm) {
				out = append(out, vm)
			}
		}
	}
	return out
}

// report gives the counters' growth since the start, with per-MiB rates
// for mib MiB moved.
func (p *kvmProbe) report(mib int) string {
	if p.err != nil {
		return fmt.Sprintf("kvm: %v", p.err)
	}
	after, err := readKVMStats(debugfsKVM, vmDirs(debugfsKVM, p.pid))
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

// readKVMStats sums kvmStats over the VM directories vms.
func readKVMStats(dir string, vms []string) (map[string]uint64, error) {
	if len(vms) == 0 {
		return nil, fmt.Errorf("no KVM statistics under %s for the VMM's VMs", dir)
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
