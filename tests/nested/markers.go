package main

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/gvmm/gvmm/tests/nested/internal/benchfmt"
)

// Marker lines that L1's /init (l1init.sh) prints on the serial console.
const (
	markerPrefix = "=== GVMM-NESTED "
	markerUp     = markerPrefix + "L1 UP"     // userspace in L1 started
	markerKVM    = markerPrefix + "KVM READY" // /dev/kvm is there
	markerBegin  = markerPrefix + "BEGIN "    // + package
	markerEnd    = markerPrefix + "END "      // + package + " rc=N"
	markerError  = markerPrefix + "ERROR "    // + what went wrong in L1
	markerDemo   = markerPrefix + "DEMO rc="  // + gvmm run's exit status
	markerDone   = markerPrefix + "DONE"      // L1 is about to power off

	markerBenchResult = benchfmt.Prefix                 // + one boot's figures (bootbench)
	markerBenchDone   = markerPrefix + "BENCH DONE rc=" // + bootbench's exit status

	markerIOResult = benchfmt.IOPrefix                 // + one transfer's figures (iobench)
	markerIODone   = markerPrefix + "IOBENCH DONE rc=" // + iobench's exit status

	markerMigResult = benchfmt.MigPrefix                 // + one migration's figures (migbench)
	markerMigDone   = markerPrefix + "MIGBENCH DONE rc=" // + migbench's exit status
)

// guestUp is the first line the guest's /init prints (tests/guest/init).
const guestUp = benchfmt.GuestUp

// pkgResult is what the console said about one test package.
type pkgResult struct {
	pkg     string
	begun   bool     // BEGIN seen
	ended   bool     // END seen; rc is valid only then
	rc      int      // exit status of the test binary
	skipped []string // tests that printed "--- SKIP: name"
	failed  []string // tests that printed "--- FAIL: name"
	passed  []string // tests that printed "--- PASS: name"
	// running is the top-level test whose output is going by.
	running string
	// tripleFault holds the top-level tests in whose output gvmm reported
	// a guest triple fault, or the test saw the guest stall: the known,
	// rare instabilities of L2 guests under nested KVM on TCG (see
	// retryTripleFaults).
	tripleFault map[string]bool
}

// tripleFaultSignature is what gvmm prints when a guest triple-faults.
const tripleFaultSignature = "triple fault (KVM_EXIT_SHUTDOWN) without a reset request"

// stallSignature is what the integration tests print when a guest stopped
// making progress on its console (tests/integration, vm.waitFor).
const stallSignature = "console did not show "

// verdict says whether the package passed and, if not, why.
func (r *pkgResult) verdict() (ok bool, why string) {
	switch {
	case !r.begun:
		return false, "never started (no BEGIN marker)"
	case !r.ended:
		return false, "did not finish (no END marker)"
	case r.rc != 0 && len(r.failed) > 0:
		return false, fmt.Sprintf("rc=%d, failed: %s", r.rc, strings.Join(r.failed, ", "))
	case r.rc != 0:
		return false, fmt.Sprintf("rc=%d", r.rc)
	case len(r.skipped) > 0:
		return false, "skipped under KVM: " + strings.Join(r.skipped, ", ")
	}
	return true, "ok"
}

// consoleParser follows L1's console output (or a direct run's output,
// framed the same way) line by line. It is not safe for concurrent use.
type consoleParser struct {
	results map[string]*pkgResult
	order   []string   // packages in the order BEGIN markers arrived
	cur     *pkgResult // package between BEGIN and END, or nil
	errors  []string   // ERROR markers, and BEGIN/END that did not pair up
	up      bool       // L1 UP seen
	kvm     bool       // KVM READY seen
	done    bool       // DONE seen
	demoRC  int        // valid when demoRan
	demoRan bool       // DEMO rc= seen
	panic   string     // first "Kernel panic" line
	lines   map[string]bool
	bench   []benchfmt.Result // BENCH RESULT lines, in order
	benchRC int               // valid when benchRan
	// benchRan is set by BENCH DONE: bootbench ended with status benchRC.
	benchRan bool
	io       []benchfmt.IOResult // IOBENCH RESULT lines, in order
	ioRC     int                 // valid when ioRan
	// ioRan is set by IOBENCH DONE: iobench ended with status ioRC.
	ioRan bool
	mig   []benchfmt.MigResult // MIGBENCH RESULT lines
	migRC int                  // valid when migRan
	// migRan is set by MIGBENCH DONE: migbench ended with status migRC.
	migRan bool
}

