// Package benchfmt is the contract between bootbench, which times guest
// boots inside the machine that has KVM, and the harness (tests/nested),
// which reads its results off that machine's console: one line per boot,
// the statistics over them, and the table the harness prints.
//
// A result line is the Prefix followed by space-separated key=value
// fields; why=, when present, comes last and runs to the end of the line:
//
//	=== GVMM-NESTED BENCH RESULT vmm=gvmm run=1 ok=1 rc=0 up_ms=812 exit_ms=1020 maxrss_kib=30112 overhead_kib=9123 guest_kib=20989
//	=== GVMM-NESTED BENCH RESULT vmm=qemu-pc run=2 ok=0 rc=-1 up_ms=-1 exit_ms=300000 maxrss_kib=-1 overhead_kib=-1 guest_kib=-1 why=killed after the 5m0s timeout
//
// Figures that were not measured are -1.
package benchfmt

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Prefix starts every result line. It begins with the harness's marker
// prefix ("=== GVMM-NESTED "), so the harness finds it among L1's console
// output.
const Prefix = "=== GVMM-NESTED BENCH RESULT "

// GuestUp is the first line the guest's /init prints (tests/guest/init):
// the end of a timed boot.
const GuestUp = "gvmm-guest: userspace up"

// Result is one timed boot.
type Result struct {
	VMM string // which configuration: "gvmm", "qemu-microvm", "qemu-pc"
	Run int    // 1-based round number
	OK  bool   // exit status 0 and the guest's userspace line seen
	RC  int    // exit status; -1 if killed or never started
	// Up is the time from starting the process to GuestUp arriving on its
	// output; -1 if the line never came.
	Up time.Duration
	// Exit is the time from starting the process to its exit; -1 if it
	// never started.
	Exit time.Duration
	// MaxRSSKiB is the process's peak resident set (ru_maxrss from wait4,
	// the same figure as VmHWM), guest RAM included.
	MaxRSSKiB int64
	// OverheadKiB and GuestKiB come from gvmm run --stats: its peak RSS
	// less the guest RAM touched, and that guest RAM.
	OverheadKiB, GuestKiB int64
	Why                   string // why it failed; "" when OK
}

// Unmeasured returns a failed Result for vmm's round run with every
// figure unmeasured.
func Unmeasured(vmm string, run int, why string) Result {
	return Result{VMM: vmm, Run: run, RC: -1, Up: -1, Exit: -1, MaxRSSKiB: -1, OverheadKiB: -1, GuestKiB: -1, Why: why}
}

func ms(d time.Duration) int64 {
	if d < 0 {
		return -1
	}
	return d.Milliseconds()
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// String formats r as a result line, Prefix included.
func (r Result) String() string {
	var b strings.Builder
	b.WriteString(Prefix)
	fmt.Fprintf(&b, "vmm=%s run=%d ok=%d rc=%d up_ms=%d exit_ms=%d maxrss_kib=%d overhead_kib=%d guest_kib=%d",
		r.VMM, r.Run, b2i(r.OK), r.RC, ms(r.Up), ms(r.Exit), r.MaxRSSKiB, r.OverheadKiB, r.GuestKiB)
	if r.Why != "" {
		b.WriteString(" why=" + strings.ReplaceAll(r.Why, "\n", " "))
	}
	return b.String()
}

// Parse reads a result line (with or without Prefix). Every field but
// why= is required.
func Parse(line string) (Result, error) {
	s := strings.TrimSpace(line)
	s = strings.TrimPrefix(s, strings.TrimSpace(Prefix))
	s = strings.TrimSpace(s)
	r := Result{}
	if head, why, ok := strings.Cut(s, "why="); ok {
		if head != "" && !strings.HasSuffix(head, " ") {
			return r, fmt.Errorf("bench result %q: why= must start a field", line)
		}
		s, r.Why = head, strings.TrimSpace(why)
	}
	var run, rc, ok, upMS, exitMS int64
	ints := map[string]*int64{
		"run": &run, "ok": &ok, "rc": &rc, "up_ms": &upMS, "exit_ms": &exitMS,
		"maxrss_kib": &r.MaxRSSKiB, "overhead_kib": &r.OverheadKiB, "guest_kib": &r.GuestKiB,
	}
	seen := map[string]bool{}
	for _, f := range strings.Fields(s) {
		k, v, found := strings.Cut(f, "=")
		if !found {
			return r, fmt.Errorf("bench result %q: field %q is not key=value", line, f)
		}
		if seen[k] {
			return r, fmt.Errorf("bench result %q: %s twice", line, k)
		}
		seen[k] = true
		if k == "vmm" {
			r.VMM = v
			continue
		}
		p := ints[k]
		if p == nil {
			return r, fmt.Errorf("bench result %q: unknown field %q", line, k)
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return r, fmt.Errorf("bench result %q: %s: %w", line, k, err)
		}
		*p = n
	}
	for _, k := range []string{"vmm", "run", "ok", "rc", "up_ms", "exit_ms", "maxrss_kib", "overhead_kib", "guest_kib"} {
		if !seen[k] {
			return r, fmt.Errorf("bench result %q: no %s=", line, k)
		}
	}
	if r.VMM == "" || ok < 0 || ok > 1 || run < 1 {
		return r, fmt.Errorf("bench result %q: bad vmm, ok or run", line)
	}
	r.Run, r.OK, r.RC = int(run), ok == 1, int(rc)
	r.Up, r.Exit = time.Duration(upMS)*time.Millisecond, time.Duration(exitMS)*time.Millisecond
	if upMS < 0 {
		r.Up = -1
	}
	if exitMS < 0 {
		r.Exit = -1
	}
	return r, nil
}

// Stats is gvmm run --stats's line:
//
//	gvmm: stats: run_ms=N peak_rss_kib=N guest_touched_kib=N overhead_kib=N
type Stats struct {
	RunMS, PeakRSSKiB, GuestTouchedKiB, OverheadKiB int64
}

// StatsPrefix starts gvmm's stats line.
const StatsPrefix = "gvmm: stats: "

// ParseStats reads gvmm's stats line; ok is false if line is not one (gvmm
// prints "gvmm: stats: <error>" when it cannot measure).
func ParseStats(line string) (s Stats, ok bool) {
	rest, found := strings.CutPrefix(strings.TrimSpace(line), StatsPrefix)
	if !found {
		return s, false
	}
	want := map[string]*int64{
		"run_ms": &s.RunMS, "peak_rss_kib": &s.PeakRSSKiB,
		"guest_touched_kib": &s.GuestTouchedKiB, "overhead_kib": &s.OverheadKiB,
	}
	got := 0
	for _, f := range strings.Fields(rest) {
		k, v, _ := strings.Cut(f, "=")
		p := want[k]
		if p == nil {
			continue // a later gvmm may add figures
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return Stats{}, false
		}
		*p = n
		got++
	}
	return s, got == len(want)
}

// Spread is the minimum, median and maximum of some figures.
type Spread[T time.Duration | int64] struct {
	N                int
	Min, Median, Max T
}

// SpreadOf computes the spread of vs; N is 0 (and the rest zero) if vs is
// empty. The median of an even count is the mean of the middle two.
func SpreadOf[T time.Duration | int64](vs []T) Spread[T] {
	if len(vs) == 0 {
		return Spread[T]{}
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + m) / 2
	}
	return Spread[T]{N: len(s), Min: s[0], Median: m, Max: s[len(s)-1]}
}

