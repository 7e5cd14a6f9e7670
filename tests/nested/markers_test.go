package main

import (
	"io"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestConsoleParser(t *testing.T) {
	const done = "=== GVMM-NESTED DONE\n"
	tests := []struct {
		name    string
		pkgs    []string
		console string
		want    []string // summary lines
		passed  int
		failed  int
	}{{
		name: "all pass",
		pkgs: []string{"./kvm", "./vmm"},
		console: "[    0.000000] Linux version 6.1.0\r\n" +
			"=== GVMM-NESTED L1 UP\r\n=== GVMM-NESTED KVM READY\r\n" +
			"=== GVMM-NESTED BEGIN ./kvm\r\n=== RUN   TestA\r\n--- PASS: TestA (0.01s)\r\nPASS\r\n" +
			"[   12.345678] kvm: something to say\r\n" +
			"=== GVMM-NESTED END ./kvm rc=0\r\n" +
			"=== GVMM-NESTED BEGIN ./vmm\nok\n=== GVMM-NESTED END ./vmm rc=0\n" + done,
		want:   []string{"PASS ./kvm", "PASS ./vmm"},
		passed: 2,
	}, {
		name: "failure with names",
		pkgs: []string{"./kvm"},
		console: "=== GVMM-NESTED BEGIN ./kvm\n--- FAIL: TestA (0.00s)\n    --- FAIL: TestA/sub (0.00s)\nFAIL\n" +
			"=== GVMM-NESTED END ./kvm rc=1\n" + done,
		want:   []string{"FAIL ./kvm: rc=1, failed: TestA, TestA/sub"},
		failed: 1,
	}, {
		name: "skip is a failure and names the test",
		pkgs: []string{"./kvm"},
		console: "=== GVMM-NESTED BEGIN ./kvm\n=== RUN   TestRun\n    kvm_test.go:12: no /dev/kvm\n" +
			"--- SKIP: TestRun (0.00s)\n    --- SKIP: TestRun/real (0.00s)\nPASS\n=== GVMM-NESTED END ./kvm rc=0\n" + done,
		want:   []string{"FAIL ./kvm: skipped under KVM: TestRun, TestRun/real"},
		failed: 1,
	}, {
		name: "skip outside a package section is not counted",
		pkgs: []string{"./kvm"},
		console: "--- SKIP: Stray (0.00s)\n=== GVMM-NESTED BEGIN ./kvm\n=== GVMM-NESTED END ./kvm rc=0\n" +
			"--- SKIP: Stray2 (0.00s)\n" + done,
		want:   []string{"PASS ./kvm"},
		passed: 1,
	}, {
		name:    "missing end marker and panic",
		pkgs:    []string{"./kvm", "./vmm"},
		console: "=== GVMM-NESTED BEGIN ./kvm\n=== RUN   TestA\n[ 12.0] Kernel panic - not syncing: Fatal exception\n",
		want: []string{
			"FAIL ./kvm: did not finish (no END marker)",
			"FAIL ./vmm: never started (no BEGIN marker)",
			"FAIL run did not finish (no DONE marker); [ 12.0] Kernel panic - not syncing: Fatal exception",
		},
		failed: 3,
	}, {
		name:    "nothing at all",
		pkgs:    []string{"./kvm"},
		console: "",
		want: []string{
			"FAIL ./kvm: never started (no BEGIN marker)",
			"FAIL run did not finish (no DONE marker)",
		},
		failed: 2,
	}, {
		name: "L1 errors and marker behind a kernel message",
		pkgs: []string{"./kvm"},
		console: "=== GVMM-NESTED ERROR insmod kvm-amd.ko failed\n" +
			"[   3.1] random: crng init done=== GVMM-NESTED BEGIN ./kvm\n=== GVMM-NESTED END ./kvm rc=0\n" + done,
		want:   []string{"PASS ./kvm", "FAIL insmod kvm-amd.ko failed"},
		passed: 1,
		failed: 1,
	}, {
		name: "markers out of order",
		pkgs: []string{"./a", "./b"},
		console: "=== GVMM-NESTED BEGIN ./a\n=== GVMM-NESTED BEGIN ./b\n=== GVMM-NESTED END ./a rc=0\n" +
			"=== GVMM-NESTED END ./b rc=0\n=== GVMM-NESTED END ./b rc=x\n=== GVMM-NESTED BOGUS\n" + done,
		want: []string{
			"FAIL ./a: did not finish (no END marker)",
			"PASS ./b",
			"FAIL BEGIN ./b while ./a had not ended",
			"FAIL END ./a without its BEGIN",
			"FAIL unreadable marker: === GVMM-NESTED END ./b rc=x",
			"FAIL unknown marker: === GVMM-NESTED BOGUS",
		},
		passed: 1,
		failed: 5,
	}, {
		name:    "package path with spaces keeps its name",
		pkgs:    []string{"./odd dir"},
		console: "=== GVMM-NESTED BEGIN ./odd dir\n=== GVMM-NESTED END ./odd dir rc=2\n" + done,
		want:    []string{"FAIL ./odd dir: rc=2"},
		failed:  1,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newConsoleParser()
			for _, l := range strings.Split(tt.console, "\n") {
				p.Line(l)
			}
			got, passed, failed := summarize(p, tt.pkgs)
			if !slices.Equal(got, tt.want) || passed != tt.passed || failed != tt.failed {
				t.Errorf("summary:\n got %q (%d passed, %d failed)\nwant %q (%d passed, %d failed)",
					got, passed, failed, tt.want, tt.passed, tt.failed)
			}
		})
	}
}

