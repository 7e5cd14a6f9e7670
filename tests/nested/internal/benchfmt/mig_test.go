package benchfmt

import (
	"strings"
	"testing"
)

func TestMigRoundTrip(t *testing.T) {
	for _, r := range []MigResult{
		{VMM: "gvmm", Run: 1, OK: true, TotalMs: 812.5, DowntimeMs: 9.1, GapMs: 31, ClockGapMs: 20, WireBytes: 83886080},
		MigUnmeasured("qemu", 2, "boot: timed out"),
	} {
		got, err := ParseMig(r.String())
		if err != nil {
			t.Fatalf("ParseMig(%q): %v", r.String(), err)
		}
		if got != r {
			t.Errorf("round trip: got %+v, want %+v", got, r)
		}
	}
}

func TestParseMigRefuses(t *testing.T) {
	for _, line := range []string{
		"vmm=gvmm run=1 ok=1", // fields missing
		"vmm=gvmm run=0 ok=1 total_ms=1 downtime_ms=1 gap_ms=1 clock_gap_ms=1 wire_bytes=1",       // run < 1
		"vmm=gvmm run=1 ok=2 total_ms=1 downtime_ms=1 gap_ms=1 clock_gap_ms=1 wire_bytes=1",       // bad ok
		"vmm=gvmm run=1 ok=1 total_ms=x downtime_ms=1 gap_ms=1 clock_gap_ms=1 wire_bytes=1",       // not a number
		"vmm=gvmm run=1 ok=1 total_ms=1 downtime_ms=1 gap_ms=1 clock_gap_ms=1 wire_bytes=1 wat=1", // unknown field
		"vmm=gvmm run=1 run=1 ok=1 total_ms=1 downtime_ms=1 gap_ms=1 clock_gap_ms=1 wire_bytes=1", // twice
		"vmm=gvmm run=1.5 ok=1 total_ms=1 downtime_ms=1 gap_ms=1 clock_gap_ms=1 wire_bytes=1",     // fractional run
	} {
		if _, err := ParseMig(line); err == nil {
			t.Errorf("ParseMig(%q) accepted it", line)
		}
	}
}

func TestMigTable(t *testing.T) {
	rs := []MigResult{
		{VMM: "gvmm", Run: 1, OK: true, TotalMs: 100, DowntimeMs: 10, GapMs: 30, ClockGapMs: 20, WireBytes: 1 << 20},
		{VMM: "gvmm", Run: 2, OK: true, TotalMs: 300, DowntimeMs: 30, GapMs: 50, ClockGapMs: 20, WireBytes: 3 << 20},
		{VMM: "gvmm", Run: 3, OK: true, TotalMs: 200, DowntimeMs: 20, GapMs: 40, ClockGapMs: 20, WireBytes: 2 << 20},
		MigUnmeasured("qemu", 1, "no"),
	}
	ss := SummarizeMig(rs, []string{"gvmm", "qemu"})
	if len(ss) != 2 || ss[0].Total.Median != 200 || ss[0].Downtime.Median != 20 || ss[0].Wire.Median != 2 || len(ss[1].Failed) != 1 {
		t.Fatalf("summaries: %+v", ss)
	}
	tab := strings.Join(MigTable(ss, 3), "\n")
	for _, want := range []string{"gvmm, 3/3 ok", "qemu, 0/3 ok", "200.0 ms (100.0-300.0)"} {
		if !strings.Contains(tab, want) {
			t.Errorf("table lacks %q:\n%s", want, tab)
		}
	}
}

// TestMigSummaryLeavesOutUnreported checks that a figure a VMM did not
// report (-1, as QEMU's times when it answers "completed" without them)
// stays out of its row while the run's other figures count.
func TestMigSummaryLeavesOutUnreported(t *testing.T) {
	rs := []MigResult{
		{VMM: "qemu", Run: 1, OK: true, TotalMs: 3000, DowntimeMs: 100, GapMs: 400, ClockGapMs: 300, WireBytes: 1 << 20},
		{VMM: "qemu", Run: 2, OK: true, TotalMs: -1, DowntimeMs: -1, GapMs: 300, ClockGapMs: 200, WireBytes: 1 << 20},
	}
	s := SummarizeMig(rs, []string{"qemu"})[0]
	if s.Total.N != 1 || s.Total.Median != 3000 || s.Downtime.N != 1 || s.Downtime.Median != 100 {
		t.Errorf("total %+v, downtime %+v: want the one reported run only", s.Total, s.Downtime)
	}
	if s.Gap.N != 2 || s.Gap.Median != 350 {
		t.Errorf("gap %+v: want both runs", s.Gap)
	}
}
