package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/gvmm/gvmm/kvm"
	"github.com/gvmm/gvmm/memguard"
	"github.com/gvmm/gvmm/vmm"
	"golang.org/x/sys/unix"
)

const runSynopsis = `--kernel PATH [--initrd PATH] [--cmdline STRING] [--memory SIZE] [--cpus N]
         [--disk PATH[,readonly]]... [--net tap=NAME[,bridge=BR][,mac=MAC]]... [--channel PATH]
         [--api-socket PATH]
       gvmm run --restore FILE [--disk ...] [--net ...] [--channel PATH] [--api-socket PATH]

Boots a Linux bzImage on KVM. The guest's first serial port (ttyS0) is
connected to this terminal: when standard input is a terminal it is put in
raw mode, and Ctrl-A x ends gvmm (Ctrl-A Ctrl-A sends a literal Ctrl-A,
Ctrl-A h lists the keys). gvmm exits with status 0 when the guest powers off
or reboots, and non-zero with a message naming the cause when the guest or
KVM fails (triple fault, emulation failure, failed VM entry).

Devices: each --disk is a virtio-blk disk (the guest sees /dev/vda, /dev/vdb,
... in order); each --net is a virtio-net device on a TAP interface, which
gvmm creates and brings up (on a bridge if given) unless a TAP of that name
exists; --channel PATH relays a unix socket to a virtio-console port (the
guest's /dev/hvc0), one connection at a time; a virtio-rng entropy device is
always present. The guest kernel needs the virtio_pci driver and those of
the devices (virtio_blk, virtio_net, virtio_console, virtio-rng).

With --restore, the machine (memory, vCPUs, devices) comes from a file
written by gvmm snapshot, and the guest carries on where it stopped; its
devices use the same disk images, TAPs and channel socket as before unless
--disk, --net or --channel name others.`

const defaultCmdline = "console=ttyS0"

