package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// clockTick is the unit of utime and stime in /proc/PID/task/TID/stat
// (USER_HZ, 100 on Linux).
const clockTick = 10 * time.Millisecond

// threadCPU is the CPU time (user and system) of a process's threads by
// thread name, read from /proc. Threads of one name are summed; the
// guest's time inside KVM_RUN counts to its vCPU thread ("vcpu0" in gvmm,
// "CPU 0/KVM" in QEMU).
type threadCPU map[string]time.Duration

// readTasks reads each thread's name and CPU time by thread id.
func readTasks(pid int) (map[string]task, error) {
	dir := fmt.Sprintf("/proc/%d/task", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	ts := make(map[string]task, len(ents))
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name(), "stat"))
		if err != nil {
			continue // the thread ended meanwhile
		}
		if name, d, ok := parseTaskStat(string(b)); ok {
			ts[e.Name()] = task{name, d}
		}
	}
	return ts, nil
}

type task struct {
	name string
	cpu  time.Duration
}

// parseTaskStat reads the thread name and utime+stime from a stat line:
// "TID (NAME) STATE PPID ..."; utime and stime are fields 14 and 15, and
// the name may hold spaces and parentheses.
func parseTaskStat(s string) (string, time.Duration, bool) {
	open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || end < open {
		return "", 0, false
	}
	f := strings.Fields(s[end+1:]) // from field 3 (state) on
	if len(f) < 13 {
		return "", 0, false
	}
	u, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return "", 0, false
	}
	return s[open+1 : end], time.Duration(u+st) * clockTick, true
}

// sub is t minus an earlier reading (names absent then count from zero).
func (t threadCPU) sub(before threadCPU) threadCPU {
	d := threadCPU{}
	for n, v := range t {
		d[n] = v - before[n]
	}
	return d
}

// String lists the names by CPU time, the largest first.
func (t threadCPU) String() string {
	names := make([]string, 0, len(t))
	var total time.Duration
	for n, v := range t {
		if v > 0 {
			names = append(names, n)
			total += v
		}
	}
	sort.Slice(names, func(i, j int) bool { return t[names[i]] > t[names[j]] })
	var b strings.Builder
	fmt.Fprintf(&b, "%.2f s", total.Seconds())
	for _, n := range names {
		fmt.Fprintf(&b, ", %q %.2f s", n, t[n].Seconds())
	}
	return b.String()
}

// cpuWatch reads a process's threads every period and keeps each
// thread's latest reading, so that threads that ended (a source's vCPU
// thread after its handover, the whole source process after it) still
// count with their CPU time up to at most one period before.
type cpuWatch struct {
	pid   int
	mu    sync.Mutex
	tasks map[string]task
	stop  chan struct{}
	done  chan struct{}
}

func watchCPU(pid int, period time.Duration) *cpuWatch {
	w := &cpuWatch{pid: pid, tasks: map[string]task{}, stop: make(chan struct{}), done: make(chan struct{})}
	w.sample()
	go func() {
		defer close(w.done)
		t := time.NewTicker(period)
		defer t.Stop()
		for {
			select {
			case <-w.stop:
				return
			case <-t.C:
				if !w.sample() {
					return
				}
			}
		}
	}()
	return w
}

func (w *cpuWatch) sample() bool {
	ts, err := readTasks(w.pid)
	if err != nil {
		return false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for tid, t := range ts {
		w.tasks[tid] = t
	}
	return true
}

// now takes a reading if the process is still there, and returns every
// thread seen so far, by name.
func (w *cpuWatch) now() threadCPU {
	w.sample()
	w.mu.Lock()
	defer w.mu.Unlock()
	t := threadCPU{}
	for _, x := range w.tasks {
		t[x.name] += x.cpu
	}
	return t
}

func (w *cpuWatch) close() {
	close(w.stop)
	<-w.done
}

// machineCPU reads the busy and total CPU time of the whole machine, all
// CPUs together, from the first line of /proc/stat.
func machineCPU() (busy, total time.Duration, err error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, err
	}
	return parseProcStat(string(b))
}

// parseProcStat reads "cpu USER NICE SYSTEM IDLE IOWAIT IRQ SOFTIRQ
// STEAL ..." (clock ticks): idle and iowait are not busy.
func parseProcStat(s string) (busy, total time.Duration, err error) {
	line, _, _ := strings.Cut(s, "\n")
	f := strings.Fields(line)
	if len(f) < 5 || f[0] != "cpu" {
		return 0, 0, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	var idle uint64
	for i, x := range f[1:] {
		v, err := strconv.ParseUint(x, 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("/proc/stat: %q: %w", line, err)
		}
		total += time.Duration(v) * clockTick
		if i == 3 || i == 4 {
			idle += v
		}
	}
	return total - time.Duration(idle)*clockTick, total, nil
}
