package main

import (
	"cmp"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// clockTicks is USER_HZ, the unit of /proc's CPU times (100 on every
// Linux architecture gvmm runs on).
const clockTicks = 100

// threadCPU is one thread's CPU times from /proc/PID/task/TID/stat, in
// clock ticks. Guest is the time it ran a guest (KVM_RUN), which Linux
// also counts in User.
type threadCPU struct {
	User, Sys, Guest uint64
}

// parseStat reads utime, stime and guest_time (fields 14, 15 and 43) from
// a /proc stat line. The command name (field 2) may hold spaces and
// parentheses, so fields are counted after its last ')'.
func parseStat(line string) (threadCPU, error) {
	i := strings.LastIndexByte(line, ')')
	if i < 0 {
		return threadCPU{}, fmt.Errorf("stat line %q: no command name", line)
	}
	f := strings.Fields(line[i+1:]) // f[0] is field 3 (state)
	const utime, stime, guest = 14 - 3, 15 - 3, 43 - 3
	if len(f) <= guest {
		return threadCPU{}, fmt.Errorf("stat line has %d fields after the name, want > %d", len(f), guest)
	}
	var t threadCPU
	for _, x := range []struct {
		dst *uint64
		i   int
	}{{&t.User, utime}, {&t.Sys, stime}, {&t.Guest, guest}} {
		v, err := strconv.ParseUint(f[x.i], 10, 64)
		if err != nil {
			return threadCPU{}, fmt.Errorf("stat field %d: %w", x.i+3, err)
		}
		*x.dst = v
	}
	return t, nil
}

// procCPU samples every thread of a process, keyed by thread id.
func procCPU(pid int) (map[string]threadCPU, error) {
	dir := fmt.Sprintf("/proc/%d/task", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("threads of %d: %w", pid, err)
	}
	m := make(map[string]threadCPU, len(ents))
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name(), "stat"))
		if err != nil {
			continue // the thread ended
		}
		t, err := parseStat(string(b))
		if err != nil {
			return nil, fmt.Errorf("thread %s of %d: %w", e.Name(), pid, err)
		}
		m[e.Name()] = t
	}
	return m, nil
}

// cpuSplit is where a VMM's CPU time went between two samples, in
// milliseconds: in its vCPU threads (those that ran the guest), of which
// in the guest itself and in the kernel (KVM and the exits' system calls),
// and in all its other threads (device emulation, the Go runtime, QEMU's
// main loop), of which in the kernel (for a TAP, the host's network stack
// runs inside the VMM's write) and in the busiest one of them.
type cpuSplit struct {
	VCPU, Guest, VCPUSys     uint64
	Other, OtherSys, Busiest uint64
	OtherThreads             int // other threads that used CPU
	// Top is the busiest other threads, most first (at most four).
	Top []threadUse
}

// threadUse is one thread's CPU between two samples, in milliseconds.
type threadUse struct {
	TID string
	MS  uint64
}

// splitCPU compares two procCPU samples. A thread that ran a guest at
// all, by the second sample, is a vCPU thread; a thread missing from the
// first started between the samples and counts from zero.
func splitCPU(before, after map[string]threadCPU) cpuSplit {
	var s cpuSplit
	for tid, a := range after {
		b := before[tid]
		d := (a.User + a.Sys) - (b.User + b.Sys)
		if a.Guest > 0 {
			s.VCPU += d
			s.Guest += a.Guest - b.Guest
			s.VCPUSys += a.Sys - b.Sys
			continue
		}
		s.Other += d
		s.OtherSys += a.Sys - b.Sys
		s.Busiest = max(s.Busiest, d)
		if d > 0 {
			s.OtherThreads++
			s.Top = append(s.Top, threadUse{tid, d})
		}
	}
	const ms = 1000 / clockTicks
	slices.SortFunc(s.Top, func(a, b threadUse) int { return cmp.Or(cmp.Compare(b.MS, a.MS), cmp.Compare(a.TID, b.TID)) })
	top := s.Top[:min(4, len(s.Top))]
	for i := range top {
		top[i].MS *= ms
	}
	return cpuSplit{VCPU: s.VCPU * ms, Guest: s.Guest * ms, VCPUSys: s.VCPUSys * ms,
		Other: s.Other * ms, OtherSys: s.OtherSys * ms, Busiest: s.Busiest * ms, OtherThreads: s.OtherThreads,
		Top: slices.Clip(top)}
}

