package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/gvmm/gvmm/tests/nested/internal/benchfmt"
)

// benchMode implements "bench [flags]": bootbench (tests/nested/bootbench)
// boots the guest n times each with gvmm, QEMU -M microvm and QEMU -M pc,
// on the machine that has /dev/kvm (L1, or this host), and times each boot
// there from starting the VMM process to the guest's first userspace line.
// The harness collects its result lines and prints the comparison and
// gvmm's memory overhead. In L1 every figure is inflated by the nested
// emulation: compare the VMMs with each other, not with other machines.
//
// Then, in the same L1 run, iobench (tests/nested/iobench) measures guest
// virtio-blk write and read and guest-to-host virtio-net TCP throughput
// with gvmm and with QEMU -M pc given the same devices, -io-n boots each;
// the harness prints the medians side by side with gvmm/QEMU ratios.
//
// Last, migbench (tests/nested/migbench) migrates the same idle guest
// over loopback -mig-n times with gvmm and with QEMU -M pc and the
// harness prints total time and downtime (as each VMM reports it and as
// the guest's heartbeat saw it) side by side. -n 0, -io-n 0 or -mig-n 0
// leaves a part out.
func benchMode(ctx context.Context, p *progress, args []string) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	var f l1Flags
	f.register(fs, 60*time.Minute)
	n := fs.Int("n", 5, "boots of each VMM for boot timing; 0: no boot timing")
	guestMem := fs.String("guest-mem", "256M", "guest memory, the same for every VMM")
	guestCPUs := fs.Int("guest-cpus", 1, "guest vCPUs, the same for every VMM")
	vmms := fs.String("vmms", "gvmm,qemu-microvm,qemu-pc", "comma-separated VMMs to time")
	bootTimeout := fs.Duration("boot-timeout", 5*time.Minute, "bound on one boot; a boot that takes longer is killed and counts as failed")
	var iof ioFlags
	iof.register(fs)
	migN := fs.Int("mig-n", 3, "live migrations with each VMM (idle guest over loopback); 0: none")
	migVMMs := fs.String("mig-vmms", "gvmm,qemu,qemu-tls", "comma-separated VMMs for the migration benchmark: gvmm, qemu (-M pc), qemu-tls (the same over TLS 1.3 with a pre-shared key: encrypted like gvmm)")
	migCompress := fs.String("mig-compress", "auto", "gvmm migrate --compress for the migration benchmark: auto, off or always")
	migDirty := fs.String("mig-dirty", "", "MIB:PAGES_PER_SEC: the migrated guest dirties MIB MiB at that rate (0: no limit) instead of idling (migbench -dirty)")
	migProfile := fs.Bool("mig-cpuprofile", false, "CPU-profile the first migration's source gvmm run and its destination's receive (GVMM_CPUPROFILE) and print the profile, base64, on the console")
	verbose := fs.Bool("v", false, "relay every boot's console")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 || *n < 0 || *guestCPUs < 1 || iof.runs < 0 || iof.reps < 1 || iof.diskMiB < 1 || iof.netMiB < 1 || *migN < 0 || *n+iof.runs+*migN == 0 {
		return fmt.Errorf("%w: bench takes no arguments, -n >= 0, -io-n >= 0, -mig-n >= 0 (not all 0), -io-reps, -disk-mib, -net-mib and -guest-cpus >= 1", errUsage)
	}
	vmmList := strings.Split(*vmms, ",")
	withQemu := false
	for _, v := range vmmList {
		switch v {
		case "gvmm":
		case "qemu-microvm", "qemu-pc":
			withQemu = withQemu || *n > 0
		default:
			return fmt.Errorf("%w: -vmms: unknown VMM %q (want gvmm, qemu-microvm or qemu-pc)", errUsage, v)
		}
	}
	ioVMMs := strings.Split(iof.vmms, ",")
	for _, v := range ioVMMs {
		switch v {
		case "gvmm":
		case "qemu":
			withQemu = withQemu || iof.runs > 0
		default:
			return fmt.Errorf("%w: -io-vmms: unknown VMM %q (want gvmm or qemu)", errUsage, v)
		}
	}
	migList := strings.Split(*migVMMs, ",")
	for _, v := range migList {
		switch v {
		case "gvmm":
		case "qemu", "qemu-tls":
			withQemu = withQemu || *migN > 0
		default:
			return fmt.Errorf("%w: -mig-vmms: unknown VMM %q (want gvmm, qemu or qemu-tls)", errUsage, v)
		}
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
	p.say("building gvmm, bootbench, iobench and migbench")
	gvmmBin := filepath.Join(h.work, "gvmm")
	if err := h.tool.build(ctx, gvmmBin, "./cmd/gvmm"); err != nil {
		return err
	}
	benchBin := filepath.Join(h.work, "bootbench")
	if err := h.tool.build(ctx, benchBin, "./tests/nested/bootbench"); err != nil {
		return err
	}
	ioBin := filepath.Join(h.work, "iobench")
	if err := h.tool.build(ctx, ioBin, "./tests/nested/iobench"); err != nil {
		return err
	}
	migBin := filepath.Join(h.work, "migbench")
	if err := h.tool.build(ctx, migBin, "./tests/nested/migbench"); err != nil {
		return err
	}
	gp, err := h.prepareGuest(ctx)
	if err != nil {
		return err
	}
	// bootbench's and iobench's flags but the paths, which differ in L1
	// and here.
	common := []string{"-n", fmt.Sprint(*n), "-mem", *guestMem, "-cpus", fmt.Sprint(*guestCPUs),
		"-vmms", *vmms, "-timeout", bootTimeout.String(), fmt.Sprintf("-v=%v", *verbose)}
	ioCommon := []string{"-n", fmt.Sprint(iof.runs), "-reps", fmt.Sprint(iof.reps),
		"-disk-mib", fmt.Sprint(iof.diskMiB), "-net-mib", fmt.Sprint(iof.netMiB),
		"-mem", *guestMem, "-cpus", fmt.Sprint(*guestCPUs), "-vmms", iof.vmms,
		"-boot-timeout", bootTimeout.String(), fmt.Sprintf("-v=%v", *verbose),
		fmt.Sprintf("-cpuprofile=%v", iof.cpuProfile)}
	migCommon := []string{"-n", fmt.Sprint(*migN), "-mem", *guestMem, "-cpus", fmt.Sprint(*guestCPUs),
		"-vmms", *migVMMs, "-gvmm-compress", *migCompress, "-boot-timeout", bootTimeout.String(), fmt.Sprintf("-v=%v", *verbose),
		fmt.Sprintf("-cpuprofile=%v", *migProfile)}
	if *migDirty != "" {
		migCommon = append(migCommon, "-dirty", *migDirty)
	}
	report := func(parser *consoleParser) error {
		var errs []string
		if *n > 0 {
			if err := benchReport(p, parser, vmmList, *n, *guestMem, *guestCPUs, nested); err != nil {
				errs = append(errs, err.Error())
			}
		}
		if iof.runs > 0 {
			if err := ioReport(p, parser, ioVMMs, iof, *guestMem, *guestCPUs, nested); err != nil {
				errs = append(errs, err.Error())
			}
		}
		if *migN > 0 {
			if err := migReport(p, parser, migList, *migN, *guestMem, *guestCPUs, nested); err != nil {
				errs = append(errs, err.Error())
			}
		}
		if len(errs) > 0 {
			return errors.New(strings.Join(errs, "; "))
		}
		return nil
	}

	parser := newConsoleParser()
	if nested {
		pl := l1Plan{mode: "bench", heartbeat: 20}
		if *n > 0 {
			pl.bootbench = benchBin
			pl.benchArgs = append([]string{l1BootBench, "-gvmm", l1GvmmBin,
				"-kernel", l1GuestKernel, "-initrd", l1GuestInitrd}, common...)
		}
		if iof.runs > 0 {
			pl.iobench = ioBin
			pl.ioArgs = append([]string{l1IOBench, "-gvmm", l1GvmmBin,
				"-kernel", l1GuestKernel, "-initrd", l1GuestInitrd, "-dir", "/tmp"}, ioCommon...)
		}
		if *migN > 0 {
			pl.migbench = migBin
			pl.migArgs = append([]string{l1MigBench, "-gvmm", l1GvmmBin,
				"-kernel", l1GuestKernel, "-initrd", l1GuestInitrd, "-dir", "/tmp"}, migCommon...)
		}
		if withQemu {
			q, err := findQemuPayload(ctx)
			if err != nil {
				return err
			}
			if len(q.missing) > 0 {
				p.say("QEMU firmware %s found in none of %s: QEMU boots that need it will fail",
					strings.Join(q.missing, ", "), strings.Join(qemuFirmwareDirs, ", "))
			}
			p.say("QEMU for L1: %s, %d shared libraries, %d firmware files", q.bin, len(q.libs), len(q.firmware))
			pl.qemu = &q
			qa := []string{"-qemu", l1QemuBin, "-qemu-lib", l1QemuLib, "-qemu-data", l1QemuData}
			if *n > 0 {
				pl.benchArgs = append(pl.benchArgs, qa...)
			}
			if iof.runs > 0 {
				pl.ioArgs = append(pl.ioArgs, qa...)
			}
			if *migN > 0 {
				pl.migArgs = append(pl.migArgs, qa...)
			}
		}
		l1, err := h.writeL1(gp, gvmmBin, pl, f)
		if err != nil {
			return err
		}
		c := l1Config{kernel: gp.deb.vmlinuz(), initrd: l1, memMiB: f.memMiB, cpus: f.cpus}
		var out streamOutcome
		parser, out = h.bootL1(ctx, c, f, newConsoleParser)
		if l1Problem(out, f) == "" && !parser.done && parser.panic != "" {
			// L1's kernel died in a gvmm thread (as the test mode has
			// seen; here twice in four runs, once in bootbench, once in
			// iobench): a run that measured nothing of one part is of no
			// use, so once more, out loud, as the test mode does.
			p.say("RETRY: L1's kernel panicked (%s); booting L1 once more", parser.panic)
			parser, out = h.bootL1(ctx, c, f, newConsoleParser)
		}
		if why := l1Problem(out, f); why != "" {
			// Report what was measured before L1 went wrong.
			report(parser)
			return errors.New(why)
		}
	} else {
		// Both tools run in turn within the one -timeout.
		deadline := time.Now().Add(f.timeout)
		direct := func(a []string, done string) {
			out := stream(ctx, p, exec.Command(a[0], a[1:]...), time.Until(deadline), f.silence, nil, func(s string) bool {
				parser.Line(s)
				return true
			})
			rc := 0
			var ee *exec.ExitError
			if errors.As(out.err, &ee) {
				rc = ee.ExitCode()
			} else if out.err != nil {
				rc = -1
			}
			parser.Line(fmt.Sprintf("%s%d", done, rc))
		}
		if *n > 0 {
			direct(append([]string{benchBin, "-gvmm", gvmmBin, "-kernel", gp.guest.kernel, "-initrd", gp.guest.initrd}, common...), markerBenchDone)
		}
		if iof.runs > 0 {
			direct(append([]string{ioBin, "-gvmm", gvmmBin, "-kernel", gp.guest.kernel, "-initrd", gp.guest.initrd}, ioCommon...), markerIODone)
		}
		if *migN > 0 {
			direct(append([]string{migBin, "-gvmm", gvmmBin, "-kernel", gp.guest.kernel, "-initrd", gp.guest.initrd}, migCommon...), markerMigDone)
		}
	}
	if len(parser.errors) > 0 {
		p.say("problems reported: %s", strings.Join(parser.errors, "; "))
	}
	if parser.panic != "" {
		p.say("L1's kernel panicked: %s (what follows it was never measured)", parser.panic)
	}
	if l := hostLoad(); l != "" {
		// Under emulation every figure scales with the host CPU time L1
		// gets: another nested run beside this one can halve it.
		p.say("host load averages (1, 5, 15 min) at the end: %s on %d CPUs; figures taken beside other CPU-heavy work (another L1) are noisy", l, runtime.NumCPU())
	}
	return report(parser)
}

