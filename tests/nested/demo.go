package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// demoArgs is the gvmm command line of the demo.
func demoArgs(gvmm, kernel, initrd, mem string, cpus int, cmdline string) []string {
	return []string{gvmm, "run", "--kernel", kernel, "--initrd", initrd,
		"--memory", mem, "--cpus", fmt.Sprint(cpus), "--cmdline", cmdline}
}

// demoMode implements "demo [flags]".
func demoMode(ctx context.Context, p *progress, args []string) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	var f l1Flags
	f.register(fs, 30*time.Minute)
	guestMem := fs.String("guest-mem", "512M", "guest memory (gvmm run --memory)")
	guestCPUs := fs.Int("guest-cpus", 2, "guest vCPUs (gvmm run --cpus)")
	extra := fs.String("append", "", "more guest kernel command line (e.g. quiet)")
	story := fs.Bool("story", true, "after the boot, tell the personal-cloud story: policy- and attestation-gated migrations between hosts with their own TPMs ("+storyTest+" in "+storyPkg+")")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: demo takes no arguments", errUsage)
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
	var storyBin []testPkg
	if *story {
		p.say("building the story's test binary (%s)", storyPkg)
		storyBin = h.tool.buildTests(ctx, p, []string{storyPkg}, h.work)
		if len(storyBin) != 1 || storyBin[0].err != nil || storyBin[0].bin == "" {
			return fmt.Errorf("build %s for the story: %v", storyPkg, storyBin)
		}
	}

	interactive := isTerminal(os.Stdin) && isTerminal(os.Stdout)
	cmdline := "console=ttyS0 panic=-1"
	if !interactive {
		cmdline += " gvmm.demo=auto" // the guest reports and powers off
	}
	if *extra != "" {
		cmdline += " " + *extra
	}

	if !nested {
		a := demoArgs(gvmmBin, gp.guest.kernel, gp.guest.initrd, *guestMem, *guestCPUs, cmdline)
		banner(p, interactive, false)
		cmd := exec.Command(a[0], a[1:]...)
		if interactive {
			cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
			if err := cmd.Run(); err != nil {
				return err
			}
		} else if err := directDemo(ctx, p, cmd, f); err != nil {
			return err
		}
		p.say("demo: the guest reached userspace and powered off")
		if len(storyBin) > 0 {
			parser := newConsoleParser()
			env := []string{"GVMM_REQUIRE_KVM=1", "GVMM_BIN=" + gvmmBin,
				"GVMM_GUEST_KERNEL=" + gp.guest.kernel, "GVMM_GUEST_INITRD=" + gp.guest.initrd}
			if why := runDirect(ctx, p, storyBin, env, storyTimeout, []string{"-test.run=" + storyRun}, f.timeout, parser); why != "" {
				return errors.New(why)
			}
			if err := storyResult(parser); err != nil {
				return err
			}
		}
		p.say("demo done")
		return nil
	}

	pl := l1Plan{
		mode:     "demo",
		demoArgs: demoArgs(l1GvmmBin, l1GuestKernel, l1GuestInitrd, *guestMem, *guestCPUs, cmdline),
		tests:    storyBin, testRun: storyRun, testTimeout: storyTimeout,
	}
	if !interactive {
		pl.heartbeat = 20 // only the non-interactive L1 has the second serial port
	}
	l1, err := h.writeL1(gp, gvmmBin, pl, f)
	if err != nil {
		return err
	}
	c := l1Config{kernel: gp.deb.vmlinuz(), initrd: l1, memMiB: f.memMiB, cpus: f.cpus, interactive: interactive}
	banner(p, interactive, true)
	if interactive {
		return runL1Interactive(ctx, c)
	}
	// Nested KVM under TCG sometimes loses a guest (a triple fault or an
	// L1 that wedges) for reasons outside gvmm; test mode retries a failed
	// test once in a fresh L1, and so does the demo, saying so.
	err = h.demoInL1(ctx, c, f, len(storyBin) > 0)
	if err != nil {
		p.say("demo failed: %v", err)
		p.say("retrying once in a fresh L1 (nested KVM under TCG is not fully reliable)")
		err = h.demoInL1(ctx, c, f, len(storyBin) > 0)
	}
	if err != nil {
		return err
	}
	p.say("demo done: the guest reached userspace inside L1 and powered off")
	if len(storyBin) > 0 {
		p.say("the story passed: every decision above is also in the hosts' audit logs")
	}
	return nil
}

// directDemo runs the non-interactive demo's gvmm on this host's /dev/kvm.
func directDemo(ctx context.Context, p *progress, cmd *exec.Cmd, f l1Flags) error {
	parser := newConsoleParser()
	parser.watchFor(guestUp)
	out := stream(ctx, p, cmd, f.timeout, f.silence, nil, func(s string) bool {
		parser.Line(s)
		return true
	})
	switch {
	case out.silent || out.timedOut:
		return errors.New("gvmm run was killed (see above)")
	case out.err != nil:
		return fmt.Errorf("gvmm run: %w", out.err)
	case !parser.sawLine(guestUp):
		return fmt.Errorf("the guest never printed %q", guestUp)
	}
	return nil
}

