// Command iobench measures guest I/O throughput on the machine that has
// /dev/kvm (inside L1, or on a host with KVM), for gvmm and for QEMU with
// the same devices: guest sequential write and read on virtio-blk, and
// guest-to-host TCP on virtio-net over a TAP. tests/nested builds it
// (static, CGO_ENABLED=0) for the bench mode, which runs it after
// bootbench in the same L1.
//
// For each round it boots the guest image once with each VMM in turn, the
// same kernel, initramfs, memory and vCPUs, with:
//
//   - a fresh sparse raw image of -disk-mib MiB in -dir (L1's root is a
//     tmpfs-like rootfs, so the image lives in L1's RAM) as virtio-blk;
//     gvmm opens it without O_DIRECT (the host page cache is used, writes
//     are flushed on the guest's flush), so QEMU gets
//     cache=writeback,aio=threads, the same semantics;
//   - a TAP as virtio-net, created by the VMM (gvmm --net tap=NAME; QEMU
//     -netdev tap,ifname=NAME,script=no,downscript=no,vhost=off: both
//     devices are served in the VMM's user space, no vhost-net) that
//     iobench addresses as 10.0.2.1/24 once it appears; the guest is
//     10.0.2.15.
//
// It drives the guest's shell over the console (the VMM's stdin and
// stdout) and, -reps times per boot, runs "agent disk write /dev/vda N",
// "agent disk read /dev/vda N" (tests/guest/agent: O_DIRECT, 1 MiB
// transfers, the write ends with fdatasync; timed by the guest's clock)
// and "agent tcpsend 10.0.2.1:5001 N" to a receiver here, which times the
// transfer from accepting the connection to its end. It prints one result
// line per transfer (format in tests/nested/internal/benchfmt) as soon as
// it is measured, then the guest's block, packet and interrupt counters
// and gvmm run --stats's lines (exit counts), and exits 1 if any transfer
// failed. For each net-tx transfer it also prints where the VMM's CPU
// time went (its vCPU threads, the guest, its other threads, each split
// into kernel and user time; the four busiest other threads with the
// system calls they were sampled in, by number: 35 nanosleep, 202 futex,
// 232/281 epoll_wait/epoll_pwait) and how busy this machine's CPUs were,
// since in L1 the VMM's device work and the guest share two CPUs.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/gvmm/gvmm/tests/nested/internal/benchfmt"
)

// guestCmdline is the guest kernel command line of every VMM: no
// gvmm.demo=auto, so the guest starts a shell on its console.
const guestCmdline = "console=ttyS0 quiet panic=-1"

// Addresses on the TAP's link, and the receiver's port.
const (
	hostIP    = "10.0.2.1"
	guestIP   = "10.0.2.15"
	guestMAC  = "52:54:00:12:34:56"
	recvPort  = 5001
	guestDisk = "/dev/vda"
)

// tailLines is how many console lines of a failed boot are shown.
const tailLines = 30

type config struct {
	runs, reps       int
	diskMiB, netMiB  int
	mem              string
	cpus             int
	kernel, initrd   string
	gvmm, qemu       string
	qemuData         string // -L for QEMU, "" for its built-in paths
	qemuLib          string // LD_LIBRARY_PATH for QEMU, "" for none
	dir              string // where the disk images go
	bootTimeout      time.Duration
	opTimeout        time.Duration
	vmms             []string
	verbose, summary bool
	// cpuProfile: profile gvmm's first boot and print the profile.
	cpuProfile bool
}

