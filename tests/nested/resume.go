package main

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"time"
)

// maxPanicResumes bounds how often a test run goes on in a fresh L1
// after L1's own kernel panicked.
const maxPanicResumes = 5

// resumeAfterPanics goes on with a test run whose L1 kernel panicked, or
// that wedged (no output for -silence), before it finished. Under TCG, L1 sometimes takes a host interrupt in the
// instant after VMRUN returns, with the guest's GS still loaded, and dies
// ("corrupted stack end detected inside scheduler", "Fatal exception in
// interrupt"): a fault of the emulated SVM, not of the tests, and the more
// L2 time a run has the likelier it is. Starting the whole run again
// exposes it to the same odds; instead each fresh L1 runs only the tests
// that had not finished (the one running when L1 died included), so the
// run makes progress, and every resume is said out loud. A test that
// failed on its own is left to retryFailures.
func (h *harness) resumeAfterPanics(ctx context.Context, p *progress, parser *consoleParser, out streamOutcome, pl l1Plan, gp guestParts, gvmmBin string, f l1Flags) (*consoleParser, streamOutcome) {
	for round := 1; round <= maxPanicResumes; round++ {
		wedged := out.silent && !out.timedOut
		why := parser.panic
		if wedged {
			why = fmt.Sprintf("L1 printed nothing for %v: the known wedge of nested SVM under TCG", f.silence)
		}
		if ctx.Err() != nil || parser.done || (!wedged && (l1Problem(out, f) != "" || parser.panic == "")) {
			return parser, out
		}
		var rest []testPkg
		var names []string
		for _, t := range pl.tests {
			r := parser.result(t.pkg)
			if r.ended {
				continue
			}
			all, err := listTests(ctx, t.bin, pl.testRun)
			if err != nil {
				p.say("resume: %v", err)
				return parser, out
			}
			left := remainingTests(all, r)
			if len(left) == 0 {
				continue
			}
			rest = append(rest, t)
			names = append(names, left...)
		}
		if len(rest) == 0 {
			return parser, out
		}
		p.say("RESUME %d of %d: L1 died (%s); a fresh L1 runs what had not finished: %s",
			round, maxPanicResumes, why, strings.Join(names, " "))
		next := pl
		next.tests = rest
		next.testRun = runPattern(names)
		l1, err := h.writeL1(gp, gvmmBin, next, f)
		if err != nil {
			p.say("resume: %v", err)
			return parser, out
		}
		c := l1Config{kernel: gp.deb.vmlinuz(), initrd: l1, memMiB: f.memMiB, cpus: f.cpus}
		again, o := h.bootL1Once(ctx, c, f, newConsoleParser)
		mergeResumed(parser, again, rest)
		out = o
	}
	return parser, out
}

// listTests asks a test binary (run here: they are static linux/amd64)
// which top-level tests match run ("" for all).
func listTests(ctx context.Context, bin, run string) ([]string, error) {
	if run == "" {
		run = "."
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	b, err := exec.CommandContext(ctx, bin, "-test.list", run).Output()
	if err != nil {
		return nil, fmt.Errorf("list the tests of %s: %w", bin, err)
	}
	var names []string
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); strings.HasPrefix(l, "Test") {
			names = append(names, l)
		}
	}
	return names, nil
}

// remainingTests are the tests of all that r did not see finish: neither
// passed, failed nor skipped (the one running when L1 died is among them).
func remainingTests(all []string, r *pkgResult) []string {
	var left []string
	for _, n := range all {
		if !slices.Contains(r.passed, n) && !slices.Contains(r.failed, n) && !slices.Contains(r.skipped, n) {
			left = append(left, n)
		}
	}
	return left
}

// runPattern is a -test.run pattern matching exactly these top-level tests.
func runPattern(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = regexp.QuoteMeta(n)
	}
	return "^(" + strings.Join(q, "|") + ")$"
}

// mergeResumed folds a resumed L1's results for pkgs into parser: what
// finished before the panic stands, what the fresh L1 saw is added, and
// the run's end (DONE, a new panic) is the fresh L1's.
func mergeResumed(parser, again *consoleParser, pkgs []testPkg) {
	for _, t := range pkgs {
		old, r := parser.result(t.pkg), again.result(t.pkg)
		m := &pkgResult{pkg: t.pkg, begun: old.begun || r.begun, ended: r.ended, rc: r.rc,
			passed:      append(slices.Clone(old.passed), r.passed...),
			failed:      append(slices.Clone(old.failed), r.failed...),
			skipped:     append(slices.Clone(old.skipped), r.skipped...),
			tripleFault: map[string]bool{}}
		for k, v := range old.tripleFault {
			m.tripleFault[k] = v
		}
		for k, v := range r.tripleFault {
			m.tripleFault[k] = v
		}
		if m.ended && m.rc == 0 && len(old.failed) > 0 {
			m.rc = 1 // a test failed before the panic
		}
		if _, seen := parser.results[t.pkg]; !seen {
			parser.order = append(parser.order, t.pkg)
		}
		parser.results[t.pkg] = m
	}
	parser.errors = append(parser.errors, again.errors...)
	parser.done, parser.panic = again.done, again.panic
}
