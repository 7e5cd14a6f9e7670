package benchfmt

import (
	"slices"
	"strings"
	"testing"
	"time"
)

func TestResultRoundTrip(t *testing.T) {
	for _, r := range []Result{
		{VMM: "gvmm", Run: 1, OK: true, RC: 0, Up: 812 * time.Millisecond, Exit: 1020 * time.Millisecond,
			MaxRSSKiB: 30112, OverheadKiB: 9123, GuestKiB: 20989},
		{VMM: "qemu-pc", Run: 2, RC: 1, Up: -1, Exit: 3 * time.Second, MaxRSSKiB: 1, OverheadKiB: -1, GuestKiB: -1,
			Why: "exit status 1"},
		Unmeasured("qemu-microvm", 3, "start: fork/exec /x: no such file or directory"),
		Unmeasured("gvmm", 4, "two\nlines why= inside"),
	} {
		line := r.String()
		if !strings.HasPrefix(line, Prefix) || strings.Contains(line, "\n") {
			t.Errorf("%q: not one prefixed line", line)
		}
		got, err := Parse(line)
		if err != nil {
			t.Fatalf("Parse(%q): %v", line, err)
		}
		r.Why = strings.ReplaceAll(r.Why, "\n", " ")
		if got != r {
			t.Errorf("Parse(%q) = %+v, want %+v", line, got, r)
		}
	}
}

func TestParseErrors(t *testing.T) {
	good := "vmm=gvmm run=1 ok=1 rc=0 up_ms=1 exit_ms=2 maxrss_kib=3 overhead_kib=4 guest_kib=5"
	if _, err := Parse(good); err != nil {
		t.Fatalf("Parse(%q): %v", good, err)
	}
	for _, tc := range []struct{ line, err string }{
		{"vmm=gvmm run=1", "no ok="},
		{good + " extra", "not key=value"},
		{good + " color=blue", "unknown field"},
		{good + " run=2", "run twice"},
		{strings.Replace(good, "up_ms=1", "up_ms=1.5", 1), "up_ms"},
		{strings.Replace(good, "ok=1", "ok=2", 1), "bad vmm, ok or run"},
		{strings.Replace(good, "run=1", "run=0", 1), "bad vmm, ok or run"},
		{strings.Replace(good, "vmm=gvmm", "vmm=", 1), "bad vmm, ok or run"},
		{good + " xwhy=a", "why= must start a field"},
		{"", "no vmm="},
	} {
		if _, err := Parse(tc.line); err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("Parse(%q): %v, want %q", tc.line, err, tc.err)
		}
	}
}

func TestParseStats(t *testing.T) {
	for _, tc := range []struct {
		line string
		want Stats
		ok   bool
	}{
		{"gvmm: stats: run_ms=1500 peak_rss_kib=300000 guest_touched_kib=280000 overhead_kib=20000", Stats{1500, 300000, 280000, 20000}, true},
		{"  gvmm: stats: overhead_kib=-5 run_ms=1 peak_rss_kib=2 guest_touched_kib=7 future=9\r", Stats{1, 2, 7, -5}, true},
		{"gvmm: stats: open /proc/self/status: no such file", Stats{}, false},
		{"gvmm: stats: run_ms=1 peak_rss_kib=2 guest_touched_kib=3", Stats{}, false},
		{"gvmm: stats: run_ms=x peak_rss_kib=2 guest_touched_kib=3 overhead_kib=4", Stats{}, false},
		{"guest: gvmm: stats: run_ms=1 peak_rss_kib=2 guest_touched_kib=3 overhead_kib=4", Stats{}, false},
	} {
		got, ok := ParseStats(tc.line)
		if ok != tc.ok || (ok && got != tc.want) {
			t.Errorf("ParseStats(%q) = %+v, %v; want %+v, %v", tc.line, got, ok, tc.want, tc.ok)
		}
	}
}

