package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"time"
)

// benchMode implements "bench [flags]": it boots the guest n times with
// gvmm (gvmm.demo=auto, so each boot ends by itself) and reports the time
// from starting gvmm to the guest's first userspace line, and to gvmm's
// exit. Inside L1 the times come from when L1's console lines reach the
// harness; they compare gvmm with itself on one machine, not across
// machines.
func benchMode(ctx context.Context, p *progress, args []string) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	var f l1Flags
	f.register(fs, 45*time.Minute)
	n := fs.Int("n", 3, "guest boots")
	guestMem := fs.String("guest-mem", "256M", "guest memory (gvmm run --memory)")
	guestCPUs := fs.Int("guest-cpus", 1, "guest vCPUs (gvmm run --cpus)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 || *n < 1 {
		return fmt.Errorf("%w: bench takes no arguments and -n >= 1", errUsage)
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
	p.say("building gvmm")
	gvmmBin := filepath.Join(h.work, "gvmm")
	if err := h.tool.build(ctx, gvmmBin, "./cmd/gvmm"); err != nil {
		return err
	}
	gp, err := h.prepareGuest(ctx)
	if err != nil {
		return err
	}
	const cmdline = "console=ttyS0 quiet panic=-1 gvmm.demo=auto"

	parser := newConsoleParser()
	if nested {
		pl := l1Plan{
			mode:      "bench",
			benchRuns: *n,
			demoArgs:  demoArgs(l1GvmmBin, l1GuestKernel, l1GuestInitrd, *guestMem, *guestCPUs, cmdline),
			heartbeat: 20,
		}
		l1, err := h.writeL1(gp, gvmmBin, pl, f.compress)
		if err != nil {
			return err
		}
		c := l1Config{kernel: gp.deb.vmlinuz(), initrd: l1, memMiB: f.memMiB, cpus: f.cpus}
		var out streamOutcome
		parser, out = h.bootL1(ctx, c, f, newConsoleParser)
		if why := l1Problem(out, f); why != "" {
			return errors.New(why)
		}
	} else {
		a := demoArgs(gvmmBin, gp.guest.kernel, gp.guest.initrd, *guestMem, *guestCPUs, cmdline)
		ctx, cancel := context.WithTimeout(ctx, f.timeout)
		defer cancel()
		for i := 1; i <= *n && ctx.Err() == nil; i++ {
			parser.Line(fmt.Sprintf("%s%d", markerBenchStart, i))
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
			parser.Line(fmt.Sprintf("%s%d rc=%d", markerBenchEnd, i, rc))
		}
	}
	return benchReport(p, parser, *n)
}

// benchReport prints one line per boot and the spread of boot times, and
// fails if any boot failed or went missing.
func benchReport(p *progress, parser *consoleParser, n int) error {
	var ups, totals []time.Duration
	bad := 0
	p.say("bench results (gvmm start -> first guest userspace line, -> gvmm exit):")
	for _, b := range parser.bench {
		switch {
		case b.end.IsZero():
			p.relay(fmt.Sprintf("  boot %d: did not finish", b.n))
			bad++
		case b.unreadable || b.rc != 0 || b.up.IsZero():
			p.relay(fmt.Sprintf("  boot %d: FAILED (rc=%d, userspace line seen: %v)", b.n, b.rc, !b.up.IsZero()))
			bad++
		default:
			up, total := b.up.Sub(b.start), b.end.Sub(b.start)
			ups, totals = append(ups, up), append(totals, total)
			p.relay(fmt.Sprintf("  boot %d: userspace %s, exit %s", b.n, fmtDur(up), fmtDur(total)))
		}
	}
	if len(ups) > 0 {
		p.relay("  userspace: " + spread(ups))
		p.relay("  exit:      " + spread(totals))
	}
	if missing := n - len(parser.bench); missing > 0 {
		bad += missing
		p.relay(fmt.Sprintf("  %d boots never started", missing))
	}
	if bad > 0 {
		return fmt.Errorf("%d of %d boots failed", bad, n)
	}
	return nil
}

// spread formats min, median and max of ds.
func spread(ds []time.Duration) string {
	s := slices.Clone(ds)
	slices.Sort(s)
	return fmt.Sprintf("min %s, median %s, max %s (n=%d)", fmtDur(s[0]), fmtDur(s[len(s)/2]), fmtDur(s[len(s)-1]), len(s))
}