// hostLoad is the first three fields of /proc/loadavg, "" if unreadable.
func hostLoad() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

// ioFlags are the bench mode's flags for iobench (tests/nested/iobench).
type ioFlags struct {
	runs, reps      int
	diskMiB, netMiB int
	vmms            string
	cpuProfile      bool
}

// The default sizes keep one transfer to seconds under nested emulation
// (where throughput is tens of MiB/s, not GiB/s) and the whole I/O part
// of make bench to about ten minutes on a 2-core host: most of it is the
// six guest boots.
func (f *ioFlags) register(fs *flag.FlagSet) {
	fs.IntVar(&f.runs, "io-n", 3, "boots of each VMM for the I/O benchmark; 0: none")
	fs.IntVar(&f.reps, "io-reps", 1, "measurements of each I/O test per boot")
	fs.IntVar(&f.diskMiB, "disk-mib", 64, "MiB written, then read, with O_DIRECT on virtio-blk per measurement")
	fs.IntVar(&f.netMiB, "net-mib", 64, "MiB sent over TCP from the guest to the host per measurement")
	fs.StringVar(&f.vmms, "io-vmms", "gvmm,qemu", "comma-separated VMMs for the I/O benchmark: gvmm, qemu (-M pc)")
	fs.BoolVar(&f.cpuProfile, "io-cpuprofile", false, "CPU-profile gvmm's first I/O boot (GVMM_CPUPROFILE) and print the profile, base64, on the console")
}

