package main

import (
	"regexp"
	"slices"
	"strings"
	"testing"
)

// feed gives a parser the lines of out.
func feed(out string) *consoleParser {
	p := newConsoleParser()
	for _, l := range strings.Split(out, "\n") {
		p.Line(l)
	}
	return p
}

// TestResumeAfterPanic: after L1 died in the middle of a package, the
// fresh L1 runs exactly the tests that had not finished, and the merged
// result keeps what finished before (a pass, a failure) and adds the rest.
func TestResumeAfterPanic(t *testing.T) {
	const pkg = "./tests/integration"
	first := feed(markerBegin + pkg + `
=== RUN   TestA
--- PASS: TestA (1.00s)
=== RUN   TestB
--- FAIL: TestB (2.00s)
=== RUN   TestC
[  227.8] Kernel panic - not syncing: Fatal exception in interrupt`)
	if first.done || first.panic == "" {
		t.Fatalf("parser: done %v, panic %q", first.done, first.panic)
	}
	left := remainingTests([]string{"TestA", "TestB", "TestC", "TestD"}, first.result(pkg))
	if !slices.Equal(left, []string{"TestC", "TestD"}) {
		t.Fatalf("remaining %v, want [TestC TestD]", left)
	}
	pat := runPattern(left)
	re := regexp.MustCompile(pat)
	for name, want := range map[string]bool{"TestC": true, "TestD": true, "TestA": false, "TestCX": false, "TestC/sub": false} {
		if re.MatchString(name) != want {
			t.Errorf("%s matches %s: %v, want %v", pat, name, !want, want)
		}
	}

	again := feed(markerBegin + pkg + `
=== RUN   TestC
--- PASS: TestC (3.00s)
=== RUN   TestD
--- PASS: TestD (1.00s)
PASS
` + markerEnd + pkg + " rc=0\n" + markerDone)
	mergeResumed(first, again, []testPkg{{pkg: pkg}})
	r := first.result(pkg)
	if !first.done || first.panic != "" {
		t.Fatalf("merged run: done %v, panic %q", first.done, first.panic)
	}
	if !slices.Equal(r.passed, []string{"TestA", "TestC", "TestD"}) || !slices.Equal(r.failed, []string{"TestB"}) {
		t.Fatalf("merged passed %v failed %v", r.passed, r.failed)
	}
	// TestB failed before the panic: the package fails, and TestB is
	// what retryFailures reruns.
	if ok, why := r.verdict(); ok {
		t.Fatalf("merged verdict ok (%s) although TestB failed", why)
	}
	if got := r.retryable(); got != "^(TestB)$" {
		t.Fatalf("retryable %q, want ^(TestB)$", got)
	}
}