// Summary is what the results of one VMM come to.
type Summary struct {
	VMM      string
	Runs     int                   // results seen
	Failed   []Result              // of them, the ones not OK
	Up, Exit Spread[time.Duration] // over the OK runs
	MaxRSS   Spread[int64]         // KiB, over the OK runs that measured it
	Overhead Spread[int64]         // KiB, over the OK runs that measured it (gvmm)
}

// Summarize groups rs by VMM, in the order given by vmms and then in the
// order of first appearance for any others.
func Summarize(rs []Result, vmms []string) []Summary {
	order := slices.Clone(vmms)
	for _, r := range rs {
		if !slices.Contains(order, r.VMM) {
			order = append(order, r.VMM)
		}
	}
	var out []Summary
	for _, v := range order {
		s := Summary{VMM: v}
		var up, exit []time.Duration
		var rss, over []int64
		for _, r := range rs {
			if r.VMM != v {
				continue
			}
			s.Runs++
			if !r.OK {
				s.Failed = append(s.Failed, r)
				continue
			}
			up, exit = append(up, r.Up), append(exit, r.Exit)
			if r.MaxRSSKiB >= 0 {
				rss = append(rss, r.MaxRSSKiB)
			}
			if r.OverheadKiB >= 0 {
				over = append(over, r.OverheadKiB)
			}
		}
		s.Up, s.Exit = SpreadOf(up), SpreadOf(exit)
		s.MaxRSS, s.Overhead = SpreadOf(rss), SpreadOf(over)
		out = append(out, s)
	}
	return out
}

// Secs formats d in seconds with millisecond precision.
func Secs(d time.Duration) string { return fmt.Sprintf("%.3fs", d.Seconds()) }

// MiB formats a KiB figure in MiB.
func MiB(kib int64) string { return fmt.Sprintf("%.1f MiB", float64(kib)/1024) }

// Table formats summaries as aligned lines: boot time to the guest's
// first userspace line (median, min, max), time to exit and peak RSS
// (medians). want is the number of runs each VMM should have had.
func Table(ss []Summary, want int) []string {
	lines := []string{fmt.Sprintf("%-14s %-6s %-10s %-10s %-10s %-12s %s",
		"vmm", "ok", "median", "min", "max", "exit median", "peak RSS median")}
	for _, s := range ss {
		ok := fmt.Sprintf("%d/%d", s.Runs-len(s.Failed), max(want, s.Runs))
		if s.Up.N == 0 {
			lines = append(lines, fmt.Sprintf("%-14s %-6s no successful run", s.VMM, ok))
			continue
		}
		rss := "-"
		if s.MaxRSS.N > 0 {
			rss = MiB(s.MaxRSS.Median)
		}
		lines = append(lines, fmt.Sprintf("%-14s %-6s %-10s %-10s %-10s %-12s %s",
			s.VMM, ok, Secs(s.Up.Median), Secs(s.Up.Min), Secs(s.Up.Max), Secs(s.Exit.Median), rss))
	}
	return lines
}
