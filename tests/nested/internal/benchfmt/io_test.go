package benchfmt

import (
	"math"
	"strings"
	"testing"
	"time"
)

func TestIOResultRoundTrip(t *testing.T) {
	for _, r := range []IOResult{
		{VMM: "gvmm", Run: 1, Test: TestBlkRead, OK: true, Bytes: 64 << 20, Elapsed: 2301 * time.Millisecond},
		{VMM: "qemu", Run: 3, Test: TestNetTx, OK: true, Bytes: 1, Elapsed: 1},
		IOUnmeasured("qemu", 2, TestNetTx, "net-tx: no connection\nfrom the guest why= x"),
	} {
		line := r.String()
		if !strings.HasPrefix(line, IOPrefix) || strings.Contains(line, "\n") {
			t.Errorf("%q: not one prefixed line", line)
		}
		got, err := ParseIO(line)
		if err != nil {
			t.Fatalf("ParseIO(%q): %v", line, err)
		}
		r.Why = strings.ReplaceAll(r.Why, "\n", " ")
		if got != r {
			t.Errorf("ParseIO(%q) = %+v, want %+v", line, got, r)
		}
	}
}

func TestParseIOErrors(t *testing.T) {
	good := "vmm=gvmm run=1 test=blk-read ok=1 bytes=10 ns=20"
	if _, err := ParseIO(good); err != nil {
		t.Fatalf("ParseIO(%q): %v", good, err)
	}
	for _, tc := range []struct{ line, err string }{
		{"vmm=gvmm run=1", "no test="},
		{good + " extra", "not key=value"},
		{good + " color=blue", "unknown field"},
		{good + " ns=2", "ns twice"},
		{strings.Replace(good, "bytes=10", "bytes=1e3", 1), "bytes"},
		{strings.Replace(good, "ok=1", "ok=2", 1), "bad vmm, test, ok or run"},
		{strings.Replace(good, "run=1", "run=0", 1), "bad vmm, test, ok or run"},
		{strings.Replace(good, "test=blk-read", "test=", 1), "bad vmm, test, ok or run"},
		{good + " xwhy=a", "why= must start a field"},
		{"", "no vmm="},
	} {
		if _, err := ParseIO(tc.line); err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("ParseIO(%q): %v, want %q", tc.line, err, tc.err)
		}
	}
	// A boot benchmark line is not an I/O line.
	if _, err := ParseIO(Unmeasured("gvmm", 1, "x").String()); err == nil {
		t.Error("ParseIO accepted a boot result line")
	}
}

func TestSummarizeIOAndTable(t *testing.T) {
	res := func(vmm string, run int, test string, mib int64, d time.Duration) IOResult {
		return IOResult{VMM: vmm, Run: run, Test: test, OK: true, Bytes: mib << 20, Elapsed: d}
	}
	rs := []IOResult{
		res("gvmm", 1, TestBlkWrite, 64, 2*time.Second), // 32 MiB/s
		res("qemu", 1, TestBlkWrite, 64, 1*time.Second), // 64
		res("gvmm", 2, TestBlkWrite, 64, 4*time.Second), // 16
		res("qemu", 2, TestBlkWrite, 64, 2*time.Second), // 32
		res("gvmm", 3, TestBlkWrite, 64, time.Second),   // 64
		IOUnmeasured("qemu", 3, TestBlkWrite, "boot: timed out"),
		res("gvmm", 1, TestNetTx, 10, time.Second),
		res("qemu", 1, TestNetTx, 5, time.Second),
		{VMM: "other", Run: 1, Test: "extra", OK: true, Bytes: 1 << 20, Elapsed: time.Second},
	}
	ss := SummarizeIO(rs, []string{"gvmm", "qemu"})
	var tests []string
	for _, s := range ss {
		tests = append(tests, s.Test+"/"+s.VMM)
	}
	want := "blk-write/gvmm blk-write/qemu blk-write/other blk-read/gvmm blk-read/qemu blk-read/other net-tx/gvmm net-tx/qemu net-tx/other extra/gvmm extra/qemu extra/other"
	if got := strings.Join(tests, " "); got != want {
		t.Fatalf("order:\n%s\nwant\n%s", got, want)
	}
	g, q := ss[0], ss[1]
	if g.Runs != 3 || len(g.Failed) != 0 || g.MiBps != (IOSpread{N: 3, Min: 16, Median: 32, Max: 64}) {
		t.Errorf("gvmm blk-write %+v", g)
	}
	if q.Runs != 3 || len(q.Failed) != 1 || q.MiBps != (IOSpread{N: 2, Min: 32, Median: 48, Max: 64}) {
		t.Errorf("qemu blk-write %+v", q)
	}
	for _, tc := range []struct {
		test   string
		ratio  float64
		exists bool
	}{{TestBlkWrite, 32.0 / 48, true}, {TestNetTx, 2, true}, {TestBlkRead, 0, false}} {
		r, ok := IORatio(ss, tc.test, "gvmm", "qemu")
		if ok != tc.exists || math.Abs(r-tc.ratio) > 1e-9 {
			t.Errorf("IORatio(%s) = %v, %v; want %v, %v", tc.test, r, ok, tc.ratio, tc.exists)
		}
	}
	lines := IOTable(ss, []string{"gvmm", "qemu"}, 3)
	if len(lines) != 5 {
		t.Fatalf("table has %d lines:\n%s", len(lines), strings.Join(lines, "\n"))
	}
	for i, want := range []string{
		"gvmm/qemu",
		"blk-write  3/3      32.0 MiB/s     16.0-64.0        2/3      48.0 MiB/s     32.0-64.0        0.67x",
		"blk-read   0/3      -              -                0/3      -              -                -",
		"net-tx     1/3      10.0 MiB/s     10.0-10.0        1/3      5.0 MiB/s      5.0-5.0          2.00x",
	} {
		if !strings.Contains(lines[i], want) {
			t.Errorf("line %d %q lacks %q", i, lines[i], want)
		}
	}
}

func TestMiBps(t *testing.T) {
	for _, tc := range []struct {
		r    IOResult
		want float64
	}{
		{IOResult{Bytes: 3 << 20, Elapsed: 2 * time.Second}, 1.5},
		{IOUnmeasured("gvmm", 1, TestNetTx, "x"), 0},
		{IOResult{Bytes: 1, Elapsed: 0}, 0},
	} {
		if got := tc.r.MiBps(); got != tc.want {
			t.Errorf("%+v.MiBps() = %v, want %v", tc.r, got, tc.want)
		}
	}
}
