// Command bootbench times guest boots on the machine that has /dev/kvm
// (inside L1, or on a host with KVM): for each round it starts gvmm, QEMU
// -M microvm and QEMU -M pc in turn, each booting the same kernel and
// initramfs with the same memory and vCPUs and "gvmm.demo=auto" on the
// command line (the guest then reports and powers off by itself), and
// measures with the monotonic clock the time from starting the process to
// the guest's first userspace line ("gvmm-guest: userspace up") on its
// output, and to its exit. It prints one result line per boot (the format
// is in tests/nested/internal/benchfmt) as soon as the boot ends, so a
// run cut short still reports what it measured, and exits 1 if any boot
// failed. tests/nested builds it (static, CGO_ENABLED=0) for the bench
// mode.
//
// The guest's console is not relayed (under nested emulation a console
// costs time); the last lines of a failed boot are.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/gvmm/gvmm/tests/nested/internal/benchfmt"
)

// guestCmdline is the guest kernel command line of every VMM.
const guestCmdline = "console=ttyS0 quiet panic=-1 gvmm.demo=auto"

// tailLines is how many lines of a failed boot's output are shown.
const tailLines = 25

type config struct {
	n                int
	mem              string
	cpus             int
	kernel, initrd   string
	gvmm, qemu       string
	qemuData         string // -L for QEMU, "" for its built-in paths
	qemuLib          string // LD_LIBRARY_PATH for QEMU, "" for none
	timeout          time.Duration
	vmms             []string
	verbose, summary bool
}

func main() {
	var c config
	fs := flag.NewFlagSet("bootbench", flag.ExitOnError)
	fs.IntVar(&c.n, "n", 5, "rounds (each boots every VMM once)")
	fs.StringVar(&c.mem, "mem", "256M", "guest memory (a size with an M or G suffix)")
	fs.IntVar(&c.cpus, "cpus", 1, "guest vCPUs")
	fs.StringVar(&c.kernel, "kernel", "", "guest kernel (bzImage)")
	fs.StringVar(&c.initrd, "initrd", "", "guest initramfs")
	fs.StringVar(&c.gvmm, "gvmm", "gvmm", "gvmm binary")
	fs.StringVar(&c.qemu, "qemu", "qemu-system-x86_64", "QEMU binary")
	fs.StringVar(&c.qemuData, "qemu-data", "", "QEMU firmware folder (-L); empty: QEMU's own")
	fs.StringVar(&c.qemuLib, "qemu-lib", "", "LD_LIBRARY_PATH for QEMU; empty: none")
	fs.DurationVar(&c.timeout, "timeout", 5*time.Minute, "bound on one boot; a boot that takes longer is killed and fails")
	vmms := fs.String("vmms", "gvmm,qemu-microvm,qemu-pc", "comma-separated VMMs to time: gvmm, qemu-microvm, qemu-pc")
	fs.BoolVar(&c.verbose, "v", false, "relay every boot's output")
	fs.BoolVar(&c.summary, "summary", false, "print a table at the end (the harness prints its own)")
	fs.Parse(os.Args[1:])
	c.vmms = strings.Split(*vmms, ",")
	if fs.NArg() > 0 || c.n < 1 || c.kernel == "" || c.initrd == "" {
		fmt.Fprintln(os.Stderr, "usage: bootbench -kernel K -initrd I [flags]")
		fs.PrintDefaults()
		os.Exit(2)
	}
	for _, v := range c.vmms {
		if _, err := c.argv(v); err != nil {
			fmt.Fprintf(os.Stderr, "bootbench: %v\n", err)
			os.Exit(2)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, c, os.Stdout))
}

// argv is the command line that boots the guest with vmm.
func (c config) argv(vmm string) ([]string, error) {
	if vmm == "gvmm" {
		return []string{c.gvmm, "run", "--stats", "--kernel", c.kernel, "--initrd", c.initrd,
			"--memory", c.mem, "--cpus", fmt.Sprint(c.cpus), "--cmdline", guestCmdline}, nil
	}
	machine, ok := strings.CutPrefix(vmm, "qemu-")
	if !ok || (machine != "microvm" && machine != "pc") {
		return nil, fmt.Errorf("unknown VMM %q (want gvmm, qemu-microvm or qemu-pc)", vmm)
	}
	a := []string{c.qemu}
	if c.qemuData != "" {
		a = append(a, "-L", c.qemuData)
	}
	a = append(a, "-M", machine, "-enable-kvm", "-cpu", "host",
		"-m", c.mem, "-smp", fmt.Sprint(c.cpus),
		"-nodefaults", "-no-user-config", "-nographic", "-display", "none",
		"-serial", "stdio", "-no-reboot",
		"-kernel", c.kernel, "-initrd", c.initrd, "-append", guestCmdline)
	if machine == "pc" {
		a = append(a, "-vga", "none")
	}
	return a, nil
}

func (c config) env(vmm string) []string {
	env := os.Environ()
	if strings.HasPrefix(vmm, "qemu-") && c.qemuLib != "" {
		env = append(env, "LD_LIBRARY_PATH="+c.qemuLib)
	}
	return env
}

