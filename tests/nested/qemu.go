package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"time"
)

// l1Config is how L1 is booted.
type l1Config struct {
	kernel, initrd string
	memMiB, cpus   int
	interactive    bool // serial console and QEMU monitor on the terminal
}

// l1Cmdline is L1's kernel command line. panic=-1 with QEMU's -no-reboot
// turns a panic into QEMU exiting; nokaslr keeps addresses in dumps of a
// wedged L1 readable; mitigations=off saves emulated work on a throwaway
// machine.
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
	return append(a, "-serial", "stdio")
}

// streamOutcome is how a streamed process ended.
type streamOutcome struct {
	err      error         // exit error, nil for status 0
	silent   bool          // killed by the silence watchdog
	timedOut bool          // killed by the overall timeout
	firstOut time.Duration // from start to first output; 0 if none
}

// stream runs cmd with its stdout and stderr merged, gives each line to
// the line function and relays it to p when that says to show it. The process is killed when ctx ends, after timeout, or after
// silence without a byte of output (0 disables the watchdog).
func stream(ctx context.Context, p *progress, cmd *exec.Cmd, timeout, silence time.Duration, line func(string) (show bool)) streamOutcome {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	pr, pw, err := os.Pipe()
	if err != nil {
		return streamOutcome{err: err}
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	start := time.Now()
	if err := cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		return streamOutcome{err: fmt.Errorf("start %s: %w", cmd.Path, err)}
	}
	pw.Close() // the child holds its own copy

	var last atomic.Int64 // unix nanoseconds of the latest output
	last.Store(start.UnixNano())
	var first atomic.Int64
	lines := make(chan string, 256)
	go func() {
		defer close(lines)
		r := bufio.NewReaderSize(&activityReader{r: pr, last: &last, first: &first}, 64<<10)
		for {
			s, err := r.ReadString('\n')
			if s != "" {
				lines <- strings.TrimRight(s, "\r\n")
			}
			if err != nil {
				return
			}
		}
	}()

	var out streamOutcome
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	killed := false
	kill := func() {
		if !killed && cmd.Process != nil {
			cmd.Process.Kill()
			killed = true
		}
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
		case <-tick.C:
			if silence > 0 && !killed && time.Since(time.Unix(0, last.Load())) > silence {
				p.say("no output for %v: killing %s (wedged?)", silence, cmd.Path)
				out.silent = true
				kill()
			}
		case <-ctx.Done():
			if !killed {
				if errors.Is(ctx.Err(), context.DeadlineExceeded) {
					p.say("timeout after %v: killing %s", timeout, cmd.Path)
					out.timedOut = true
				}
				kill()
			}
		}
	}
	pr.Close()
	out.err = cmd.Wait()
	if f := first.Load(); f != 0 {
		out.firstOut = time.Unix(0, f).Sub(start)
	}
	return out
}

// activityReader records when data last (and first) came through.
type activityReader struct {
	r     io.Reader
	last  *atomic.Int64
	first *atomic.Int64
}

func (a *activityReader) Read(b []byte) (int, error) {
	n, err := a.r.Read(b)
	if n > 0 {
		now := time.Now().UnixNano()
		a.last.Store(now)
		a.first.CompareAndSwap(0, now)
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
	out := stream(ctx, p, cmd, timeout, silence, func(s string) bool {
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
		return !isHeartbeat(s)
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
