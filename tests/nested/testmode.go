package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// testMode implements "test [flags] PKG...".
func testMode(ctx context.Context, p *progress, args []string) error {
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	var f l1Flags
	f.register(fs, 60*time.Minute)
	testTimeout := fs.Duration("test-timeout", 20*time.Minute, "-test.timeout of each test binary")
	noGvmm := fs.Bool("no-gvmm", false, "do not build ./cmd/gvmm (for tests that do not need it)")
	run := fs.String("run", "", "run only the tests matching this regexp (-test.run)")
	bench := fs.String("bench", "", "also run the benchmarks matching this regexp, once each (-test.bench, -test.benchtime=1x)")
	benchMem := fs.String("bench-mem", "", "GVMM_BENCH_MEM for the benchmarks (a size like 256M; empty: each benchmark's default)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	pkgs := fs.Args()
	if len(pkgs) == 0 {
		return fmt.Errorf("%w: no packages given", errUsage)
	}
	nested, err := useNested(p)
	if err != nil {
		return err
	}
	h, err := newHarness(ctx, p, f.keep)
	if err != nil {
		return err
	}
	defer h.close()

	var problems []string // failures outside the test packages
	gvmmBin := ""
	if !*noGvmm {
		p.say("building gvmm")
		gvmmBin = filepath.Join(h.work, "gvmm")
		if err := h.tool.build(ctx, gvmmBin, "./cmd/gvmm"); err != nil {
			p.say("%v", err)
			problems = append(problems, "build ./cmd/gvmm failed (tests that need GVMM_BIN will fail too)")
			gvmmBin = ""
		}
	}
	tests := h.tool.buildTests(ctx, p, pkgs, h.work)
	var runnable []testPkg
	var runPkgs []string
	noTests := 0
	for _, t := range tests {
		switch {
		case t.err != nil:
			p.say("%v", t.err)
			problems = append(problems, fmt.Sprintf("%s: does not build", t.pkg))
		case t.noTests != "":
			noTests++
		default:
			runnable = append(runnable, t)
			runPkgs = append(runPkgs, t.pkg)
		}
	}
	gp, err := h.prepareGuest(ctx)
	if err != nil {
		return err
	}

	parser := newConsoleParser()
	switch {
	case len(runnable) == 0:
		p.say("no test binaries to run")
		parser.Line(markerDone)
	case nested:
		pl := l1Plan{mode: "test", tests: runnable, testTimeout: *testTimeout, testRun: *run, testBench: *bench, benchMem: *benchMem, heartbeat: 20}
		l1, err := h.writeL1(gp, gvmmBin, pl, f)
		if err != nil {
			return err
		}
		c := l1Config{kernel: gp.deb.vmlinuz(), initrd: l1, memMiB: f.memMiB, cpus: f.cpus}
		var out streamOutcome
		p.say("booting L1: qemu-system-x86_64 %s", strings.Join(c.args(), " "))
		parser, out = h.bootL1Once(ctx, c, f, newConsoleParser)
		parser, out = h.resumeAfterPanics(ctx, p, parser, out, pl, gp, gvmmBin, f)
		if why := l1Problem(out, f); why != "" {
			problems = append(problems, why)
		} else {
			problems = append(problems, h.retryFailures(ctx, p, parser, runnable, pl, gp, gvmmBin, f)...)
		}
	default:
		env := []string{
			"GVMM_REQUIRE_KVM=1",
			"GVMM_BIN=" + gvmmBin,
			"GVMM_GUEST_KERNEL=" + gp.guest.kernel,
			"GVMM_GUEST_INITRD=" + gp.guest.initrd,
		}
		var args []string
		if *run != "" {
			args = append(args, "-test.run="+*run)
		}
		if *bench != "" {
			args = append(args, "-test.bench="+*bench, "-test.benchtime=1x")
		}
		if *benchMem != "" {
			env = append(env, "GVMM_BENCH_MEM="+*benchMem)
		}
		if why := runDirect(ctx, p, runnable, env, *testTimeout, args, f.timeout, parser); why != "" {
			problems = append(problems, why)
		}
	}

	lines, passed, failed := summarize(parser, runPkgs)
	p.say("summary:")
	for _, t := range tests {
		if t.noTests != "" {
			p.relay(fmt.Sprintf("  NO TESTS %s (%s)", t.pkg, t.noTests))
		}
	}
	for _, l := range lines {
		p.relay("  " + l)
	}
	for _, pr := range problems {
		p.relay("  FAIL " + pr)
		failed++
	}
	p.relay(fmt.Sprintf("%d passed, %d failed, %d without tests (%s)", passed, failed, noTests, fmtDur(p.elapsed())))
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if failed > 0 {
		return fmt.Errorf("%d failed", failed)
	}
	return nil
}

// writeL1 writes L1's initramfs for the plan into the run's folder.
func (h *harness) writeL1(gp guestParts, gvmmBin string, pl l1Plan, f l1Flags) (string, error) {
	compress := f.compress
	if f.kvmTrace < 0 {
		return "", fmt.Errorf("%w: -kvm-trace: %d lines", errUsage, f.kvmTrace)
	}
	pl.kvmTrace = f.kvmTrace
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		return "", fmt.Errorf("the nested machine needs QEMU: apt-get install qemu-system-x86 (listed in .ci/apt-packages): %w", err)
	}
	params := f.kvmParams
	if params == kvmParamsAuto {
		out, err := exec.Command("qemu-system-x86_64", "--version").Output()
		if err != nil {
			return "", fmt.Errorf("qemu-system-x86_64 --version: %w", err)
		}
		major, err := parseQEMUMajor(string(out))
		if err != nil {
			return "", err
		}
		params = autoKVMParams(major)
		if major < 10 {
			h.p.say("QEMU %d emulates L1: its AES and carry-less multiply are slow (encrypted migration runs about 5x slower than under QEMU 10; .ci/install-deps installs 10 from bookworm-backports)", major)
		}
	}
	var err error
	if pl.kvmArgs, pl.kvmAMDArgs, err = splitKVMParams(params); err != nil {
		return "", err
	}
	path := filepath.Join(h.work, "l1-initrd.cpio")
	if compress {
		path += ".gz"
	}
	start := time.Now()
	if err := buildL1(gp.deb, gp.applets, gvmmBin, gp.guest, pl, path, compress); err != nil {
		return "", fmt.Errorf("L1 initramfs: %w", err)
	}
	if fi, err := os.Stat(path); err == nil {
		h.p.say("wrote L1's initramfs (%d MiB) in %s", fi.Size()>>20, fmtDur(time.Since(start)))
	}
	return path, nil
}