func run(ctx context.Context, c config, w io.Writer) int {
	fmt.Fprintf(w, "bootbench: %d rounds of %s; guest %s, %d vCPU(s), %q\n",
		c.n, strings.Join(c.vmms, ", "), c.mem, c.cpus, guestCmdline)
	for _, v := range c.vmms {
		if strings.HasPrefix(v, "qemu-") {
			qemuVersion(ctx, c, w)
			break
		}
	}
	var all []benchfmt.Result
	for i := 1; i <= c.n; i++ {
		for _, v := range c.vmms {
			var r benchfmt.Result
			if ctx.Err() != nil {
				r = benchfmt.Unmeasured(v, i, "interrupted")
			} else {
				a, _ := c.argv(v)
				r = boot(ctx, v, i, a, c.env(v), c.timeout, w, c.verbose)
			}
			fmt.Fprintln(w, r.String())
			all = append(all, r)
		}
	}
	if c.summary {
		for _, l := range benchfmt.Table(benchfmt.Summarize(all, c.vmms), c.n) {
			fmt.Fprintln(w, "bootbench: "+l)
		}
	}
	for _, r := range all {
		if !r.OK {
			return 1
		}
	}
	return 0
}

// qemuVersion prints QEMU's version line, or why it does not start (a
// missing library, say): the runs that follow would all fail the same way.
func qemuVersion(ctx context.Context, c config, w io.Writer) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.qemu, "-version")
	cmd.Env = c.env("qemu-pc")
	out, err := cmd.CombinedOutput()
	first, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	if err != nil {
		fmt.Fprintf(w, "bootbench: %s -version: %v: %s\n", c.qemu, err, strings.TrimSpace(string(out)))
		return
	}
	fmt.Fprintf(w, "bootbench: %s\n", first)
}

// boot runs argv once and times it. The process gets its own process
// group, which is killed on timeout or interruption.
func boot(ctx context.Context, vmm string, round int, argv, env []string, timeout time.Duration, w io.Writer, verbose bool) benchfmt.Result {
	r := benchfmt.Unmeasured(vmm, round, "")
	pr, pw, err := os.Pipe()
	if err != nil {
		r.Why = err.Error()
		return r
	}
	defer pr.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = pw, pw // stdin: /dev/null
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}

	start := time.Now()
	err = cmd.Start()
	pw.Close()
	if err != nil {
		r.Why = fmt.Sprintf("start: %v", err)
		return r
	}

	type seen struct {
		up    time.Duration // -1 if never
		stats benchfmt.Stats
		ok    bool // stats line seen
		tail  []string
	}
	got := make(chan seen, 1)
	go func() {
		s := seen{up: -1}
		br := bufio.NewReaderSize(pr, 64<<10)
		for {
			line, err := br.ReadString('\n')
			if line != "" {
				if s.up < 0 && strings.Contains(line, benchfmt.GuestUp) {
					s.up = time.Since(start)
				}
				line = strings.TrimRight(line, "\r\n")
				if st, ok := benchfmt.ParseStats(line); ok {
					s.stats, s.ok = st, true
				}
				if verbose {
					fmt.Fprintf(w, "bootbench: %s %d | %s\n", vmm, round, line)
				}
				s.tail = append(s.tail, line)
				if len(s.tail) > tailLines {
					s.tail = s.tail[1:]
				}
			}
			if err != nil {
				got <- s
				return
			}
		}
	}()

	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	t := time.NewTimer(timeout)
	defer t.Stop()
	killed := ""
	var werr error
	select {
	case werr = <-waited:
	case <-t.C:
		killed = fmt.Sprintf("killed after the %v timeout", timeout)
	case <-ctx.Done():
		killed = "interrupted"
	}
	if killed != "" {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		werr = <-waited
	}
	r.Exit = time.Since(start)
	// The output ends when the last holder of the pipe exits; a process
	// the VMM started and left behind must not hang the benchmark.
	var s seen
	select {
	case s = <-got:
	case <-time.After(10 * time.Second):
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		pr.Close()
		s = <-got
	}

	r.Up = s.up
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		r.MaxRSSKiB = ru.Maxrss // kilobytes on Linux
	}
	if s.ok { // else the summary counts the gvmm boot as unmeasured
		r.OverheadKiB, r.GuestKiB = s.stats.OverheadKiB, s.stats.GuestTouchedKiB
	}
	var ee *exec.ExitError
	switch {
	case killed != "":
	case werr == nil:
		r.RC = 0
	case errors.As(werr, &ee) && ee.Exited():
		r.RC = ee.ExitCode()
	}
	switch {
	case killed != "":
		r.Why = killed
	case werr != nil:
		r.Why = werr.Error()
	case r.Up < 0:
		r.Why = "exited without the guest's userspace line"
	default:
		r.OK = true
	}
	if !r.OK && !verbose {
		fmt.Fprintf(w, "bootbench: %s round %d failed (%s); its last %d lines:\n", vmm, round, r.Why, len(s.tail))
		for _, l := range s.tail {
			fmt.Fprintf(w, "bootbench: %s %d | %s\n", vmm, round, l)
		}
	}
	return r
}