func main() {
	var c config
	fs := flag.NewFlagSet("iobench", flag.ExitOnError)
	fs.IntVar(&c.runs, "n", 3, "rounds (each boots every VMM once)")
	fs.IntVar(&c.reps, "reps", 1, "measurements of each test per boot")
	fs.IntVar(&c.diskMiB, "disk-mib", 64, "MiB the guest writes, then reads, on virtio-blk per measurement")
	fs.IntVar(&c.netMiB, "net-mib", 64, "MiB the guest sends over TCP per measurement")
	fs.StringVar(&c.mem, "mem", "256M", "guest memory (a size with an M or G suffix)")
	fs.IntVar(&c.cpus, "cpus", 1, "guest vCPUs")
	fs.StringVar(&c.kernel, "kernel", "", "guest kernel (bzImage)")
	fs.StringVar(&c.initrd, "initrd", "", "guest initramfs (tests/guest, with the agent)")
	fs.StringVar(&c.gvmm, "gvmm", "gvmm", "gvmm binary")
	fs.StringVar(&c.qemu, "qemu", "qemu-system-x86_64", "QEMU binary")
	fs.StringVar(&c.qemuData, "qemu-data", "", "QEMU firmware folder (-L); empty: QEMU's own")
	fs.StringVar(&c.qemuLib, "qemu-lib", "", "LD_LIBRARY_PATH for QEMU; empty: none")
	fs.StringVar(&c.dir, "dir", os.TempDir(), "folder for the disk images (the same for every VMM)")
	fs.DurationVar(&c.bootTimeout, "boot-timeout", 5*time.Minute, "bound on a boot to the guest's shell")
	fs.DurationVar(&c.opTimeout, "op-timeout", 5*time.Minute, "bound on one guest command (one transfer)")
	vmms := fs.String("vmms", "gvmm,qemu", "comma-separated VMMs: gvmm, qemu (QEMU -M pc)")
	fs.BoolVar(&c.verbose, "v", false, "relay every boot's console")
	fs.BoolVar(&c.summary, "summary", false, "print a table at the end (the harness prints its own)")
	fs.BoolVar(&c.cpuProfile, "cpuprofile", false, "CPU-profile gvmm's first boot (GVMM_CPUPROFILE) and print the profile, base64, between "+benchfmt.ProfileBegin+" and "+benchfmt.ProfileEnd+" lines")
	fs.Parse(os.Args[1:])
	c.vmms = strings.Split(*vmms, ",")
	if fs.NArg() > 0 || c.runs < 1 || c.reps < 1 || c.diskMiB < 1 || c.netMiB < 1 || c.kernel == "" || c.initrd == "" {
		fmt.Fprintln(os.Stderr, "usage: iobench -kernel K -initrd I [flags]")
		fs.PrintDefaults()
		os.Exit(2)
	}
	for _, v := range c.vmms {
		if _, err := c.argv(v, "x.img", "tap0"); err != nil {
			fmt.Fprintf(os.Stderr, "iobench: %v\n", err)
			os.Exit(2)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, c, os.Stdout))
}

// argv is the command line that boots the guest with vmm, disk img and
// the TAP tap.
func (c config) argv(vmm, img, tap string) ([]string, error) {
	switch vmm {
	case "gvmm":
		return []string{c.gvmm, "run", "--stats", "--kernel", c.kernel, "--initrd", c.initrd,
			"--memory", c.mem, "--cpus", fmt.Sprint(c.cpus), "--cmdline", guestCmdline,
			"--disk", img, "--net", "tap=" + tap + ",mac=" + guestMAC}, nil
	case "qemu":
		a := []string{c.qemu}
		if c.qemuData != "" {
			a = append(a, "-L", c.qemuData)
		}
		return append(a, "-M", "pc", "-enable-kvm", "-cpu", "host",
			"-m", c.mem, "-smp", fmt.Sprint(c.cpus),
			"-nodefaults", "-no-user-config", "-nographic", "-display", "none", "-vga", "none",
			"-serial", "stdio", "-no-reboot",
			"-kernel", c.kernel, "-initrd", c.initrd, "-append", guestCmdline,
			// gvmm's virtio-blk: the host page cache, flush = fdatasync.
			"-drive", "file="+img+",format=raw,if=none,id=d0,cache=writeback,aio=threads",
			"-device", "virtio-blk-pci,drive=d0",
			// gvmm's virtio-net: a TAP with vnet headers, served in user
			// space. romfile= : no option ROM (none is needed with -kernel,
			// and -nodefaults brings none).
			"-netdev", "tap,id=n0,ifname="+tap+",script=no,downscript=no,vhost=off",
			"-device", "virtio-net-pci,netdev=n0,mac="+guestMAC+",romfile="), nil
	}
	return nil, fmt.Errorf("unknown VMM %q (want gvmm or qemu)", vmm)
}

func (c config) env(vmm string) []string {
	env := os.Environ()
	if vmm == "qemu" && c.qemuLib != "" {
		env = append(env, "LD_LIBRARY_PATH="+c.qemuLib)
	}
	return env
}