// runDirect runs the test binaries on this host, one after the other,
// framed by the same markers L1 prints, and returns a problem outside the
// packages, if any. args go to every test binary after -test.v and
// -test.timeout (as l1init.sh's run_tests passes them in L1).
func runDirect(ctx context.Context, p *progress, tests []testPkg, env []string, testTimeout time.Duration, args []string, total time.Duration, parser *consoleParser) string {
	ctx, cancel := context.WithTimeout(ctx, total)
	defer cancel()
	say := func(s string) { p.relay(s); parser.Line(s) }
	for _, t := range tests {
		if ctx.Err() != nil {
			break
		}
		say(markerBegin + t.pkg)
		cmd := exec.Command(t.bin, append([]string{"-test.v", "-test.timeout=" + testTimeout.String()}, args...)...)
		cmd.Dir = t.dir // as go test does: testdata/ is found relative to it
		cmd.Env = append(os.Environ(), env...)
		// A minute more than the binary's own timeout, which then panics
		// with every goroutine's stack: that report is worth the wait.
		out := stream(ctx, p, cmd, testTimeout+time.Minute, 0, nil, func(s string) bool {
			parser.Line(s)
			return true
		})
		rc := 0
		var ee *exec.ExitError
		switch {
		case errors.As(out.err, &ee):
			rc = ee.ExitCode() // -1 when killed by a signal
		case out.err != nil:
			p.say("%s: %v", t.pkg, out.err)
			rc = -1
		}
		say(fmt.Sprintf("%s%s rc=%d", markerEnd, t.pkg, rc))
	}
	if ctx.Err() != nil {
		return fmt.Sprintf("direct run did not finish within -timeout %v", total)
	}
	say(markerDone)
	return ""
}