func TestSpreadOf(t *testing.T) {
	for _, tc := range []struct {
		in   []int64
		want Spread[int64]
	}{
		{nil, Spread[int64]{}},
		{[]int64{7}, Spread[int64]{1, 7, 7, 7}},
		{[]int64{5, 1, 3}, Spread[int64]{3, 1, 3, 5}},
		{[]int64{4, 1, 3, 10}, Spread[int64]{4, 1, 3, 10}}, // (3+4)/2, rounded down
		{[]int64{9, 9, 1, 100, 2}, Spread[int64]{5, 1, 9, 100}},
	} {
		in := slices.Clone(tc.in)
		if got := SpreadOf(tc.in); got != tc.want {
			t.Errorf("SpreadOf(%v) = %+v, want %+v", tc.in, got, tc.want)
		}
		if !slices.Equal(in, tc.in) {
			t.Errorf("SpreadOf reordered its input: %v", tc.in)
		}
	}
	d := SpreadOf([]time.Duration{2 * time.Second, time.Second})
	if d.Median != 1500*time.Millisecond {
		t.Errorf("median of 1s and 2s: %v", d.Median)
	}
}

func TestSummarizeAndTable(t *testing.T) {
	ok := func(vmm string, run int, up time.Duration, rss, over int64) Result {
		return Result{VMM: vmm, Run: run, OK: true, Up: up, Exit: up + time.Second, MaxRSSKiB: rss, OverheadKiB: over, GuestKiB: -1}
	}
	rs := []Result{
		ok("gvmm", 1, 3*time.Second, 300<<10, 10<<10),
		ok("qemu-pc", 1, 9*time.Second, 350<<10, -1),
		ok("gvmm", 2, 1*time.Second, 310<<10, -1), // stats line missing
		ok("gvmm", 3, 2*time.Second, 305<<10, 12<<10),
		Unmeasured("qemu-pc", 2, "killed"),
		ok("other", 1, time.Second, -1, -1),
	}
	ss := Summarize(rs, []string{"gvmm", "qemu-microvm", "qemu-pc"})
	if got := []string{ss[0].VMM, ss[1].VMM, ss[2].VMM, ss[3].VMM}; !slices.Equal(got, []string{"gvmm", "qemu-microvm", "qemu-pc", "other"}) {
		t.Fatalf("order %q", got)
	}
	g := ss[0]
	if g.Runs != 3 || len(g.Failed) != 0 || g.Up != (Spread[time.Duration]{3, time.Second, 2 * time.Second, 3 * time.Second}) {
		t.Errorf("gvmm: %+v", g)
	}
	if g.Overhead != (Spread[int64]{2, 10 << 10, 11 << 10, 12 << 10}) || g.MaxRSS.Median != 305<<10 {
		t.Errorf("gvmm memory: %+v %+v", g.Overhead, g.MaxRSS)
	}
	if ss[1].Runs != 0 || ss[2].Runs != 2 || len(ss[2].Failed) != 1 || ss[2].Up.N != 1 {
		t.Errorf("qemu: %+v %+v", ss[1], ss[2])
	}
	lines := Table(ss, 3)
	want := []string{"vmm ", "gvmm ", "qemu-microvm ", "qemu-pc ", "other "}
	if len(lines) != len(want) {
		t.Fatalf("table:\n%s", strings.Join(lines, "\n"))
	}
	for i, w := range want {
		if !strings.HasPrefix(lines[i], w) {
			t.Errorf("line %d %q, want it to start with %q", i, lines[i], w)
		}
	}
	for i, w := range []string{"3/3", "0/3", "1/3", "1/3"} {
		if !strings.Contains(lines[i+1], " "+w+" ") {
			t.Errorf("line %q lacks %s", lines[i+1], w)
		}
	}
	if !strings.Contains(lines[1], "2.000s     1.000s     3.000s     3.000s       305.0 MiB") {
		t.Errorf("gvmm line %q", lines[1])
	}
	if !strings.Contains(lines[2], "no successful run") {
		t.Errorf("qemu-microvm line %q", lines[2])
	}
}
