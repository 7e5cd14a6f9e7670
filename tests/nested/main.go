package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() { os.Exit(realMain(os.Args[1:])) }

const usageText = `usage: go run ./tests/nested MODE [flags] [args]

modes:
  test [flags] PKG...   run the tests of PKG... under KVM (directly, or inside
                        a nested QEMU/TCG machine when the host has no /dev/kvm)
  demo [flags]          boot a Linux guest with gvmm and show its console
  shell [flags]         a shell in the nested machine (L1), for debugging
  bench [flags]         time guest boots (start to first userspace line) with gvmm,
                        QEMU -M microvm and QEMU -M pc, and gvmm's memory overhead;
                        then guest virtio-blk and virtio-net throughput, gvmm vs
                        QEMU -M pc (-n 0: I/O only; -io-n 0: boots only)

environment:
  GVMM_NESTED=force|off  always / never use the nested machine (default: only
                         without a usable /dev/kvm)
  GVMM_CACHE=DIR         downloads and builds (default <repo>/.cache/gvmm)

Run "go run ./tests/nested MODE -h" for a mode's flags.
`

// errUsage marks a command-line mistake (exit status 2).
var errUsage = errors.New("usage")

func realMain(args []string) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(os.Stderr, usageText)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	p := newProgress(os.Stdout)
	var err error
	switch args[0] {
	case "test":
		err = testMode(ctx, p, args[1:])
	case "demo":
		err = demoMode(ctx, p, args[1:])
	case "shell":
		err = shellMode(ctx, p, args[1:])
	case "bench":
		err = benchMode(ctx, p, args[1:])
	default:
		fmt.Fprintf(os.Stderr, "nested: unknown mode %q\n\n%s", args[0], usageText)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		fmt.Fprintf(os.Stderr, "nested %s: %v\n", args[0], err)
		return 2
	}
	p.say("FAILED: %v", err)
	return 1
}

// harness is what every mode shares: where things are and go.
type harness struct {
	p     *progress
	tool  goTool
	cache string // $GVMM_CACHE
	work  string // this run's build folder, under cache/build
	keep  bool   // keep work at the end
}

// newHarness finds the repository and the cache and makes this run's build
// folder. The caller must call close.
func newHarness(ctx context.Context, p *progress, keep bool) (*harness, error) {
	g, err := findGo("")
	if err != nil {
		return nil, err
	}
	gomod, err := g.run(ctx, "env", "GOMOD")
	if err != nil {
		return nil, err
	}
	gomod = strings.TrimSpace(gomod)
	if gomod == "" || gomod == os.DevNull {
		return nil, errors.New("not inside the gvmm module (go env GOMOD is empty)")
	}
	g.repo = filepath.Dir(gomod)
	cache := os.Getenv("GVMM_CACHE")
	if cache == "" {
		cache = filepath.Join(g.repo, ".cache", "gvmm")
	}
	if cache, err = filepath.Abs(cache); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(cache, "build"), 0o755); err != nil {
		return nil, err
	}
	removeStale(filepath.Join(cache, "build"), p)
	// One folder per run: other runs (other engineers, CI) may build at
	// the same time.
	work, err := os.MkdirTemp(filepath.Join(cache, "build"), time.Now().Format("20060102-150405-"))
	if err != nil {
		return nil, err
	}
	return &harness{p: p, tool: g, cache: cache, work: work, keep: keep}, nil
}

// staleAfter is the age at which a run's build folder is surely not in use
// any more (runs are bounded well below it), even one kept with -keep.
const staleAfter = 24 * time.Hour

// removeStale removes run folders older than staleAfter, left by -keep or
// by runs that were killed. Younger ones may belong to a run in progress.
func removeStale(dir string, p *progress) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		fi, err := e.Info()
		if err != nil || !e.IsDir() || time.Since(fi.ModTime()) < staleAfter {
			continue
		}
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err == nil {
			p.say("removed a stale build folder: %s", e.Name())
		}
	}
}

func (h *harness) close() {
	if h.keep {
		h.p.say("kept this run's files in %s", h.work)
		return
	}
	os.RemoveAll(h.work)
}