func runCmd(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "run", runSynopsis)
	kernel := fs.String("kernel", "", "Linux `bzImage` to boot (required)")
	initrd := fs.String("initrd", "", "initramfs `file` to load with the kernel")
	cmdline := fs.String("cmdline", defaultCmdline, "kernel command `line`")
	memory := fs.String("memory", "512M", "guest RAM `size` (bytes, or with a K, M or G suffix)")
	cpus := fs.Int("cpus", 1, "number of vCPUs")
	onReboot := fs.String("on-reboot", "exit", "what a guest reboot does: `exit` (status 0) or restart")
	kvmPath := fs.String("kvm", "/dev/kvm", "KVM device `path`")
	var disks diskFlags
	fs.Var(&disks, "disk", "raw disk image `PATH[,readonly]` for a virtio-blk disk (repeatable)")
	var nets netFlags
	fs.Var(&nets, "net", "virtio-net on a TAP: `tap=NAME[,bridge=BR][,mac=MAC]` (repeatable)")
	channel := fs.String("channel", "", "host-guest channel: a unix socket at `path` relayed to the guest's /dev/hvc0")
	apiSocket := fs.String("api-socket", "", "serve the control API (status, pause, resume, snapshot, migrate) on a unix socket at `path`")
	restore := fs.String("restore", "", "start from a snapshot `file` (gvmm snapshot) instead of booting; --disk, --net, --channel replace the saved machine's devices of that kind")
	memguardMax := fs.Int("memguard-max-regions", memguard.DefaultMaxRegions, "the most protected memory regions (memguard) the guest may hold at once; more are refused with ENOSPC")
	memguardFaults := fs.Bool("memguard-faults", false, "turn a refused access to protected guest memory (memguard) into a #GP in the guest instead of reading zeros or dropping the write")
	stats := fs.Bool("stats", false, "print gvmm's run time and memory use (peak RSS, guest RAM touched, overhead) on stderr at exit")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *restore != "" {
		var clash []string
		fs.Visit(func(f *flag.Flag) {
			switch f.Name {
			case "kernel", "initrd", "cmdline", "memory", "cpus":
				clash = append(clash, "--"+f.Name)
			}
		})
		if len(clash) > 0 {
			return usageError("--restore takes the machine from the snapshot; %s cannot be given with it", strings.Join(clash, ", "))
		}
	} else if *kernel == "" {
		return usageError("missing --kernel PATH (see gvmm run --help)")
	}
	mem, err := vmm.ParseSize(*memory)
	if err != nil {
		return usageError("--memory: %v", err)
	}
	if *onReboot != "exit" && *onReboot != "restart" {
		return usageError("--on-reboot: %q is neither exit nor restart", *onReboot)
	}
	cfg := vmm.Config{
		KernelPath:  *kernel,
		InitrdPath:  *initrd,
		Cmdline:     *cmdline,
		MemoryBytes: (mem + 4095) &^ 4095,
		CPUs:        *cpus,
		Disks:       disks,
		Nets:        nets,
		Channel:     *channel,
		Console:     e.stdout,
		KVMPath:     *kvmPath,
		Log:         e.log,

		MemguardInjectFaults: *memguardFaults,
		MemguardMaxRegions:   *memguardMax,
	}
	if *memguardMax < 1 {
		return usageError("--memguard-max-regions %d: want at least 1", *memguardMax)
	}
	if *restore != "" {
		cfg.Incoming = true
	} else if err := cfg.Validate(); err != nil {
		return usageError("%v", err)
	}

	con, err := newConsole(e.stdin)
	if err != nil {
		return err
	}
	defer con.restore()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	holder := machineHolder{log: e.log, workers: e.procs}
	stopAPI, err := serveAPI(ctx, cancel, *apiSocket, &holder, e)
	if err != nil {
		return err
	}
	defer stopAPI()

	var m *vmm.Machine
	var incoming func(context.Context) error
	if *restore != "" {
		var comps []vmm.StateComponent
		t0 := time.Now()
		if m, comps, err = openSnapshot(ctx, *restore, deviceOverrides{disks: disks, nets: nets, channel: *channel}, cfg); err != nil {
			return err
		}
		e.log.Info("snapshot read", "path", *restore, "took", time.Since(t0))
		incoming = func(ctx context.Context) error {
			if err := m.Pause(ctx); err != nil { // wait until the vCPUs parked
				return err
			}
			return m.RestoreState(ctx, comps, vmm.RestoreOptions{})
		}
	} else if m, err = vmm.New(cfg); err != nil {
		return explainNewError(err)
	}
	addVCPUProcs(e.procs, m.Description().CPUs)
	holder.set(m)
	stopProfile, err := startCPUProfile()
	if err != nil {
		m.Close()
		return err
	}
	start := time.Now()
	reason, err := runMachine(ctx, m, con, incoming)
	if perr := stopProfile(); perr != nil {
		e.log.Warn("CPU profile", "err", perr)
	}
	holder.retire()
	if *stats {
		printStats(e.stderr, m, time.Since(start))
	}
	m.Close()
	if err != nil {
		return err
	}
	switch reason {
	case vmm.ExitReboot:
		if *onReboot == "restart" {
			e.log.Info("guest rebooted; restarting it")
			return restartSelf(con)
		}
		e.log.Info("guest rebooted")
		return nil
	case vmm.ExitPowerOff:
		e.log.Info("guest powered off")
		return nil
	case vmm.ExitMigrated:
		fmt.Fprintln(e.stderr, "gvmm: the VM was migrated and now runs on the destination")
		return nil
	}
	if con.escaped() {
		return nil
	}
	return &exitError{code: 130, msg: "interrupted"}
}

// runMachine runs m with the console attached until it ends. For an
// incoming machine (restored or migrated in), incoming runs beside Run
// while the vCPUs are parked; when it returns nil the guest resumes, and
// when it fails the machine is stopped and its error returned.
func runMachine(ctx context.Context, m *vmm.Machine, con *console, incoming func(context.Context) error) (vmm.ExitReason, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	failed := make(chan error, 1)
	if incoming == nil {
		con.attach(ctx, m.ConsoleInput, cancel)
	} else {
		// Keys typed before the guest runs wait in the console: fed
		// into the UART now, restoring its state would drop them.
		go func() {
			err := incoming(ctx)
			if err == nil {
				err = m.Resume()
			}
			if err != nil {
				failed <- err
				cancel()
				return
			}
			con.attach(ctx, m.ConsoleInput, cancel)
		}()
	}
	reason, err := m.Run(ctx)
	select {
	case ierr := <-failed:
		return reason, errors.Join(ierr, err)
	default:
	}
	return reason, err
}