func newConsoleParser() *consoleParser {
	return &consoleParser{results: map[string]*pkgResult{}, lines: map[string]bool{}}
}

// watchFor makes sawLine report whether a line equal to s (after trimming
// spaces) went by, e.g. the guest's "gvmm-guest: userspace up".
func (p *consoleParser) watchFor(s string) { p.lines[s] = false }

// sawLine reports whether a line given to watchFor was seen.
func (p *consoleParser) sawLine(s string) bool { return p.lines[s] }

// Line takes one line of output, without its newline.
func (p *consoleParser) Line(line string) {
	line = strings.TrimRight(line, "\r")
	t := strings.TrimSpace(line)
	if _, ok := p.lines[t]; ok {
		p.lines[t] = true
	}
	// Kernel messages can land in front of a marker on the same line, so
	// markers are found anywhere in the line, not only at its start.
	if i := strings.Index(t, markerPrefix); i >= 0 {
		p.marker(t[i:])
		return
	}
	if p.panic == "" && strings.Contains(t, "Kernel panic") {
		p.panic = t
	}
	if p.cur == nil {
		return
	}
	if rest, ok := strings.CutPrefix(t, "=== RUN "); ok {
		p.cur.running, _, _ = strings.Cut(strings.TrimSpace(rest), "/")
	}
	if (strings.Contains(t, tripleFaultSignature) || strings.Contains(t, stallSignature)) && p.cur.running != "" {
		if p.cur.tripleFault == nil {
			p.cur.tripleFault = map[string]bool{}
		}
		p.cur.tripleFault[p.cur.running] = true
	}
	// go test -v prints "--- SKIP: TestX (0.00s)", indented for subtests.
	for _, kind := range []struct {
		prefix string
		list   *[]string
	}{{"--- SKIP: ", &p.cur.skipped}, {"--- FAIL: ", &p.cur.failed}, {"--- PASS: ", &p.cur.passed}} {
		if rest, ok := strings.CutPrefix(t, kind.prefix); ok {
			name, _, _ := strings.Cut(rest, " ")
			*kind.list = append(*kind.list, name)
		}
	}
}

func (p *consoleParser) marker(m string) {
	switch {
	case m == markerUp:
		p.up = true
	case m == markerKVM:
		p.kvm = true
	case m == markerDone:
		p.done = true
	case strings.HasPrefix(m, markerError):
		p.errors = append(p.errors, strings.TrimPrefix(m, markerError))
	case strings.HasPrefix(m, markerDemo):
		rc, err := strconv.Atoi(strings.TrimPrefix(m, markerDemo))
		if err != nil {
			p.errors = append(p.errors, "unreadable marker: "+m)
			return
		}
		p.demoRC, p.demoRan = rc, true
	case strings.HasPrefix(m, markerBenchResult):
		r, err := benchfmt.Parse(m)
		if err != nil {
			p.errors = append(p.errors, "unreadable marker: "+m)
			return
		}
		p.bench = append(p.bench, r)
	case strings.HasPrefix(m, markerBenchDone):
		rc, err := strconv.Atoi(strings.TrimPrefix(m, markerBenchDone))
		if err != nil {
			p.errors = append(p.errors, "unreadable marker: "+m)
			return
		}
		p.benchRC, p.benchRan = rc, true
	case strings.HasPrefix(m, markerMigResult):
		r, err := benchfmt.ParseMig(m)
		if err != nil {
			p.errors = append(p.errors, "unreadable marker: "+m)
			return
		}
		p.mig = append(p.mig, r)
	case strings.HasPrefix(m, markerMigDone):
		rc, err := strconv.Atoi(strings.TrimPrefix(m, markerMigDone))
		if err != nil {
			p.errors = append(p.errors, "unreadable marker: "+m)
			return
		}
		p.migRC, p.migRan = rc, true
	case strings.HasPrefix(m, markerIOResult):
		r, err := benchfmt.ParseIO(m)
		if err != nil {
			p.errors = append(p.errors, "unreadable marker: "+m)
			return
		}
		p.io = append(p.io, r)
	case strings.HasPrefix(m, markerIODone):
		rc, err := strconv.Atoi(strings.TrimPrefix(m, markerIODone))
		if err != nil {
			p.errors = append(p.errors, "unreadable marker: "+m)
			return
		}
		p.ioRC, p.ioRan = rc, true
	case strings.HasPrefix(m, markerBegin):
		pkg := strings.TrimPrefix(m, markerBegin)
		if p.cur != nil {
			p.errors = append(p.errors, fmt.Sprintf("BEGIN %s while %s had not ended", pkg, p.cur.pkg))
		}
		r := p.results[pkg]
		if r == nil {
			r = &pkgResult{pkg: pkg}
			p.results[pkg] = r
			p.order = append(p.order, pkg)
		}
		r.begun = true
		p.cur = r
	case strings.HasPrefix(m, markerEnd):
		rest := strings.TrimPrefix(m, markerEnd)
		i := strings.LastIndex(rest, " rc=")
		if i < 0 {
			p.errors = append(p.errors, "unreadable marker: "+m)
			return
		}
		pkg := rest[:i]
		rc, err := strconv.Atoi(rest[i+len(" rc="):])
		if err != nil {
			p.errors = append(p.errors, "unreadable marker: "+m)
			return
		}
		if p.cur == nil || p.cur.pkg != pkg {
			p.errors = append(p.errors, fmt.Sprintf("END %s without its BEGIN", pkg))
			return
		}
		p.cur.ended, p.cur.rc = true, rc
		p.cur = nil
	case strings.HasPrefix(m, benchfmt.ProfileBegin), strings.HasPrefix(m, benchfmt.ProfileEnd):
		// A CPU profile (bench -io-cpuprofile, -mig-cpuprofile), relayed
		// with the console for a person to decode.
	default:
		p.errors = append(p.errors, "unknown marker: "+m)
	}
}

