package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// l1Config is how L1 is booted.
type l1Config struct {
	kernel, initrd string
	memMiB, cpus   int
	interactive    bool   // serial console and QEMU monitor on the terminal
	heartbeat      string // file that L1's second serial port writes to; "" for none
}

// l1Cmdline is L1's kernel command line. panic=-1 with QEMU's -no-reboot
// turns a panic into QEMU exiting; nokaslr keeps addresses in dumps of a
// wedged L1 readable; mitigations=off saves emulated work on a throwaway
// machine. L1 keeps time with the emulated HPET: it marks TCG's TSC
// unstable. tsc=reliable (TSC clocksource, a KVM master clock, so that
// KVM_GET_CLOCK gives the realtime and host TSC vmm/tsc.go needs) was
// tried and reverted: with it, 2-vCPU L2 guests stalled (RCU: "timer
// wakeup didn't happen"), hung at boot or triple-faulted: 3 failures in
// one full suite and 2 in one 6-round bench, none before it this session.
const l1Cmdline = "console=ttyS0 quiet panic=-1 nokaslr mitigations=off"

func (c l1Config) args() []string {
	a := []string{
		"-accel", "tcg", "-cpu", "EPYC,+svm",
		"-m", fmt.Sprint(c.memMiB), "-smp", fmt.Sprint(c.cpus),
		"-nodefaults", "-no-reboot", "-display", "none",
		"-kernel", c.kernel, "-initrd", c.initrd, "-append", l1Cmdline,
	}
	if c.interactive {
		// Serial console multiplexed with the monitor: Ctrl-a x quits.
		return append(a, "-serial", "mon:stdio")
	}
	a = append(a, "-serial", "stdio") // ttyS0, the console
	if c.heartbeat != "" {
		a = append(a, "-serial", "file:"+c.heartbeat) // ttyS1
	}
	return a
}

// streamOutcome is how a streamed process ended.
type streamOutcome struct {
	err      error // exit error, nil for status 0
	silent   bool  // killed by the silence watchdog
	timedOut bool  // killed by the overall timeout
}

// killGrace is how long stream waits for the output pipe to close after
// killing the process group.
const killGrace = 10 * time.Second

// stream runs cmd in its own process group with stdout and stderr merged,
// gives each line to the line function and relays it to p when that says
// to show it. The whole group (a test binary and the gvmm processes it
// started, say) is killed when ctx ends, after timeout, or after silence:
// no byte of output and no sign of life from alive (if not nil) for that
// long (0 disables the watchdog); kernel stall reports (stallReport) do not
// count as output. A soft lockup that the kernel reports as lasting silence
// or longer counts as silence too, even while alive says the rest of the
// machine runs: one CPU spinning in the kernel can hold up every test
// (seen: a gvmm stuck in L1's kernel for ten minutes, its other CPU still
// sending heartbeats).
func stream(ctx context.Context, p *progress, cmd *exec.Cmd, timeout, silence time.Duration, alive func() time.Time, line func(string) (show bool)) streamOutcome {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	pr, pw, err := os.Pipe()
	if err != nil {
		return streamOutcome{err: err}
	}
	defer pr.Close()
	cmd.Stdout, cmd.Stderr = pw, pw
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err = cmd.Start()
	pw.Close() // the child holds its own copy
	if err != nil {
		return streamOutcome{err: fmt.Errorf("start %s: %w", cmd.Path, err)}
	}

	var last atomic.Int64 // unix nanoseconds of the latest output
	last.Store(time.Now().UnixNano())
	var stuck atomic.Int64 // the longest soft lockup reported, in seconds
	lines := make(chan string, 256)
	stop := make(chan struct{}) // the reader's way out if we stop listening
	defer close(stop)
	go func() {
		defer close(lines)
		r := bufio.NewReaderSize(&activityReader{r: pr, last: &last}, 64<<10)
		lastReal := last.Load() // the latest line that was not a stall report
		for {
			s, err := r.ReadString('\n')
			if stallReport.MatchString(s) {
				last.Store(lastReal)
				if m := softLockup.FindStringSubmatch(s); m != nil {
					if n, err := strconv.ParseInt(m[1], 10, 64); err == nil && n > stuck.Load() {
						stuck.Store(n)
					}
				}
			} else if s != "" {
				lastReal = last.Load()
			}
			if s != "" {
				select {
				case lines <- strings.TrimRight(s, "\r\n"):
				case <-stop:
					return
				}
			}
			if err != nil {
				return
			}
		}
	}()

	var out streamOutcome
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	tickC, done := tick.C, ctx.Done() // set to nil once the group is killed
	var grace <-chan time.Time        // runs once the group is killed
	kill := func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		grace = time.After(killGrace)
		tickC, done = nil, nil
	}