// explainNewError turns a machine-building error into one line a person can
// act on.
func explainNewError(err error) error {
	if errors.Is(err, kvm.ErrUnavailable) {
		return &exitError{code: 1, msg: fmt.Sprintf("KVM is unavailable (%v). This host has no usable /dev/kvm; "+
			"\"make demo\" runs gvmm inside a nested QEMU machine that has one", err)}
	}
	return err
}

// console connects standard input to the guest's serial port. When stdin
// is a terminal it is switched to raw mode and Ctrl-A starts an escape.
type console struct {
	in    *os.File
	tty   *terminal
	input chan []byte
	// esc is set when the user ended gvmm with Ctrl-A x.
	esc chan struct{}
}

const escapeKey = 0x01 // Ctrl-A

func newConsole(in *os.File) (*console, error) {
	c := &console{in: in, input: make(chan []byte, 16), esc: make(chan struct{})}
	if in != nil && isTerminal(in) {
		t, err := makeRaw(in)
		if err != nil {
			return nil, fmt.Errorf("console: %w", err)
		}
		c.tty = t
	}
	if in != nil {
		go c.read()
	}
	return c, nil
}

func (c *console) restore() {
	if c.tty != nil {
		c.tty.restore()
	}
}

func (c *console) escaped() bool {
	select {
	case <-c.esc:
		return true
	default:
		return false
	}
}

// read pumps stdin into c.input. It ends at EOF; a blocked read cannot be
// cancelled, which is harmless because the process exits after the guest.
func (c *console) read() {
	buf := make([]byte, 4096)
	for {
		n, err := c.in.Read(buf)
		if n > 0 {
			p := make([]byte, n)
			copy(p, buf[:n])
			c.input <- p
		}
		if err != nil {
			close(c.input)
			return
		}
	}
}

// attach feeds console input to the guest until ctx ends; Ctrl-A x calls
// quit. The goroutine owns the escape state.
func (c *console) attach(ctx context.Context, feed func([]byte) int, quit func()) {
	go func() {
		pendingEsc := false
		for {
			var p []byte
			select {
			case <-ctx.Done():
				return
			case b, ok := <-c.input:
				if !ok {
					return
				}
				p = b
			}
			if c.tty != nil {
				var out []byte
				for _, b := range p {
					switch {
					case pendingEsc:
						pendingEsc = false
						switch b {
						case 'x', 'X':
							select {
							case <-c.esc:
							default:
								close(c.esc)
							}
							quit()
							return
						case 'h', 'H', '?':
							fmt.Fprint(os.Stderr, "\r\ngvmm console: Ctrl-A x quit, Ctrl-A Ctrl-A send Ctrl-A, Ctrl-A h this help\r\n")
						case escapeKey:
							out = append(out, escapeKey)
						}
					case b == escapeKey:
						pendingEsc = true
					default:
						out = append(out, b)
					}
				}
				p = out
			}
			for len(p) > 0 {
				n := feed(p)
				p = p[n:]
				if len(p) > 0 {
					select {
					case <-ctx.Done():
						return
					case <-time.After(2 * time.Millisecond):
					}
				}
			}
		}
	}()
}