// hostBusy reads the aggregate "cpu" line of /proc/stat: busy and total
// clock ticks of every CPU of this machine (L1).
func hostBusy() (busy, total uint64, err error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 5 || f[0] != "cpu" {
		return 0, 0, fmt.Errorf("/proc/stat: first line %q", line)
	}
	// user nice system idle iowait irq softirq steal (guest and
	// guest_nice are already in user and nice).
	for i, x := range f[1:min(len(f), 9)] {
		v, err := strconv.ParseUint(x, 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("/proc/stat: %w", err)
		}
		total += v
		if i != 3 && i != 4 { // idle, iowait
			busy += v
		}
	}
	return busy, total, nil
}

// cpuProbe samples a VMM's threads and the machine's CPUs at the start of
// a transfer; report says where the CPU went since.
type cpuProbe struct {
	pid         int
	threads     map[string]threadCPU
	busy, total uint64
	err         error
	// calls samples, every syscallEvery until stop is closed, the system
	// call each thread is in (/proc/PID/task/TID/syscall: its number,
	// or "running"), to tell the VMM's busy threads apart.
	stop, done chan struct{}
	calls      map[string]map[string]int
}

const syscallEvery = 100 * time.Millisecond

func startCPUProbe(pid int) *cpuProbe {
	p := &cpuProbe{pid: pid, stop: make(chan struct{}), done: make(chan struct{}), calls: map[string]map[string]int{}}
	p.threads, p.err = procCPU(pid)
	if p.err == nil {
		p.busy, p.total, p.err = hostBusy()
	}
	go p.sampleCalls()
	return p
}

func (p *cpuProbe) sampleCalls() {
	defer close(p.done)
	t := time.NewTicker(syscallEvery)
	defer t.Stop()
	dir := fmt.Sprintf("/proc/%d/task", p.pid)
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
		}
		ents, err := os.ReadDir(dir)
		if err != nil {
			return
		}
		for _, e := range ents {
			b, err := os.ReadFile(filepath.Join(dir, e.Name(), "syscall"))
			if err != nil {
				continue
			}
			call, _, _ := strings.Cut(strings.TrimSpace(string(b)), " ")
			if p.calls[e.Name()] == nil {
				p.calls[e.Name()] = map[string]int{}
			}
			p.calls[e.Name()][call]++
		}
	}
}

// usualCalls is a thread's most sampled system calls, "NR:count" most
// first (at most three).
func usualCalls(calls map[string]int) string {
	var keys []string
	for k := range calls {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b string) int { return cmp.Or(cmp.Compare(calls[b], calls[a]), cmp.Compare(a, b)) })
	var out []string
	for _, k := range keys[:min(3, len(keys))] {
		out = append(out, fmt.Sprintf("%s:%d", k, calls[k]))
	}
	return strings.Join(out, "/")
}

func (p *cpuProbe) report() string {
	close(p.stop)
	<-p.done
	if p.err != nil {
		return fmt.Sprintf("cpu: %v", p.err)
	}
	after, err := procCPU(p.pid)
	if err != nil {
		return fmt.Sprintf("cpu: %v", err)
	}
	busy, total, err := hostBusy()
	if err != nil {
		return fmt.Sprintf("cpu: %v", err)
	}
	s := splitCPU(p.threads, after)
	pct := 0.0
	if total > p.total {
		pct = 100 * float64(busy-p.busy) / float64(total-p.total)
	}
	top := make([]string, len(s.Top))
	for i, v := range s.Top {
		top[i] = fmt.Sprintf("%d(%s)", v.MS, usualCalls(p.calls[v.TID]))
	}
	return fmt.Sprintf("cpu: vmm_vcpu_ms=%d vmm_guest_ms=%d vmm_vcpu_sys_ms=%d vmm_other_ms=%d vmm_other_sys_ms=%d vmm_other_busiest_ms=%d vmm_other_threads=%d vmm_other_top_ms=%s l1_busy_pct=%.0f",
		s.VCPU, s.Guest, s.VCPUSys, s.Other, s.OtherSys, s.Busiest, s.OtherThreads, strings.Join(top, ","), pct)
}