// retryFailures reruns, in a fresh L1, the tests that failed.
// L2 guests under nested KVM on TCG fail rarely and at random: triple
// faults (2-vCPU and 1-vCPU guests, in shell pipelines, in early boot and
// in pre-copy), guests that stop making progress (the notes on nested KVM
// report it too), and, after one such failure, the next guest in the same
// L1 failing as well; none reproduced on demand, and nothing shows in
// L1's log. The emulator is the suspect: L1's own kernel now and then
// takes a host interrupt right after VMRUN, which no real CPU does (see
// l1Problem), and QEMU guests share L1 with gvmm's. So a failure earns one
// rerun, said out loud with whether its output showed a known instability;
// a test whose failures all showed one (in the first run and in the
// rerun) earns a second rerun, said out loud too. Any other test that
// fails twice is a real failure, and so is one that fails three times.
func (h *harness) retryFailures(ctx context.Context, p *progress, parser *consoleParser, runnable []testPkg, pl l1Plan, gp guestParts, gvmmBin string, f l1Flags) []string {
	latest := map[string]*pkgResult{} // each package's last run
	unstable := map[string]bool{}     // every failure so far showed an instability
	for _, t := range runnable {
		latest[t.pkg] = parser.result(t.pkg)
		unstable[t.pkg] = true
	}
	for rerun := 1; rerun <= maxReruns; rerun++ {
		var retry []testPkg
		var pats []string
		for _, t := range runnable {
			r := latest[t.pkg]
			pat := r.retryable()
			if pat == "" {
				continue
			}
			unstable[t.pkg] = unstable[t.pkg] && r.allUnstable()
			if rerun > 1 && !unstable[t.pkg] {
				continue
			}
			retry = append(retry, t)
			pats = append(pats, pat)
			for _, name := range r.failed {
				if strings.Contains(name, "/") {
					continue
				}
				known := "no known nested-KVM instability in its output"
				if r.instability(name) {
					known = "its guest triple-faulted or stalled (known nested-KVM instability)"
				}
				p.say("RETRY %d of %d %s %s: failed, %s; running it once more in a fresh L1", rerun, maxReruns, t.pkg, name, known)
			}
		}
		if len(retry) == 0 {
			return nil
		}
		pl.tests, pl.testRun = retry, strings.Join(pats, "|")
		l1, err := h.writeL1(gp, gvmmBin, pl, f)
		if err != nil {
			return []string{"retry: " + err.Error()}
		}
		c := l1Config{kernel: gp.deb.vmlinuz(), initrd: l1, memMiB: f.memMiB, cpus: f.cpus}
		again, out := h.bootL1(ctx, c, f, newConsoleParser)
		if why := l1Problem(out, f); why != "" {
			return []string{"retry: " + why}
		}
		for _, t := range retry {
			r := again.result(t.pkg)
			latest[t.pkg] = r
			ok, why := r.verdict()
			p.say("RETRY %d %s: %s", rerun, t.pkg, why)
			if ok {
				parser.results[t.pkg] = r
			} else {
				parser.results[t.pkg].failed = append(parser.results[t.pkg].failed, fmt.Sprintf("(and again on rerun %d: %s)", rerun, why))
			}
		}
	}
	return nil
}

// maxReruns bounds the reruns of a failed test: the second is only for
// tests whose every failure showed a known nested-KVM instability.
const maxReruns = 2