func TestConsoleParserDemo(t *testing.T) {
	p := newConsoleParser()
	p.watchFor("gvmm-guest: userspace up")
	for _, l := range []string{"=== GVMM-NESTED L1 UP", "gvmm-guest: userspace up\r", "=== GVMM-NESTED DEMO rc=3"} {
		p.Line(l)
	}
	if !p.up || !p.sawLine("gvmm-guest: userspace up") || !p.demoRan || p.demoRC != 3 || p.done {
		t.Fatalf("parser state: up=%v guest=%v demo=%v/%d done=%v", p.up, p.sawLine("gvmm-guest: userspace up"), p.demoRan, p.demoRC, p.done)
	}
}

func TestConsoleParserBench(t *testing.T) {
	p := newConsoleParser()
	clock := time.Unix(1000, 0)
	p.now = func() time.Time { return clock }
	step := func(d time.Duration, line string) {
		clock = clock.Add(d)
		p.Line(line)
	}
	step(0, "=== GVMM-NESTED BENCH START 1")
	step(2*time.Second, "[    0.5] Linux version")
	step(20*time.Second, "gvmm-guest: userspace up\r")
	step(time.Second, "gvmm-guest: userspace up") // only the first counts
	step(5*time.Second, "=== GVMM-NESTED BENCH END 1 rc=0")
	step(0, "gvmm-guest: userspace up") // outside a run: ignored
	step(time.Second, "=== GVMM-NESTED BENCH START 2")
	step(3*time.Second, "=== GVMM-NESTED BENCH END 2 rc=1")
	step(0, "=== GVMM-NESTED BENCH START 3")

	if len(p.bench) != 3 || len(p.errors) != 0 {
		t.Fatalf("bench %d runs, errors %q", len(p.bench), p.errors)
	}
	b := p.bench[0]
	if up, end := b.up.Sub(b.start), b.end.Sub(b.start); up != 22*time.Second || end != 28*time.Second || b.rc != 0 {
		t.Errorf("run 1: up %v end %v rc %d", up, end, b.rc)
	}
	if b := p.bench[1]; !b.up.IsZero() || b.rc != 1 || b.end.IsZero() {
		t.Errorf("run 2: %+v", b)
	}
	if b := p.bench[2]; !b.end.IsZero() {
		t.Errorf("run 3 ended: %+v", b)
	}
	if err := benchReport(newProgress(io.Discard), p, 4); err == nil || err.Error() != "3 of 4 boots failed" {
		t.Errorf("benchReport: %v", err)
	}
}
