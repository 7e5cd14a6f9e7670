package benchfmt

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// MigPrefix starts every migration result line (tests/nested/migbench),
// one per migration:
//
//	=== GVMM-NESTED MIGBENCH RESULT vmm=gvmm run=1 ok=1 total_ms=812.0 downtime_ms=9.1 gap_ms=31 clock_gap_ms=20 wire_bytes=83886080
//	=== GVMM-NESTED MIGBENCH RESULT vmm=qemu run=2 ok=0 total_ms=-1 downtime_ms=-1 gap_ms=-1 clock_gap_ms=-1 wire_bytes=-1 why=boot: timed out
//
// total_ms and downtime_ms are what the VMM itself reports; gap_ms is the
// longest gap between the guest's heartbeat lines as they reached the
// benchmark (the downtime the guest's console saw, the same measurement
// for every VMM), clock_gap_ms how far the guest's own monotonic clock
// moved across that gap. Figures not measured are -1; why=, when present,
// comes last.
const MigPrefix = "=== GVMM-NESTED MIGBENCH RESULT "

// MigResult is one measured migration.
type MigResult struct {
	VMM                 string
	Run                 int
	OK                  bool
	TotalMs, DowntimeMs float64 // as the VMM reports them
	GapMs, ClockGapMs   float64 // heartbeat gap on arrival, guest clock across it
	WireBytes           int64   // bytes the VMM says it sent
	Why                 string
}

// MigUnmeasured returns a failed MigResult with no figures.
func MigUnmeasured(vmm string, run int, why string) MigResult {
	return MigResult{VMM: vmm, Run: run, TotalMs: -1, DowntimeMs: -1, GapMs: -1, ClockGapMs: -1, WireBytes: -1, Why: why}
}

// String formats r as a result line, MigPrefix included.
func (r MigResult) String() string {
	var b strings.Builder
	b.WriteString(MigPrefix)
	fmt.Fprintf(&b, "vmm=%s run=%d ok=%d total_ms=%.1f downtime_ms=%.1f gap_ms=%.1f clock_gap_ms=%.1f wire_bytes=%d",
		r.VMM, r.Run, b2i(r.OK), r.TotalMs, r.DowntimeMs, r.GapMs, r.ClockGapMs, r.WireBytes)
	if r.Why != "" {
		b.WriteString(" why=" + strings.ReplaceAll(r.Why, "\n", " "))
	}
	return b.String()
}

// ParseMig reads a migration result line (with or without MigPrefix).
// Every field but why= is required.
func ParseMig(line string) (MigResult, error) {
	s := strings.TrimSpace(line)
	s = strings.TrimSpace(strings.TrimPrefix(s, strings.TrimSpace(MigPrefix)))
	r := MigResult{}
	if head, why, ok := strings.Cut(s, "why="); ok {
		if head != "" && !strings.HasSuffix(head, " ") {
			return r, fmt.Errorf("migbench result %q: why= must start a field", line)
		}
		s, r.Why = head, strings.TrimSpace(why)
	}
	var run, ok float64
	floats := map[string]*float64{"run": &run, "ok": &ok, "total_ms": &r.TotalMs, "downtime_ms": &r.DowntimeMs,
		"gap_ms": &r.GapMs, "clock_gap_ms": &r.ClockGapMs}
	seen := map[string]bool{}
	for _, f := range strings.Fields(s) {
		k, v, found := strings.Cut(f, "=")
		if !found {
			return r, fmt.Errorf("migbench result %q: field %q is not key=value", line, f)
		}
		if seen[k] {
			return r, fmt.Errorf("migbench result %q: %s twice", line, k)
		}
		seen[k] = true
		switch k {
		case "vmm":
			r.VMM = v
			continue
		case "wire_bytes":
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return r, fmt.Errorf("migbench result %q: %s: %w", line, k, err)
			}
			r.WireBytes = n
			continue
		}
		p := floats[k]
		if p == nil {
			return r, fmt.Errorf("migbench result %q: unknown field %q", line, k)
		}
		n, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return r, fmt.Errorf("migbench result %q: %s: %w", line, k, err)
		}
		*p = n
	}
	for _, k := range []string{"vmm", "run", "ok", "total_ms", "downtime_ms", "gap_ms", "clock_gap_ms", "wire_bytes"} {
		if !seen[k] {
			return r, fmt.Errorf("migbench result %q: no %s=", line, k)
		}
	}
	if r.VMM == "" || (ok != 0 && ok != 1) || run < 1 || run != float64(int(run)) {
		return r, fmt.Errorf("migbench result %q: bad vmm, ok or run", line)
	}
	r.Run, r.OK = int(run), ok == 1
	return r, nil
}

