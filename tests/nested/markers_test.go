package main

import (
	"io"
	"slices"
	"strings"
	"testing"
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
		name: "a CPU profile between the markers is no problem",
		pkgs: []string{"./kvm"},
		console: "=== GVMM-NESTED BEGIN ./kvm\n=== GVMM-NESTED CPUPROFILE BEGIN name=iobench-gvmm bytes=3\nAAAA\n" +
			"=== GVMM-NESTED CPUPROFILE END name=iobench-gvmm\n=== GVMM-NESTED END ./kvm rc=0\n" + done,
		want:   []string{"PASS ./kvm"},
		passed: 1,
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
	lines := []string{
		"bootbench: 2 rounds of gvmm, qemu-microvm; guest 256M",
		"=== GVMM-NESTED BENCH RESULT vmm=gvmm run=1 ok=1 rc=0 up_ms=900 exit_ms=1200 maxrss_kib=300000 overhead_kib=10240 guest_kib=289760\r",
		"[   12.3] kvm: spurious message === GVMM-NESTED BENCH RESULT vmm=qemu-microvm run=1 ok=1 rc=0 up_ms=1000 exit_ms=1400 maxrss_kib=320000 overhead_kib=-1 guest_kib=-1",
		"=== GVMM-NESTED BENCH RESULT vmm=gvmm run=2 ok=1 rc=0 up_ms=1100 exit_ms=1300 maxrss_kib=300000 overhead_kib=12288 guest_kib=289760",
		"=== GVMM-NESTED BENCH RESULT vmm=qemu-microvm run=2 ok=0 rc=-1 up_ms=-1 exit_ms=300000 maxrss_kib=-1 overhead_kib=-1 guest_kib=-1 why=killed after the 5m0s timeout",
		"=== GVMM-NESTED BENCH RESULT vmm=gvmm run=x",
		"=== GVMM-NESTED BENCH DONE rc=1",
	}
	p := newConsoleParser()
	for _, l := range lines {
		p.Line(l)
	}
	if len(p.bench) != 4 || !p.benchRan || p.benchRC != 1 {
		t.Fatalf("bench %d results, ran %v rc %d", len(p.bench), p.benchRan, p.benchRC)
	}
	if len(p.errors) != 1 || !strings.HasPrefix(p.errors[0], "unreadable marker: ") {
		t.Errorf("errors %q, want one unreadable marker", p.errors)
	}
	if r := p.bench[3]; r.OK || r.Why != "killed after the 5m0s timeout" || r.VMM != "qemu-microvm" {
		t.Errorf("failed run: %+v", r)
	}
	for _, tc := range []struct {
		n    int
		vmms []string
		want string // "" for no error
	}{
		{2, []string{"gvmm", "qemu-microvm"}, "1 of 4 boots failed or went missing"},
		{3, []string{"gvmm", "qemu-microvm"}, "3 of 6 boots failed or went missing"},
		{2, []string{"gvmm", "qemu-microvm", "qemu-pc"}, "3 of 6 boots failed or went missing"},
	} {
		var buf strings.Builder
		err := benchReport(newProgress(&buf), p, tc.vmms, tc.n, "256M", 1, true)
		if err == nil || err.Error() != tc.want {
			t.Errorf("benchReport(n=%d, %q): %v, want %s", tc.n, tc.vmms, err, tc.want)
		}
		for _, want := range []string{"median 11.0 MiB", "FAILED: qemu-microvm boot 2", "gvmm / qemu-microvm, median to userspace: 1.00x"} {
			if !strings.Contains(buf.String(), want) {
				t.Errorf("report lacks %q:\n%s", want, buf.String())
			}
		}
	}

	ok := newConsoleParser()
	ok.Line(lines[1])
	ok.Line("=== GVMM-NESTED BENCH DONE rc=0")
	if err := benchReport(newProgress(io.Discard), ok, []string{"gvmm"}, 1, "256M", 1, false); err != nil {
		t.Errorf("benchReport of one good boot: %v", err)
	}
	ok.benchRan = false
	if err := benchReport(newProgress(io.Discard), ok, []string{"gvmm"}, 1, "256M", 1, false); err == nil {
		t.Error("benchReport without BENCH DONE: no error")
	}
}

