package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os/exec"
	"path/filepath"
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
func benchMode(ctx context.Context, p *progress, args []string) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	var f l1Flags
	f.register(fs, 60*time.Minute)
	n := fs.Int("n", 5, "boots of each VMM")
	guestMem := fs.String("guest-mem", "256M", "guest memory, the same for every VMM")
	guestCPUs := fs.Int("guest-cpus", 1, "guest vCPUs, the same for every VMM")
	vmms := fs.String("vmms", "gvmm,qemu-microvm,qemu-pc", "comma-separated VMMs to time")
	bootTimeout := fs.Duration("boot-timeout", 5*time.Minute, "bound on one boot; a boot that takes longer is killed and counts as failed")
	verbose := fs.Bool("v", false, "relay every boot's console")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 || *n < 1 || *guestCPUs < 1 {
		return fmt.Errorf("%w: bench takes no arguments, -n >= 1 and -guest-cpus >= 1", errUsage)
	}
	vmmList := strings.Split(*vmms, ",")
	withQemu := false
	for _, v := range vmmList {
		switch v {
		case "gvmm":
		case "qemu-microvm", "qemu-pc":
			withQemu = true
		default:
			return fmt.Errorf("%w: -vmms: unknown VMM %q (want gvmm, qemu-microvm or qemu-pc)", errUsage, v)
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
	p.say("building gvmm and bootbench")
	gvmmBin := filepath.Join(h.work, "gvmm")
	if err := h.tool.build(ctx, gvmmBin, "./cmd/gvmm"); err != nil {
		return err
	}
	benchBin := filepath.Join(h.work, "bootbench")
	if err := h.tool.build(ctx, benchBin, "./tests/nested/bootbench"); err != nil {
		return err
	}
	gp, err := h.prepareGuest(ctx)
	if err != nil {
		return err
	}
	// bootbench's flags but the paths, which differ in L1 and here.
	common := []string{"-n", fmt.Sprint(*n), "-mem", *guestMem, "-cpus", fmt.Sprint(*guestCPUs),
		"-vmms", *vmms, "-timeout", bootTimeout.String(), fmt.Sprintf("-v=%v", *verbose)}

	parser := newConsoleParser()
	if nested {
		pl := l1Plan{mode: "bench", bootbench: benchBin, heartbeat: 20}
		pl.benchArgs = append([]string{l1BootBench, "-gvmm", l1GvmmBin,
			"-kernel", l1GuestKernel, "-initrd", l1GuestInitrd}, common...)
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
			pl.benchArgs = append(pl.benchArgs, "-qemu", l1QemuBin, "-qemu-lib", l1QemuLib, "-qemu-data", l1QemuData)
		}
		l1, err := h.writeL1(gp, gvmmBin, pl, f.compress)
		if err != nil {
			return err
		}
		c := l1Config{kernel: gp.deb.vmlinuz(), initrd: l1, memMiB: f.memMiB, cpus: f.cpus}
		var out streamOutcome
		parser, out = h.bootL1(ctx, c, f, newConsoleParser)
		if why := l1Problem(out, f); why != "" {
			// Report what was measured before L1 went wrong.
			benchReport(p, parser, vmmList, *n, *guestMem, *guestCPUs, nested)
			return errors.New(why)
		}
	} else {
		a := append([]string{benchBin, "-gvmm", gvmmBin, "-kernel", gp.guest.kernel, "-initrd", gp.guest.initrd}, common...)
		out := stream(ctx, p, exec.Command(a[0], a[1:]...), f.timeout, f.silence, nil, func(s string) bool {
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
		parser.Line(fmt.Sprintf("%s%d", markerBenchDone, rc))
	}
	if len(parser.errors) > 0 {
		p.say("problems reported: %s", strings.Join(parser.errors, "; "))
	}
	return benchReport(p, parser, vmmList, *n, *guestMem, *guestCPUs, nested)
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