// ioReport prints the I/O table, the failed transfers and the verdicts on
// the target (gvmm at least equal to QEMU), and fails if any
// transfer failed or is missing.
func ioReport(p *progress, parser *consoleParser, vmms []string, iof ioFlags, mem string, cpus int, nested bool) error {
	where := "on this host"
	if nested {
		where = "inside L1 (nested KVM under QEMU/TCG: compare the VMMs with each other, not with other machines)"
	}
	want := iof.runs * iof.reps
	p.say("I/O bench results: guest %s, %d vCPU(s), %d boot(s) per VMM, %d measurement(s) per test and VMM, measured %s",
		mem, cpus, iof.runs, want, where)
	p.relay(fmt.Sprintf("throughput (MiB/s, higher is better): blk-write/blk-read = guest O_DIRECT dd-like 1 MiB sequential I/O of %d MiB on virtio-blk (a raw image in L1's RAM; write includes the final flush), timed in the guest; net-tx = %d MiB guest-to-host TCP over virtio-net and a TAP, timed by the receiver:", iof.diskMiB, iof.netMiB))
	sums := benchfmt.SummarizeIO(parser.io, vmms)
	for _, l := range benchfmt.IOTable(sums, vmms, want) {
		p.relay("  " + l)
	}
	bad := 0
	for _, s := range sums {
		for _, r := range s.Failed {
			p.relay(fmt.Sprintf("  FAILED: %s %s run %d: %s", r.VMM, r.Test, r.Run, r.Why))
		}
		bad += len(s.Failed)
		if s.Runs < want {
			p.relay(fmt.Sprintf("  MISSING: %s %s: %d of %d measurements never reported", s.VMM, s.Test, want-s.Runs, want))
			bad += want - s.Runs
		}
	}
	if len(vmms) == 2 {
		for _, t := range benchfmt.IOTests {
			if r, ok := benchfmt.IORatio(sums, t, vmms[0], vmms[1]); ok {
				verdict := "met"
				if r < 1 {
					verdict = "NOT met"
				}
				p.relay(fmt.Sprintf("%s / %s, median %s throughput: %.2fx; target %s at least equal: %s", vmms[0], vmms[1], t, r, vmms[0], verdict))
			}
		}
	}
	if !parser.ioRan && bad == 0 {
		p.relay("iobench did not report its end")
		bad++
	}
	if bad > 0 {
		return fmt.Errorf("%d of %d I/O measurements failed or went missing", bad, want*len(vmms)*len(benchfmt.IOTests))
	}
	return nil
}

