package benchfmt

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// IOPrefix starts every I/O result line (tests/nested/iobench), one per
// measured transfer:
//
//	=== GVMM-NESTED IOBENCH RESULT vmm=gvmm run=1 test=blk-read ok=1 bytes=67108864 ns=2301000000
//	=== GVMM-NESTED IOBENCH RESULT vmm=qemu run=2 test=net-tx ok=0 bytes=-1 ns=-1 why=no connection from the guest
//
// Like Prefix it begins with the harness's marker prefix. Figures that
// were not measured are -1; why=, when present, comes last.
const IOPrefix = "=== GVMM-NESTED IOBENCH RESULT "

// The I/O tests, in the order they are run and reported.
const (
	TestBlkWrite = "blk-write" // guest O_DIRECT sequential write to virtio-blk, then fdatasync
	TestBlkRead  = "blk-read"  // guest O_DIRECT sequential read from virtio-blk
	TestNetTx    = "net-tx"    // guest-to-host TCP over virtio-net and a TAP
)

// IOTests are the I/O tests in report order.
var IOTests = []string{TestBlkWrite, TestBlkRead, TestNetTx}

// IOResult is one measured transfer.
type IOResult struct {
	VMM  string // "gvmm" or "qemu"
	Run  int    // 1-based: which boot of this VMM
	Test string // one of IOTests
	OK   bool
	// Bytes moved and the time they took; -1 when not measured.
	Bytes   int64
	Elapsed time.Duration
	Why     string // why it failed; "" when OK
}

// IOUnmeasured returns a failed IOResult with no figures.
func IOUnmeasured(vmm string, run int, test, why string) IOResult {
	return IOResult{VMM: vmm, Run: run, Test: test, Bytes: -1, Elapsed: -1, Why: why}
}

// MiBps is the throughput in MiB/s; 0 if r measured nothing.
func (r IOResult) MiBps() float64 {
	if r.Bytes <= 0 || r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Bytes) / (1 << 20) / r.Elapsed.Seconds()
}

// String formats r as a result line, IOPrefix included.
func (r IOResult) String() string {
	var b strings.Builder
	b.WriteString(IOPrefix)
	ns := int64(-1)
	if r.Elapsed >= 0 {
		ns = r.Elapsed.Nanoseconds()
	}
	fmt.Fprintf(&b, "vmm=%s run=%d test=%s ok=%d bytes=%d ns=%d", r.VMM, r.Run, r.Test, b2i(r.OK), r.Bytes, ns)
	if r.Why != "" {
		b.WriteString(" why=" + strings.ReplaceAll(r.Why, "\n", " "))
	}
	return b.String()
}

// ParseIO reads an I/O result line (with or without IOPrefix). Every
// field but why= is required.
func ParseIO(line string) (IOResult, error) {
	s := strings.TrimSpace(line)
	s = strings.TrimSpace(strings.TrimPrefix(s, strings.TrimSpace(IOPrefix)))
	r := IOResult{}
	if head, why, ok := strings.Cut(s, "why="); ok {
		if head != "" && !strings.HasSuffix(head, " ") {
			return r, fmt.Errorf("iobench result %q: why= must start a field", line)
		}
		s, r.Why = head, strings.TrimSpace(why)
	}
	var run, ok, ns int64
	ints := map[string]*int64{"run": &run, "ok": &ok, "bytes": &r.Bytes, "ns": &ns}
	strs := map[string]*string{"vmm": &r.VMM, "test": &r.Test}
	seen := map[string]bool{}
	for _, f := range strings.Fields(s) {
		k, v, found := strings.Cut(f, "=")
		if !found {
			return r, fmt.Errorf("iobench result %q: field %q is not key=value", line, f)
		}
		if seen[k] {
			return r, fmt.Errorf("iobench result %q: %s twice", line, k)
		}
		seen[k] = true
		if p := strs[k]; p != nil {
			*p = v
			continue
		}
		p := ints[k]
		if p == nil {
			return r, fmt.Errorf("iobench result %q: unknown field %q", line, k)
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return r, fmt.Errorf("iobench result %q: %s: %w", line, k, err)
		}
		*p = n
	}
	for _, k := range []string{"vmm", "run", "test", "ok", "bytes", "ns"} {
		if !seen[k] {
			return r, fmt.Errorf("iobench result %q: no %s=", line, k)
		}
	}
	if r.VMM == "" || r.Test == "" || ok < 0 || ok > 1 || run < 1 {
		return r, fmt.Errorf("iobench result %q: bad vmm, test, ok or run", line)
	}
	r.Run, r.OK, r.Elapsed = int(run), ok == 1, time.Duration(ns)
	if ns < 0 {
		r.Elapsed = -1
	}
	return r, nil
}