func run(ctx context.Context, c config, w io.Writer) int {
	fmt.Fprintf(w, "iobench: %d rounds of %s, %d measurement(s) per boot; guest %s, %d vCPU(s); disk %d MiB (images in %s), TCP %d MiB\n",
		c.runs, strings.Join(c.vmms, ", "), c.reps, c.mem, c.cpus, c.diskMiB, c.dir, c.netMiB)
	var all []benchfmt.IOResult
	emit := func(r benchfmt.IOResult) {
		fmt.Fprintln(w, r.String())
		all = append(all, r)
	}
	for round := 1; round <= c.runs; round++ {
		for _, v := range c.vmms {
			b := boot{c: c, vmm: v, round: round, w: w}
			if ctx.Err() != nil {
				b.failAll(emit, "interrupted")
				continue
			}
			b.run(ctx, emit)
		}
	}
	if c.summary {
		for _, l := range benchfmt.IOTable(benchfmt.SummarizeIO(all, c.vmms), c.vmms, c.runs*c.reps) {
			fmt.Fprintln(w, "iobench: "+l)
		}
	}
	for _, r := range all {
		if !r.OK {
			return 1
		}
	}
	return 0
}

// boot is one VMM process and the measurements made in it.
type boot struct {
	c     config
	vmm   string
	round int
	w     io.Writer
	// measured counts the results given per test, so that a boot that
	// fails midway reports the rest as failed.
	measured map[string]int
}

// runNo is the result number of the rep-th measurement (1-based) in this
// boot.
func (b *boot) runNo(rep int) int { return (b.round-1)*b.c.reps + rep }

// failAll reports every measurement this boot has not reported yet as
// failed, with why.
func (b *boot) failAll(emit func(benchfmt.IOResult), why string) {
	for _, t := range benchfmt.IOTests {
		for rep := b.measured[t] + 1; rep <= b.c.reps; rep++ {
			emit(benchfmt.IOUnmeasured(b.vmm, b.runNo(rep), t, why))
		}
	}
}

func (b *boot) say(format string, args ...any) {
	fmt.Fprintf(b.w, "iobench: %s round %d: %s\n", b.vmm, b.round, fmt.Sprintf(format, args...))
}

func (b *boot) run(ctx context.Context, emit func(benchfmt.IOResult)) {
	b.measured = map[string]int{}
	record := func(r benchfmt.IOResult) {
		b.measured[r.Test]++
		emit(r)
	}
	img := filepath.Join(b.c.dir, fmt.Sprintf("iobench-%s-%d.img", b.vmm, b.round))
	if err := makeImage(img, int64(b.c.diskMiB)<<20); err != nil {
		b.failAll(emit, err.Error())
		return
	}
	defer os.Remove(img)
	tap := fmt.Sprintf("iob%s%d", b.vmm[:1], b.round)
	argv, _ := b.c.argv(b.vmm, img, tap)
	env := b.c.env(b.vmm)
	profile := ""
	if b.c.cpuProfile && b.vmm == "gvmm" && b.round == 1 {
		profile = filepath.Join(b.c.dir, "iobench-gvmm.pprof")
		env = append(env, "GVMM_CPUPROFILE="+profile)
		defer benchfmt.DumpProfile(b.w, "iobench-gvmm", profile)
	}
	g, err := startGuest(argv, env, b.w, fmt.Sprintf("%s %d", b.vmm, b.round), b.c.verbose)
	if err != nil {
		b.failAll(emit, err.Error())
		return
	}
	why := b.measure(ctx, g, tap, record)
	if why == "" {
		// A clean end: the guest powers off and the VMM exits 0.
		g.send("poweroff\n")
		if err := g.wait(time.Minute); err != nil {
			why = fmt.Sprintf("after poweroff: %v", err)
		}
	} else {
		g.kill()
	}
	for _, l := range g.stats {
		b.say("%s", l)
	}
	if why != "" {
		b.say("failed: %s; the last %d console lines:", why, len(g.tail))
		for _, l := range g.tail {
			fmt.Fprintf(b.w, "iobench: %s %d | %s\n", b.vmm, b.round, l)
		}
		b.failAll(emit, why)
	}
}