// printStats prints one line of figures for benchmarks: gvmm's own memory
// overhead is its peak RSS less the guest RAM that was touched.
func printStats(w io.Writer, m *vmm.Machine, ran time.Duration) {
	guest, err := m.Memory().Resident()
	if err != nil {
		fmt.Fprintf(w, "gvmm: stats: %v\n", err)
		return
	}
	peak, err := peakRSS()
	if err != nil {
		fmt.Fprintf(w, "gvmm: stats: %v\n", err)
		return
	}
	over := int64(peak) - int64(guest)
	fmt.Fprintf(w, "gvmm: stats: run_ms=%d peak_rss_kib=%d guest_touched_kib=%d overhead_kib=%d\n",
		ran.Milliseconds(), peak>>10, guest>>10, over>>10)
	ex := m.ExitCounts()
	var io uint64
	ports := make([]uint16, 0, len(ex.IO))
	for p, n := range ex.IO {
		io += n
		ports = append(ports, p)
	}
	sort.Slice(ports, func(i, j int) bool { return ex.IO[ports[i]] > ex.IO[ports[j]] })
	var top strings.Builder
	for i, p := range ports {
		if i == 8 {
			break
		}
		fmt.Fprintf(&top, " %#x=%d", p, ex.IO[p])
	}
	fmt.Fprintf(w, "gvmm: exits: io=%d mmio=%d other=%d; busiest ports:%s\n", io, ex.MMIO, ex.Other, top.String())
}

// peakRSS reads VmHWM, the process's peak resident set, from /proc.
func peakRSS() (uint64, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, fmt.Errorf("read peak RSS: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmHWM:" {
			kib, err := strconv.ParseUint(f[1], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("parse VmHWM %q: %w", line, err)
			}
			return kib << 10, nil
		}
	}
	return 0, errors.New("read peak RSS: no VmHWM in /proc/self/status")
}

// diskFlags collects --disk PATH[,readonly] values.
type diskFlags []vmm.DiskConfig

func (d *diskFlags) String() string { return fmt.Sprint(*d) }

func (d *diskFlags) Set(v string) error {
	parts := strings.Split(v, ",")
	disk := vmm.DiskConfig{Path: parts[0]}
	if disk.Path == "" {
		return errors.New("empty disk path")
	}
	for _, opt := range parts[1:] {
		switch opt {
		case "readonly", "ro":
			disk.ReadOnly = true
		default:
			return fmt.Errorf("unknown disk option %q (want readonly)", opt)
		}
	}
	*d = append(*d, disk)
	return nil
}

// netFlags collects --net tap=NAME[,bridge=BR][,mac=MAC] values.
type netFlags []vmm.NetConfig

func (n *netFlags) String() string { return fmt.Sprint(*n) }

func (n *netFlags) Set(v string) error {
	var c vmm.NetConfig
	for _, kv := range strings.Split(v, ",") {
		k, val, ok := strings.Cut(kv, "=")
		if !ok || val == "" {
			return fmt.Errorf("%q is not key=value (want tap=NAME[,bridge=BR][,mac=MAC])", kv)
		}
		switch k {
		case "tap":
			c.TAP = val
		case "bridge":
			c.Bridge = val
		case "mac":
			mac, err := net.ParseMAC(val)
			if err != nil || len(mac) != 6 {
				return fmt.Errorf("mac %q is not a 6-byte MAC address", val)
			}
			if mac[0]&1 != 0 {
				return fmt.Errorf("mac %s is a multicast address", val)
			}
			c.MAC = mac
		default:
			return fmt.Errorf("unknown net option %q (want tap, bridge, mac)", k)
		}
	}
	if c.TAP == "" {
		return errors.New("missing tap=NAME")
	}
	*n = append(*n, c)
	return nil
}

// restartSelf boots the guest again by executing gvmm anew with the same
// arguments: every VM starts in a fresh process. (Building a second VM in
// the process that destroyed the first crashed the nested L1 kernel twice
// in a row here, "corrupted stack end" in a gvmm thread, while every fresh
// process ran clean; a new process also starts from a clean slate for
// TAPs, sockets and memory.) The console's terminal settings are restored
// first; standard input and output carry over. It returns only on error.
func restartSelf(con *console) error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("restart: find own executable: %w", err)
	}
	con.restore()
	if err := unix.Exec(exe, os.Args, os.Environ()); err != nil {
		return fmt.Errorf("restart: exec %s: %w", exe, err)
	}
	return nil
}