// MigSummary is what one VMM's migrations come to: medians (with min and
// max) over the successful ones.
type MigSummary struct {
	VMM                       string
	Runs                      int
	Failed                    []MigResult
	Total, Downtime, Gap, Clk IOSpread // ms
	Wire                      IOSpread // MiB
}

// SummarizeMig groups rs by VMM, in the order of vmms (then any others).
func SummarizeMig(rs []MigResult, vmms []string) []MigSummary {
	order := slices.Clone(vmms)
	for _, r := range rs {
		if !slices.Contains(order, r.VMM) {
			order = append(order, r.VMM)
		}
	}
	var out []MigSummary
	for _, v := range order {
		s := MigSummary{VMM: v}
		var tot, dt, gap, clk, wire []float64
		for _, r := range rs {
			if r.VMM != v {
				continue
			}
			s.Runs++
			if !r.OK {
				s.Failed = append(s.Failed, r)
				continue
			}
			// A figure a VMM did not report (-1) is left out of its
			// row, not counted as a measurement.
			for _, f := range []struct {
				to *[]float64
				v  float64
			}{{&tot, r.TotalMs}, {&dt, r.DowntimeMs}, {&gap, r.GapMs}, {&clk, r.ClockGapMs}, {&wire, float64(r.WireBytes) / (1 << 20)}} {
				if f.v >= 0 {
					*f.to = append(*f.to, f.v)
				}
			}
		}
		s.Total, s.Downtime, s.Gap, s.Clk, s.Wire = IOSpreadOf(tot), IOSpreadOf(dt), IOSpreadOf(gap), IOSpreadOf(clk), IOSpreadOf(wire)
		out = append(out, s)
	}
	return out
}

// MigTable formats summaries side by side: one line per figure, one
// column per VMM with the median and the min-max range.
func MigTable(ss []MigSummary, want int) []string {
	cell := func(s IOSpread, unit string) string {
		if s.N == 0 {
			return "-"
		}
		return fmt.Sprintf("%.1f%s (%.1f-%.1f)", s.Median, unit, s.Min, s.Max)
	}
	rows := []struct {
		name string
		get  func(MigSummary) IOSpread
		unit string
	}{
		{"total time, as the VMM reports it", func(s MigSummary) IOSpread { return s.Total }, " ms"},
		{"downtime, as the VMM reports it", func(s MigSummary) IOSpread { return s.Downtime }, " ms"},
		{"downtime seen by the guest (longest heartbeat gap)", func(s MigSummary) IOSpread { return s.Gap }, " ms"},
		{"guest clock across that gap", func(s MigSummary) IOSpread { return s.Clk }, " ms"},
		{"bytes on the wire", func(s MigSummary) IOSpread { return s.Wire }, " MiB"},
	}
	head := fmt.Sprintf("%-52s", "median (min-max)")
	for _, s := range ss {
		head += fmt.Sprintf(" | %-28s", fmt.Sprintf("%s, %d/%d ok", s.VMM, s.Runs-len(s.Failed), want))
	}
	out := []string{head}
	for _, r := range rows {
		l := fmt.Sprintf("%-52s", r.name)
		for _, s := range ss {
			l += fmt.Sprintf(" | %-28s", cell(r.get(s), r.unit))
		}
		out = append(out, l)
	}
	return out
}