// measure boots to the shell, sets up the network and runs the tests; it
// returns why it stopped early, "" if it did not.
func (b *boot) measure(ctx context.Context, g *guest, tap string, record func(benchfmt.IOResult)) string {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	start := time.Now()
	if _, err := g.waitFor(ctx, regexp.MustCompile(`gvmm-guest: modules loaded`), b.c.bootTimeout); err != nil {
		return fmt.Sprintf("boot: %v", err)
	}
	if _, err := g.waitFor(ctx, regexp.MustCompile(`guest# `), b.c.bootTimeout); err != nil {
		return fmt.Sprintf("boot: %v", err)
	}
	b.say("guest shell after %v", time.Since(start).Round(time.Millisecond))
	if err := hostTAP(ctx, tap, 30*time.Second); err != nil {
		return err.Error()
	}
	if _, err := g.shell(ctx, fmt.Sprintf("ip addr add %s/24 dev eth0 && ip link set eth0 up && ping -c 1 -W 10 %s >/dev/null", guestIP, hostIP), b.c.opTimeout); err != nil {
		return fmt.Sprintf("guest network: %v", err)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(hostIP, strconv.Itoa(recvPort)))
	if err != nil {
		return fmt.Sprintf("receiver: %v", err)
	}
	defer ln.Close()

	for rep := 1; rep <= b.c.reps; rep++ {
		n := b.runNo(rep)
		for _, op := range []string{"write", "read"} {
			out, err := g.shell(ctx, fmt.Sprintf("agent disk %s %s %d", op, guestDisk, b.c.diskMiB), b.c.opTimeout)
			if err != nil {
				return fmt.Sprintf("blk-%s: %v", op, err)
			}
			r, err := parseAgent(out, "blk-"+op)
			if err != nil {
				return err.Error()
			}
			r.VMM, r.Run = b.vmm, n
			record(r)
		}
		r, why := b.netTx(ctx, g, ln.(*net.TCPListener))
		r.VMM, r.Run = b.vmm, n
		if why != "" {
			return why
		}
		record(r)
	}
	b.guestCounters(ctx, g)
	return ""
}

// countersCmd prints, after the measurements, what explains differences
// between VMMs with the same guest: requests the block layer completed
// (/sys/block/vda/stat: reads, merges, sectors, ticks, then the same for
// writes), packets (few tx packets per MiB mean TSO was negotiated) and
// interrupts per virtio vector.
const countersCmd = "for f in /sys/block/vda/stat /sys/class/net/eth0/statistics/tx_packets /sys/class/net/eth0/statistics/rx_packets; do echo \"$f: $(cat $f)\"; done; grep -i virtio /proc/interrupts"

// counterLine matches the lines of countersCmd's output.
var counterLine = regexp.MustCompile(`^(/sys/\S+: |\s*\d+:\s)`)

// guestCounters logs the guest's counters (countersCmd); failing to is
// no failure of the benchmark.
func (b *boot) guestCounters(ctx context.Context, g *guest) {
	out, err := g.shell(ctx, countersCmd, b.c.opTimeout)
	if err != nil {
		b.say("guest counters: %v", err)
		return
	}
	for _, l := range out {
		// The rest is the echoed command line, wrapped by the terminal,
		// and prompts.
		if counterLine.MatchString(l) {
			b.say("guest counters: %s", strings.Join(strings.Fields(l), " "))
		}
	}
}

// guestPackets reads the guest NIC's tx and rx packet counters (nil if it
// cannot: that is no failure of the benchmark).
func (b *boot) guestPackets(ctx context.Context, g *guest) []uint64 {
	out, err := g.shell(ctx, "echo iob-pkts $(cat /sys/class/net/eth0/statistics/tx_packets /sys/class/net/eth0/statistics/rx_packets)", b.c.opTimeout)
	if err != nil {
		return nil
	}
	for _, l := range out {
		var tx, rx uint64
		if n, _ := fmt.Sscanf(strings.TrimSpace(l), "iob-pkts %d %d", &tx, &rx); n == 2 {
			return []uint64{tx, rx}
		}
	}
	return nil
}