func TestBenchMarkerPrefix(t *testing.T) {
	if !strings.HasPrefix(markerBenchResult, markerPrefix) {
		t.Fatalf("bootbench's result prefix %q does not start with %q", markerBenchResult, markerPrefix)
	}
}

func TestRetryable(t *testing.T) {
	tests := []struct {
		name     string
		lines    []string
		want     string
		unstable bool // allUnstable: a second rerun is allowed
	}{
		{"triple fault in one test", []string{
			"=== GVMM-NESTED BEGIN ./tests/integration",
			"=== RUN   TestVirtioRNG",
			"    gvmm run: vCPU 0: " + tripleFaultSignature,
			"--- FAIL: TestVirtioRNG (12.70s)",
			"=== GVMM-NESTED END ./tests/integration rc=1",
		}, "^(TestVirtioRNG)$", true},
		{"subtests: top-level name only", []string{
			"=== GVMM-NESTED BEGIN ./tests/integration",
			"=== RUN   TestBootLinux",
			"=== RUN   TestBootLinux/2cpu-reboot",
			"        gvmm run: vCPU 0: " + tripleFaultSignature,
			"    --- FAIL: TestBootLinux/2cpu-reboot (16.32s)",
			"--- FAIL: TestBootLinux (34.99s)",
			"=== GVMM-NESTED END ./tests/integration rc=1",
		}, "^(TestBootLinux)$", true},
		{"any failure is rerun once", []string{
			"=== GVMM-NESTED BEGIN ./tests/integration",
			"=== RUN   TestGuestFailures",
			"    guest_test.go:332: gvmm said: gvmm run: vCPU 0: " + tripleFaultSignature,
			"--- PASS: TestGuestFailures (0.49s)",
			"=== RUN   TestVirtioBlk",
			"--- FAIL: TestVirtioBlk (1.00s)",
			"=== GVMM-NESTED END ./tests/integration rc=1",
		}, "^(TestVirtioBlk)$", false},
		{"passed", []string{
			"=== GVMM-NESTED BEGIN ./tests/integration",
			"--- PASS: TestA (1.00s)",
			"=== GVMM-NESTED END ./tests/integration rc=0",
		}, "", false},
		{"two triple faults", []string{
			"=== GVMM-NESTED BEGIN ./tests/integration",
			"=== RUN   TestA",
			"gvmm run: vCPU 1: " + tripleFaultSignature,
			"--- FAIL: TestA (1.00s)",
			"=== RUN   TestB",
			"gvmm run: vCPU 0: " + tripleFaultSignature,
			"--- FAIL: TestB (1.00s)",
			"=== GVMM-NESTED END ./tests/integration rc=1",
		}, "^(TestA|TestB)$", true},
		{"guest stalled", []string{
			"=== GVMM-NESTED BEGIN ./tests/integration",
			"=== RUN   TestRebootRestart",
			`    guest_test.go:289: console did not show "gvmm-guest: userspace up" within 4m0s`,
			"--- FAIL: TestRebootRestart (240.19s)",
			"=== GVMM-NESTED END ./tests/integration rc=1",
		}, "^(TestRebootRestart)$", true},
		{"did not finish", []string{
			"=== GVMM-NESTED BEGIN ./tests/integration",
			"=== RUN   TestX",
			"    gvmm run: vCPU 0: " + tripleFaultSignature,
			"--- FAIL: TestX (1.00s)",
		}, "", true},
		{"one of two failures without an instability", []string{
			"=== GVMM-NESTED BEGIN ./tests/integration",
			"=== RUN   TestA",
			"gvmm run: vCPU 1: " + tripleFaultSignature,
			"--- FAIL: TestA (1.00s)",
			"=== RUN   TestB",
			"--- FAIL: TestB (1.00s)",
			"=== GVMM-NESTED END ./tests/integration rc=1",
		}, "^(TestA|TestB)$", false},
	}
	for _, tt := range tests {
		p := newConsoleParser()
		for _, l := range tt.lines {
			p.Line(l)
		}
		r := p.result("./tests/integration")
		if got := r.retryable(); got != tt.want {
			t.Errorf("%s: retryable = %q, want %q", tt.name, got, tt.want)
		}
		if got := r.allUnstable(); got != tt.unstable {
			t.Errorf("%s: allUnstable = %v, want %v", tt.name, got, tt.unstable)
		}
	}
}