// benchReport prints the comparison table, the failed boots, gvmm's
// memory overhead and the verdicts on the targets, and fails if
// any boot failed or is missing.
func benchReport(p *progress, parser *consoleParser, vmms []string, n int, mem string, cpus int, nested bool) error {
	where := "on this host"
	if nested {
		where = "inside L1 (nested KVM under QEMU/TCG: compare the VMMs with each other, not with other machines)"
	}
	p.say("bench results: guest %s, %d vCPU(s), %d boots per VMM, measured %s", mem, cpus, n, where)
	p.relay(`time from starting the VMM process to the guest's "` + guestUp + `":`)
	sums := benchfmt.Summarize(parser.bench, vmms)
	for _, l := range benchfmt.Table(sums, n) {
		p.relay("  " + l)
	}
	bad := 0
	by := map[string]benchfmt.Summary{}
	for _, s := range sums {
		by[s.VMM] = s
		for _, r := range s.Failed {
			p.relay(fmt.Sprintf("  FAILED: %s boot %d: %s (rc=%d)", r.VMM, r.Run, r.Why, r.RC))
		}
		bad += len(s.Failed)
		if s.Runs < n {
			p.relay(fmt.Sprintf("  MISSING: %s: %d of %d boots never reported", s.VMM, n-s.Runs, n))
			bad += n - s.Runs
		}
	}
	g, mv := by["gvmm"], by["qemu-microvm"]
	if g.Overhead.N > 0 {
		o := g.Overhead
		verdict := "met"
		if o.Median >= 20<<10 {
			verdict = "NOT met"
		}
		p.relay(fmt.Sprintf("gvmm memory overhead (peak RSS - guest RAM touched, gvmm run --stats): median %s (min %s, max %s, n=%d); target < 20 MiB: %s",
			benchfmt.MiB(o.Median), benchfmt.MiB(o.Min), benchfmt.MiB(o.Max), o.N, verdict))
	} else if g.Runs > 0 {
		p.relay("gvmm memory overhead: not measured (no gvmm run --stats line in any successful boot)")
	}
	if g.Up.N > 0 && mv.Up.N > 0 {
		ratio := float64(g.Up.Median) / float64(mv.Up.Median)
		verdict := "met"
		if ratio > 1 {
			verdict = "NOT met"
		}
		p.relay(fmt.Sprintf("gvmm / qemu-microvm, median to userspace: %.2fx; target gvmm no slower: %s", ratio, verdict))
	}
	if !parser.benchRan && bad == 0 {
		p.relay("bootbench did not report its end")
		bad++
	}
	if bad > 0 {
		return fmt.Errorf("%d of %d boots failed or went missing", bad, n*len(vmms))
	}
	return nil
}