// netTx has the guest send netMiB MiB to ln and times it at the receiver.
func (b *boot) netTx(ctx context.Context, g *guest, ln *net.TCPListener) (benchfmt.IOResult, string) {
	type recv struct {
		n   int64
		d   time.Duration
		err error
	}
	got := make(chan recv, 1)
	ln.SetDeadline(time.Now().Add(b.c.opTimeout))
	go func() {
		c, err := ln.AcceptTCP()
		if err != nil {
			got <- recv{err: fmt.Errorf("no connection from the guest: %w", err)}
			return
		}
		defer c.Close()
		start := time.Now()
		c.SetDeadline(start.Add(b.c.opTimeout))
		n, err := io.Copy(io.Discard, c)
		got <- recv{n, time.Since(start), err}
	}()
	pkts := b.guestPackets(ctx, g)
	probe, kprobe := startCPUProbe(g.cmd.Process.Pid), startKVMProbe(g.cmd.Process.Pid)
	out, err := g.shell(ctx, fmt.Sprintf("agent tcpsend %s:%d %d", hostIP, recvPort, b.c.netMiB), b.c.opTimeout)
	cpu, kvm := probe.report(), kprobe.report(b.c.netMiB)
	if err != nil {
		ln.SetDeadline(time.Now()) // ends a pending accept
		<-got
		return benchfmt.IOResult{}, fmt.Sprintf("net-tx: %v", err)
	}
	var rv recv
	select {
	case rv = <-got:
	case <-time.After(30 * time.Second):
		return benchfmt.IOResult{}, "net-tx: the guest finished sending but the receiver did not see the end"
	}
	want := int64(b.c.netMiB) << 20
	if rv.err != nil || rv.n != want {
		return benchfmt.IOResult{}, fmt.Sprintf("net-tx: received %d of %d bytes: %v", rv.n, want, rv.err)
	}
	if sent, err := parseAgent(out, benchfmt.TestNetTx); err == nil {
		b.say("net-tx: the guest's own time to send and see the close: %v", sent.Elapsed.Round(time.Millisecond))
	}
	b.say("net-tx: %s", cpu)
	b.say("net-tx: %s", kvm)
	if after := b.guestPackets(ctx, g); pkts != nil && after != nil {
		b.say("net-tx: guest per MiB: tx_packets=%.0f rx_packets=%.0f", float64(after[0]-pkts[0])/float64(b.c.netMiB),
			float64(after[1]-pkts[1])/float64(b.c.netMiB))
	}
	return benchfmt.IOResult{Test: benchfmt.TestNetTx, OK: true, Bytes: rv.n, Elapsed: rv.d}, ""
}

// agentLine is what the guest agent prints for one transfer.
var agentLine = regexp.MustCompile(`gvmm-iobench: op=(\S+) bytes=(\d+) ns=(\d+)`)

// parseAgent finds the agent's result for test in a command's output.
func parseAgent(out []string, test string) (benchfmt.IOResult, error) {
	for _, l := range out {
		m := agentLine.FindStringSubmatch(l)
		if m == nil || m[1] != test {
			continue
		}
		n, _ := strconv.ParseInt(m[2], 10, 64)
		ns, _ := strconv.ParseInt(m[3], 10, 64)
		return benchfmt.IOResult{Test: test, OK: true, Bytes: n, Elapsed: time.Duration(ns)}, nil
	}
	return benchfmt.IOResult{}, fmt.Errorf("%s: no result line from the agent in %q", test, strings.Join(out, " | "))
}

// makeImage creates a sparse raw image of size bytes, replacing any.
func makeImage(path string, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("disk image: %w", err)
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("disk image %s: %w", path, err)
	}
	return nil
}