func TestConsoleParserIOBench(t *testing.T) {
	lines := []string{
		"iobench: 1 rounds of gvmm, qemu",
		"=== GVMM-NESTED IOBENCH RESULT vmm=gvmm run=1 test=blk-write ok=1 bytes=67108864 ns=2000000000\r",
		"=== GVMM-NESTED IOBENCH RESULT vmm=qemu run=1 test=blk-write ok=1 bytes=67108864 ns=1000000000",
		"=== GVMM-NESTED IOBENCH RESULT vmm=gvmm run=1 test=blk-read ok=1 bytes=67108864 ns=1000000000",
		"=== GVMM-NESTED IOBENCH RESULT vmm=qemu run=1 test=blk-read ok=1 bytes=67108864 ns=1000000000",
		"=== GVMM-NESTED IOBENCH RESULT vmm=gvmm run=1 test=net-tx ok=1 bytes=67108864 ns=4000000000",
		"=== GVMM-NESTED IOBENCH RESULT vmm=qemu run=1 test=net-tx ok=0 bytes=-1 ns=-1 why=net-tx: no connection",
		"=== GVMM-NESTED IOBENCH RESULT vmm=qemu run=x",
		"=== GVMM-NESTED IOBENCH DONE rc=1",
	}
	p := newConsoleParser()
	for _, l := range lines {
		p.Line(l)
	}
	if len(p.io) != 6 || !p.ioRan || p.ioRC != 1 || len(p.bench) != 0 || p.benchRan {
		t.Fatalf("io %d results, ran %v rc %d; bench %d", len(p.io), p.ioRan, p.ioRC, len(p.bench))
	}
	if len(p.errors) != 1 || !strings.HasPrefix(p.errors[0], "unreadable marker: ") {
		t.Errorf("errors %q, want one unreadable marker", p.errors)
	}
	for _, tc := range []struct {
		f    ioFlags
		want string
	}{
		{ioFlags{runs: 1, reps: 1, diskMiB: 64, netMiB: 64}, "1 of 6 I/O measurements failed or went missing"},
		{ioFlags{runs: 2, reps: 1, diskMiB: 64, netMiB: 64}, "7 of 12 I/O measurements failed or went missing"},
	} {
		var buf strings.Builder
		err := ioReport(newProgress(&buf), p, []string{"gvmm", "qemu"}, tc.f, "256M", 1, true)
		if err == nil || err.Error() != tc.want {
			t.Errorf("ioReport(%+v): %v, want %s", tc.f, err, tc.want)
		}
		for _, want := range []string{
			"blk-write  1/", "32.0 MiB/s", "0.50x",
			"FAILED: qemu net-tx run 1: net-tx: no connection",
			"gvmm / qemu, median blk-write throughput: 0.50x; target gvmm at least equal: NOT met",
			"gvmm / qemu, median blk-read throughput: 1.00x; target gvmm at least equal: met",
		} {
			if !strings.Contains(buf.String(), want) {
				t.Errorf("report lacks %q:\n%s", want, buf.String())
			}
		}
	}
	if !strings.HasPrefix(markerIOResult, markerPrefix) {
		t.Fatalf("iobench's result prefix %q does not start with %q", markerIOResult, markerPrefix)
	}
}