// IOSpread is the minimum, median and maximum throughput, in MiB/s, of
// some transfers.
type IOSpread struct {
	N                int
	Min, Median, Max float64
}

// IOSpreadOf computes the spread of vs (MiB/s); N is 0 if vs is empty.
// The median of an even count is the mean of the middle two.
func IOSpreadOf(vs []float64) IOSpread {
	if len(vs) == 0 {
		return IOSpread{}
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + m) / 2
	}
	return IOSpread{N: len(s), Min: s[0], Median: m, Max: s[len(s)-1]}
}

// IOSummary is what one VMM's results of one test come to.
type IOSummary struct {
	VMM, Test string
	Runs      int        // results seen
	Failed    []IOResult // of them, the ones not OK
	MiBps     IOSpread   // over the OK ones
}

// SummarizeIO groups rs by test (in IOTests order, then any others) and,
// within a test, by VMM in the order of vmms (then any others).
func SummarizeIO(rs []IOResult, vmms []string) []IOSummary {
	tests := slices.Clone(IOTests)
	order := slices.Clone(vmms)
	for _, r := range rs {
		if !slices.Contains(tests, r.Test) {
			tests = append(tests, r.Test)
		}
		if !slices.Contains(order, r.VMM) {
			order = append(order, r.VMM)
		}
	}
	var out []IOSummary
	for _, t := range tests {
		for _, v := range order {
			s := IOSummary{VMM: v, Test: t}
			var tp []float64
			for _, r := range rs {
				if r.VMM != v || r.Test != t {
					continue
				}
				s.Runs++
				if !r.OK {
					s.Failed = append(s.Failed, r)
					continue
				}
				tp = append(tp, r.MiBps())
			}
			s.MiBps = IOSpreadOf(tp)
			out = append(out, s)
		}
	}
	return out
}

// Rate formats a throughput in MiB/s.
func Rate(mibps float64) string { return fmt.Sprintf("%.1f MiB/s", mibps) }

// IOTable formats summaries side by side, one line per test: for each VMM
// in vmms (at most two are compared; the ratio is the first over the
// second) its successful runs out of want, the median throughput and the
// min-max range, then the ratio of the medians.
func IOTable(ss []IOSummary, vmms []string, want int) []string {
	by := map[[2]string]IOSummary{}
	var tests []string
	for _, s := range ss {
		by[[2]string{s.Test, s.VMM}] = s
		if !slices.Contains(tests, s.Test) {
			tests = append(tests, s.Test)
		}
	}
	head := fmt.Sprintf("%-10s", "test")
	for _, v := range vmms {
		head += fmt.Sprintf(" %-8s %-14s %-16s", v+" ok", v+" median", v+" min-max")
	}
	if len(vmms) == 2 {
		head += fmt.Sprintf(" %s/%s", vmms[0], vmms[1])
	}
	lines := []string{strings.TrimRight(head, " ")}
	for _, t := range tests {
		l := fmt.Sprintf("%-10s", t)
		for _, v := range vmms {
			s := by[[2]string{t, v}]
			ok := fmt.Sprintf("%d/%d", s.Runs-len(s.Failed), max(want, s.Runs))
			if s.MiBps.N == 0 {
				l += fmt.Sprintf(" %-8s %-14s %-16s", ok, "-", "-")
				continue
			}
			l += fmt.Sprintf(" %-8s %-14s %-16s", ok, Rate(s.MiBps.Median),
				fmt.Sprintf("%.1f-%.1f", s.MiBps.Min, s.MiBps.Max))
		}
		if len(vmms) == 2 {
			if r, ok := IORatio(ss, t, vmms[0], vmms[1]); ok {
				l += fmt.Sprintf(" %.2fx", r)
			} else {
				l += " -"
			}
		}
		lines = append(lines, strings.TrimRight(l, " "))
	}
	return lines
}

// IORatio is a's median throughput over b's in test; ok is false when
// either has no successful run.
func IORatio(ss []IOSummary, test, a, b string) (ratio float64, ok bool) {
	var sa, sb IOSummary
	for _, s := range ss {
		if s.Test != test {
			continue
		}
		switch s.VMM {
		case a:
			sa = s
		case b:
			sb = s
		}
	}
	if sa.MiBps.N == 0 || sb.MiBps.N == 0 || sb.MiBps.Median == 0 {
		return 0, false
	}
	return sa.MiBps.Median / sb.MiBps.Median, true
}