// The story of make demo: issue 6's scenario test, run with -test.v so
// its STORY lines show.
const (
	storyPkg     = "./tests/integration"
	storyTest    = "TestPersonalCloud"
	storyRun     = "^" + storyTest + "$"
	storyTimeout = 20 * time.Minute
)

// storyResult says whether the story's test ran and passed.
func storyResult(parser *consoleParser) error {
	r := parser.results[storyPkg]
	switch {
	case r == nil || !r.begun:
		return errors.New("the story did not start")
	case !r.ended:
		return errors.New("the story did not finish")
	case len(r.skipped) > 0:
		return fmt.Errorf("the story was skipped: %v", r.skipped)
	case r.rc != 0 || len(r.failed) > 0:
		return fmt.Errorf("the story failed (%v, status %d)", r.failed, r.rc)
	case !slices.Contains(r.passed, storyTest):
		return fmt.Errorf("%s did not run (a binary without it passes vacuously)", storyTest)
	}
	return nil
}

// demoInL1 boots L1 once with the demo plan and says what went wrong.
func (h *harness) demoInL1(ctx context.Context, c l1Config, f l1Flags, story bool) error {
	parser, out := h.bootL1(ctx, c, f, func() *consoleParser {
		pr := newConsoleParser()
		pr.watchFor(guestUp)
		return pr
	})
	if why := l1Problem(out, f); why != "" {
		return errors.New(why)
	}
	switch {
	case len(parser.errors) > 0:
		return fmt.Errorf("in L1: %s", strings.Join(parser.errors, "; "))
	case !parser.demoRan:
		return errors.New("L1 did not report gvmm's exit status")
	case parser.demoRC != 0:
		return fmt.Errorf("gvmm run exited with status %d in L1", parser.demoRC)
	case !parser.sawLine(guestUp):
		return fmt.Errorf("the guest never printed %q", guestUp)
	}
	if story {
		return storyResult(parser)
	}
	return nil
}

// banner says what is about to happen and how to get out.
func banner(p *progress, interactive, nested bool) {
	if nested {
		p.say("This host has no usable /dev/kvm, so the demo runs one level down: QEMU emulates")
		p.say("an AMD CPU with SVM (TCG, no hardware help), Linux boots in it (L1) and loads kvm-amd,")
		p.say("and gvmm runs in L1 on that /dev/kvm to boot the guest (L2). L1 boots in about 10 s,")
		p.say("the guest inside it in half a minute or more (every exit is emulated twice): be patient.")
	} else {
		p.say("Running gvmm directly on this host's /dev/kvm.")
	}
	if interactive {
		p.say("You get a shell in the guest (prompt \"guest# \"). Type poweroff to leave.")
		if nested {
			p.say("If anything hangs, Ctrl-a x quits QEMU.")
		}
	} else {
		p.say("Not on a terminal: the guest prints uname, its agent line and free, then powers off.")
	}
}

// shellMode implements "shell [flags]": an interactive shell in L1, with
// /dev/kvm, gvmm and the guest image, for debugging by hand.
func shellMode(ctx context.Context, p *progress, args []string) error {
	fs := flag.NewFlagSet("shell", flag.ContinueOnError)
	var f l1Flags
	f.register(fs, 0)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if !isTerminal(os.Stdin) || !isTerminal(os.Stdout) {
		return fmt.Errorf("%w: shell needs a terminal", errUsage)
	}
	h, err := newHarness(ctx, p, f.keep)
	if err != nil {
		return err
	}
	defer h.close()
	p.say("building gvmm")
	gvmmBin := filepath.Join(h.work, "gvmm")
	if err := h.tool.build(ctx, gvmmBin, "./cmd/gvmm"); err != nil {
		p.say("%v", err)
		p.say("going on without gvmm")
		gvmmBin = ""
	}
	gp, err := h.prepareGuest(ctx)
	if err != nil {
		return err
	}
	l1, err := h.writeL1(gp, gvmmBin, l1Plan{mode: "shell"}, f)
	if err != nil {
		return err
	}
	p.say("booting L1 with a shell on its console (about 10 s under TCG). poweroff leaves; Ctrl-a x quits QEMU.")
	p.say("in L1: %s, %s, %s", l1GvmmBin, l1GuestKernel, l1GuestInitrd)
	return runL1Interactive(ctx, l1Config{kernel: gp.deb.vmlinuz(), initrd: l1, memMiB: f.memMiB, cpus: f.cpus, interactive: true})
}