// useNested decides between running on the host's /dev/kvm and the nested
// machine.
func useNested(p *progress) (bool, error) {
	switch v := os.Getenv("GVMM_NESTED"); v {
	case "force":
		p.say("GVMM_NESTED=force: using the nested QEMU/TCG machine")
		return true, nil
	case "off":
		p.say("GVMM_NESTED=off: running directly on this host")
		return false, nil
	case "", "auto":
		if err := kvmUsable(); err != nil {
			p.say("no usable /dev/kvm here (%v): using a nested QEMU/TCG machine (L1) that has one", err)
			return true, nil
		}
		p.say("/dev/kvm is usable: running directly on this host")
		return false, nil
	default:
		return false, fmt.Errorf("%w: GVMM_NESTED=%q (want force, off or auto)", errUsage, v)
	}
}

// guestParts is what both modes build before running anything.
type guestParts struct {
	deb     debPackages
	applets []string
	guest   guestImage
}

// prepareGuest downloads (or finds cached) the packages and builds the
// guest image.
func (h *harness) prepareGuest(ctx context.Context) (guestParts, error) {
	var gp guestParts
	var err error
	h.p.say("fetching Debian packages (cached in %s)", h.cache)
	if gp.deb, err = fetchPackages(ctx, h.p, h.cache); err != nil {
		return gp, fmt.Errorf("fetch packages: %w", err)
	}
	if gp.applets, err = busyboxApplets(ctx, gp.deb.busyboxBin()); err != nil {
		return gp, err
	}
	h.p.say("building the guest image (kernel %s)", gp.deb.kver)
	if gp.guest, err = buildGuest(ctx, h.tool, gp.deb, gp.applets, h.work); err != nil {
		return gp, fmt.Errorf("guest image: %w", err)
	}
	return gp, nil
}

// kvmParamsAuto, the -kvm-params default, picks L1's KVM module
// parameters by the version of the QEMU that emulates L1 (autoKVMParams).
const kvmParamsAuto = "auto"

// autoKVMParams returns L1's KVM module parameters under a QEMU of this
// major version.
//
// QEMU 7.2 (Debian 12's own): nested paging off. L1's KVM then shadows
// its guests' page tables itself, and TCG walks one level of page tables
// for L2 instead of emulating NPT. With NPT on, L2 guests died now and
// then: 8 of 18 attempts of TestMigrationFaults (whose guest dirties
// memory at full speed during pre-copy) on the development machine, and
// twice in a row in CI. L1's KVM trace showed two of them dying on the
// first instruction fetch after re-entering the guest, with a #PF on
// kernel text (reserved bit, or not present) that no guest causes. With
// npt=0, none died in 7 runs of TestMigrationFaults and 4 each of
// TestBootLinux and TestLiveMigrationSMPNet (one of them a whole-suite
// run), at the price of slower L2 boots (about 24 s against 12 s).
//
// QEMU 10 (bookworm-backports, which .ci/install-deps installs): nested
// paging on. There it is the shadow-paging path that fails: with npt=0
// neither gvmm's nor QEMU's L2 guest printed a line after the firmware,
// while with npt=1 the whole suite passes and L2 boots in under 10 s.
func autoKVMParams(qemuMajor int) string {
	if qemuMajor < 10 {
		return "kvm_amd.npt=0"
	}
	return ""
}

// qemuVersion matches the first line of qemu-system-x86_64 --version.
var qemuVersion = regexp.MustCompile(`^QEMU emulator version (\d+)\.(\d+)`)

// parseQEMUMajor reads the major version from qemu-system-x86_64
// --version's output.
func parseQEMUMajor(out string) (int, error) {
	m := qemuVersion.FindStringSubmatch(strings.TrimSpace(out))
	if m == nil {
		first, _, _ := strings.Cut(out, "\n")
		return 0, fmt.Errorf("qemu-system-x86_64 --version printed %q, not a QEMU version", first)
	}
	return strconv.Atoi(m[1])
}

// l1Flags are the flags of the modes that boot L1.
type l1Flags struct {
	timeout, silence time.Duration
	memMiB, cpus     int
	compress, keep   bool
	// kvmParams are module parameters for L1's kvm.ko and kvm-amd.ko,
	// "kvm.NAME=VALUE" or "kvm_amd.NAME=VALUE", space-separated.
	kvmParams string
	// kvmTrace is how many lines of L1's KVM trace to print after a
	// guest shutdown (a triple fault); 0: L1 does not trace.
	kvmTrace int
}