loop:
	for {
		select {
		case s, ok := <-lines:
			if !ok {
				break loop
			}
			if line(s) {
				p.relay(s)
			}
		case <-tickC:
			latest := time.Unix(0, last.Load())
			if alive != nil {
				if t := alive(); t.After(latest) {
					latest = t
				}
			}
			switch {
			case silence > 0 && time.Since(latest) > silence:
				p.say("no output for %v: killing %s (wedged?)", silence, cmd.Path)
				out.silent = true
				kill()
			case silence > 0 && time.Duration(stuck.Load())*time.Second >= silence:
				p.say("a CPU reports a soft lockup of %ds: killing %s (wedged)", stuck.Load(), cmd.Path)
				out.silent = true
				kill()
			}
		case <-done:
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				p.say("timeout after %v: killing %s", timeout, cmd.Path)
				out.timedOut = true
			}
			kill()
		case <-grace:
			p.say("output of %s still open %v after the kill; not waiting for it", cmd.Path, killGrace)
			break loop
		}
	}
	out.err = cmd.Wait()
	return out
}

// stallReport matches the lines a wedged kernel still prints (with "quiet",
// only their first line): L1's soft-lockup watchdog and RCU stall reports.
// They keep coming while both vCPUs spin, so for the silence watchdog they
// are no sign of progress.
var stallReport = regexp.MustCompile(`watchdog: BUG: soft lockup|rcu: INFO: \w+ (self-)?detected stall`)

// softLockup reads how long a soft lockup report says its CPU is stuck.
var softLockup = regexp.MustCompile(`soft lockup - CPU#\d+ stuck for (\d+)s`)

// activityReader records when data last came through.
type activityReader struct {
	r    io.Reader
	last *atomic.Int64
}

func (a *activityReader) Read(b []byte) (int, error) {
	n, err := a.r.Read(b)
	if n > 0 {
		a.last.Store(time.Now().UnixNano())
	}
	return n, err
}

// l1Timing is what one L1 run measured, for the report.
type l1Timing struct {
	up, kvm, total time.Duration // to L1 UP, to KVM READY, to exit
}

// runL1 boots L1 once, non-interactively, relaying its console to p and
// feeding each line to parser. QEMU's warnings about CPUID features TCG
// lacks are harmless and counted instead of shown.
func runL1(ctx context.Context, p *progress, c l1Config, parser *consoleParser, timeout, silence time.Duration) (streamOutcome, l1Timing) {
	cmd := exec.Command("qemu-system-x86_64", c.args()...)
	start := time.Now()
	var t l1Timing
	tcgWarnings := 0
	alive := func() time.Time {
		if fi, err := os.Stat(c.heartbeat); err == nil && c.heartbeat != "" {
			return fi.ModTime()
		}
		return time.Time{}
	}
	out := stream(ctx, p, cmd, timeout, silence, alive, func(s string) bool {
		parser.Line(s)
		if strings.Contains(s, "TCG doesn't support requested feature") {
			tcgWarnings++
			return false
		}
		if t.up == 0 && parser.up {
			t.up = time.Since(start)
		}
		if t.kvm == 0 && parser.kvm {
			t.kvm = time.Since(start)
		}
		return true
	})
	t.total = time.Since(start)
	if tcgWarnings > 0 {
		p.say("(QEMU warned %d times about CPUID features TCG lacks; harmless)", tcgWarnings)
	}
	return out, t
}

// runL1Interactive boots L1 with its console and QEMU's monitor on the
// terminal (Ctrl-a x quits QEMU).
func runL1Interactive(ctx context.Context, c l1Config) error {
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", c.args()...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	return cmd.Run()
}