// result returns what was seen of pkg (an empty result if nothing).
func (p *consoleParser) result(pkg string) *pkgResult {
	if r := p.results[pkg]; r != nil {
		return r
	}
	return &pkgResult{pkg: pkg}
}

// summarize turns what p saw into one line per package in pkgs, plus lines
// for problems outside any package, and counts passes and failures (each
// such problem counts as one failure).
func summarize(p *consoleParser, pkgs []string) (lines []string, passed, failed int) {
	for _, pkg := range pkgs {
		ok, why := p.result(pkg).verdict()
		if ok {
			passed++
			lines = append(lines, "PASS "+pkg)
			continue
		}
		failed++
		lines = append(lines, fmt.Sprintf("FAIL %s: %s", pkg, why))
	}
	for _, e := range p.errors {
		failed++
		lines = append(lines, "FAIL "+e)
	}
	if !p.done {
		failed++
		why := "run did not finish (no DONE marker)"
		if p.panic != "" {
			why += "; " + p.panic
		}
		lines = append(lines, "FAIL "+why)
	}
	return lines, passed, failed
}

// retryable returns the -test.run pattern that reruns a finished
// package's failed top-level tests, or "" when nothing can be rerun (it
// passed, did not finish, or skipped under KVM). Every failure gets one
// rerun in a fresh L1: see retryFailures for why.
func (r *pkgResult) retryable() string {
	if !r.ended || r.rc == 0 || len(r.failed) == 0 || len(r.skipped) > 0 {
		return ""
	}
	var top []string
	for _, name := range r.failed {
		if !strings.Contains(name, "/") {
			top = append(top, regexp.QuoteMeta(name))
		}
	}
	if len(top) == 0 {
		return ""
	}
	return "^(" + strings.Join(top, "|") + ")$"
}

// instability says whether a failed test's own output showed one of the
// known nested-KVM failures (a guest triple fault or stall), for the log.
func (r *pkgResult) instability(test string) bool { return r.tripleFault[test] }

// allUnstable says whether the run failed and every top-level test that
// failed showed a known nested-KVM instability.
func (r *pkgResult) allUnstable() bool {
	top := 0
	for _, name := range r.failed {
		if strings.Contains(name, "/") || strings.HasPrefix(name, "(") {
			continue
		}
		top++
		if !r.tripleFault[name] {
			return false
		}
	}
	return top > 0
}