func (f *l1Flags) register(fs *flag.FlagSet, timeout time.Duration) {
	fs.DurationVar(&f.timeout, "timeout", timeout, "bound on one run (of L1, or of all direct runs)")
	fs.DurationVar(&f.silence, "silence", 240*time.Second, "no output from L1 for this long means it wedged: kill it and retry once")
	fs.IntVar(&f.memMiB, "mem", 4096, "L1 memory in MiB")
	fs.IntVar(&f.cpus, "cpus", 2, "L1 vCPUs")
	fs.BoolVar(&f.compress, "gzip", false, "gzip L1's initramfs (smaller, but slower to unpack under TCG)")
	fs.BoolVar(&f.keep, "keep", false, "keep this run's build folder (L1 initramfs, binaries) for debugging")
	fs.IntVar(&f.kvmTrace, "kvm-trace", 0, "trace L1's KVM exits and injections, and after a guest shutdown (a triple fault) print this many of the last events; 0: no tracing")
	fs.StringVar(&f.kvmParams, "kvm-params", kvmParamsAuto, `module parameters for L1's KVM, space-separated "kvm.NAME=VALUE" or "kvm_amd.NAME=VALUE"; "" loads KVM as it comes (nested paging on); auto: nested paging off under QEMU before 10, on from 10`)
}

func parseFlags(fs *flag.FlagSet, args []string) error {
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		fs.SetOutput(os.Stderr)
		fmt.Fprintf(os.Stderr, "usage: go run ./tests/nested %s [flags]%s\n", fs.Name(), map[bool]string{true: " PKG..."}[fs.Name() == "test"])
		fs.PrintDefaults()
		return err
	}
	if err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	return nil
}

// bootL1 builds nothing: it boots L1 (non-interactively) and retries once
// if L1 goes silent, the known rare wedge of nested SVM under TCG. It
// returns the parser of the last attempt.
func (h *harness) bootL1(ctx context.Context, c l1Config, f l1Flags, newParser func() *consoleParser) (*consoleParser, streamOutcome) {
	var parser *consoleParser
	var out streamOutcome
	for attempt := 1; attempt <= 2; attempt++ {
		c.heartbeat = filepath.Join(h.work, fmt.Sprintf("l1-heartbeat-%d", attempt))
		h.p.say("booting L1 (attempt %d of 2): qemu-system-x86_64 %s", attempt, strings.Join(c.args(), " "))
		parser, out = h.bootL1Once(ctx, c, f, newParser)
		if !out.silent || ctx.Err() != nil {
			break
		}
		if attempt == 1 {
			h.p.say("L1 printed nothing, or a CPU of it was stuck, for %v: this is the known rare wedge of nested SVM under TCG (see doc.go). Retrying the whole L1 run once; a second wedge counts as a failure.", f.silence)
		}
	}
	return parser, out
}

// bootL1Once boots L1 once, with no retry of its own (test mode resumes
// instead: resume.go).
func (h *harness) bootL1Once(ctx context.Context, c l1Config, f l1Flags, newParser func() *consoleParser) (*consoleParser, streamOutcome) {
	if c.heartbeat == "" { // every boot its own heartbeat file
		c.heartbeat = filepath.Join(h.work, fmt.Sprintf("l1-heartbeat-%d", time.Now().UnixNano()))
	}
	parser := newParser()
	out, t := runL1(ctx, h.p, c, parser, f.timeout, f.silence)
	h.p.say("L1 timing: userspace after %s, /dev/kvm after %s, whole run %s",
		fmtDur(t.up), fmtDur(t.kvm), fmtDur(t.total))
	return parser, out
}

func fmtDur(d time.Duration) string {
	if d == 0 {
		return "-"
	}
	return d.Round(100 * time.Millisecond).String()
}

// l1Problem describes how an L1 run ended badly, "" if it did not.
func l1Problem(out streamOutcome, f l1Flags) string {
	switch {
	case out.silent:
		return fmt.Sprintf("L1 wedged twice (no output, or a CPU stuck, for %v each time)", f.silence)
	case out.timedOut:
		return fmt.Sprintf("L1 did not finish within -timeout %v", f.timeout)
	case out.err != nil:
		return fmt.Sprintf("QEMU: %v", out.err)
	}
	return ""
}