// migReport prints the migration table side by side and the verdicts on
// the targets (gvmm's downtime at most half of QEMU's, its total
// time no longer), and fails if any migration failed or is missing.
func migReport(p *progress, parser *consoleParser, vmms []string, n int, mem string, cpus int, nested bool) error {
	where := "on this host"
	if nested {
		where = "inside L1 (nested KVM under QEMU/TCG: compare the VMMs with each other, not with other machines)"
	}
	p.say("migration bench results: idle guest %s, %d vCPU(s), %d migration(s) per VMM over loopback TCP, measured %s", mem, cpus, n, where)
	p.relay("gvmm: encrypted (AES-256-GCM; zstd where it saves time), its defaults; qemu (-M pc): plaintext, its defaults but max-bandwidth lifted; qemu-tls: the same over TLS (GnuTLS, pre-shared key); the heartbeat gap includes up to one heartbeat period (20 ms); under TCG the AES-NI and PCLMULQDQ instructions both encrypted streams use are emulated in software:")
	sums := benchfmt.SummarizeMig(parser.mig, vmms)
	for _, l := range benchfmt.MigTable(sums, n) {
		p.relay("  " + l)
	}
	bad := 0
	by := map[string]benchfmt.MigSummary{}
	for _, s := range sums {
		by[s.VMM] = s
		for _, r := range s.Failed {
			p.relay(fmt.Sprintf("  FAILED: %s migration %d: %s", r.VMM, r.Run, r.Why))
		}
		bad += len(s.Failed)
		if s.Runs < n {
			p.relay(fmt.Sprintf("  MISSING: %s: %d of %d migrations never reported", s.VMM, n-s.Runs, n))
			bad += n - s.Runs
		}
	}
	g := by["gvmm"]
	verdict := func(ok bool) string {
		if ok {
			return "met"
		}
		return "NOT met"
	}
	for _, ref := range []string{"qemu", "qemu-tls"} {
		q := by[ref]
		if g.Downtime.N == 0 || q.Downtime.N == 0 {
			continue
		}
		p.relay(fmt.Sprintf("gvmm / %s median downtime as reported: %.2fx; as the guest saw it: %.2fx; target at most 0.5x: %s (reported), %s (guest)",
			ref, g.Downtime.Median/q.Downtime.Median, g.Gap.Median/q.Gap.Median,
			verdict(g.Downtime.Median <= q.Downtime.Median/2), verdict(g.Gap.Median <= q.Gap.Median/2)))
		p.relay(fmt.Sprintf("gvmm / %s median total time: %.2fx; target at most 1x: %s",
			ref, g.Total.Median/q.Total.Median, verdict(g.Total.Median <= q.Total.Median)))
	}
	if !parser.migRan && bad == 0 {
		p.relay("migbench did not report its end")
		bad++
	}
	if bad > 0 {
		return fmt.Errorf("%d of %d migrations failed or went missing", bad, n*len(vmms))
	}
	return nil
}