// hostTAP waits for the VMM's TAP to appear, then addresses it and
// brings it up (gvmm brings its own up; QEMU with script=no does not).
func hostTAP(ctx context.Context, name string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var link netlink.Link
	for {
		var err error
		if link, err = netlink.LinkByName(name); err == nil {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("TAP %s never appeared: %w", name, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	addr, err := netlink.ParseAddr(hostIP + "/24")
	if err != nil {
		return err
	}
	if err := netlink.AddrAdd(link, addr); err != nil {
		return fmt.Errorf("address TAP %s: %w", name, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("bring TAP %s up: %w", name, err)
	}
	return nil
}

// guest is a running VMM whose console is its stdin and stdout.
type guest struct {
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	lines   chan string // console lines; closed at EOF
	waited  chan error  // the process's exit
	tail    []string
	stats   []string // gvmm run --stats's lines
	w       io.Writer
	label   string
	verbose bool
	seq     int // numbers shell commands' end markers
}

// startGuest starts argv in its own process group.
func startGuest(argv, env []string, w io.Writer, label string, verbose bool) (*guest, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	err = cmd.Start()
	pw.Close()
	if err != nil {
		pr.Close()
		return nil, fmt.Errorf("start %s: %w", argv[0], err)
	}
	g := &guest{cmd: cmd, stdin: stdin, lines: make(chan string, 1024), waited: make(chan error, 1),
		w: w, label: label, verbose: verbose}
	go func() {
		defer close(g.lines)
		defer pr.Close()
		splitLines(pr, g.lines)
	}()
	go func() { g.waited <- cmd.Wait() }()
	return g, nil
}

// splitLines sends r's lines to out without their line ends. The shell's
// prompt ends without a newline (busybox may add a terminal query after
// it), so a partial line that holds "# " when the output pauses is sent as
// a line of its own.
func splitLines(r io.Reader, out chan<- string) {
	buf := make([]byte, 64<<10)
	var part []byte
	for {
		n, err := r.Read(buf)
		part = append(part, buf[:n]...)
		for {
			i := strings.IndexByte(string(part), '\n')
			if i < 0 {
				break
			}
			out <- strings.TrimRight(string(part[:i]), "\r")
			part = part[i+1:]
		}
		if strings.Contains(string(part), "# ") {
			out <- string(part)
			part = nil
		}
		if err != nil {
			if len(part) > 0 {
				out <- strings.TrimRight(string(part), "\r")
			}
			return
		}
	}
}

func (g *guest) send(s string) { io.WriteString(g.stdin, s) }

// next returns the next console line, or an error at EOF or timeout.
func (g *guest) next(ctx context.Context, t <-chan time.Time) (string, error) {
	select {
	case l, ok := <-g.lines:
		if !ok {
			return "", errors.New("the VMM's output ended")
		}
		g.keep(l)
		return l, nil
	case <-t:
		return "", errors.New("timed out")
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// waitFor reads console lines until one matches re, returning the lines
// read before it.
func (g *guest) waitFor(ctx context.Context, re *regexp.Regexp, timeout time.Duration) ([]string, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	var before []string
	for {
		l, err := g.next(ctx, t.C)
		if err != nil {
			return before, fmt.Errorf("waiting for %q: %w", re, err)
		}
		if re.MatchString(l) {
			return before, nil
		}
		before = append(before, l)
	}
}

// shell runs cmdline in the guest's shell and returns its output; a
// non-zero exit status is an error that carries the output.
func (g *guest) shell(ctx context.Context, cmdline string, timeout time.Duration) ([]string, error) {
	g.seq++
	// The quotes keep the echoed command line from matching.
	g.send(fmt.Sprintf("%s; echo iob-\"end %d rc=$?\"\n", cmdline, g.seq))
	end := regexp.MustCompile(fmt.Sprintf(`iob-end %d rc=(\d+)`, g.seq))
	t := time.NewTimer(timeout)
	defer t.Stop()
	var out []string
	for {
		l, err := g.next(ctx, t.C)
		if err != nil {
			return out, fmt.Errorf("%q: %w", cmdline, err)
		}
		if m := end.FindStringSubmatch(l); m != nil {
			if m[1] != "0" {
				return out, fmt.Errorf("%q: exit status %s: %s", cmdline, m[1], strings.Join(out, " | "))
			}
			return out, nil
		}
		out = append(out, l)
	}
}

// wait waits up to timeout for the VMM to exit, reading (and keeping the
// tail of) its output meanwhile, and kills it after that.
func (g *guest) wait(timeout time.Duration) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		select {
		case err := <-g.waited:
			// Drain what is left of the output, briefly.
			drain := time.After(5 * time.Second)
			for {
				if _, rerr := g.next(context.Background(), drain); rerr != nil {
					return err
				}
			}
		case l, ok := <-g.lines:
			if !ok {
				g.lines = nil // EOF: keep waiting for the exit
				continue
			}
			g.keep(l)
		case <-t.C:
			g.kill()
			return fmt.Errorf("still running %v after the guest's poweroff; killed", timeout)
		}
	}
}

// keep records a console line: the tail, gvmm's stats, -v.
func (g *guest) keep(l string) {
	if g.verbose {
		fmt.Fprintf(g.w, "iobench: %s | %s\n", g.label, l)
	}
	if strings.HasPrefix(l, benchfmt.StatsPrefix) || strings.HasPrefix(l, "gvmm: exits: ") {
		g.stats = append(g.stats, l)
	}
	g.tail = append(g.tail, l)
	if len(g.tail) > tailLines {
		g.tail = g.tail[1:]
	}
}

// kill ends the VMM's process group and waits for it.
func (g *guest) kill() {
	syscall.Kill(-g.cmd.Process.Pid, syscall.SIGKILL)
	select {
	case <-g.waited:
	case <-time.After(10 * time.Second):
	}
}
