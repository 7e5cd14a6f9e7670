package vmm

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	stdnet "net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gvmm/gvmm/kvm"
	"github.com/gvmm/gvmm/memguard"
	"golang.org/x/sys/unix"
)

// Config describes a machine to boot.
type Config struct {
	// KernelPath is a Linux bzImage.
	KernelPath string
	// InitrdPath is an optional initramfs.
	InitrdPath string
	// Cmdline is the kernel command line.
	Cmdline string
	// MemoryBytes is guest RAM; a multiple of 4 KiB, at least MinMemory.
	MemoryBytes uint64
	// CPUs is the number of vCPUs, 1..MaxCPUs and what KVM allows.
	CPUs int
	// Console receives the serial port's output.
	Console io.Writer
	// Disks are virtio-blk disks, in the order the guest sees them.
	Disks []DiskConfig
	// Nets are virtio-net devices on TAP interfaces.
	Nets []NetConfig
	// Channel, when set, is a unix socket path relayed to a
	// virtio-console port (the guest's /dev/hvc0).
	Channel string
	// Incoming builds a machine whose RAM and state will come from a
	// snapshot or a migration (RestoreState): no kernel is loaded, and
	// Run starts with every vCPU paused until Resume.
	Incoming bool
	// KVMPath is the KVM device; empty means /dev/kvm.
	KVMPath string
	// MemguardInjectFaults turns a refused access to protected memory
	// into a #GP(0) in the guest (memguard.Config.InjectFaults).
	MemguardInjectFaults bool
	// MemguardMaxRegions bounds the protected regions the guest may hold
	// at once (memguard.Config.MaxRegions); 0 means
	// memguard.DefaultMaxRegions.
	MemguardMaxRegions int
	// Log receives diagnostics; nil discards them.
	Log *slog.Logger
}

// ExitReason is how a machine that ran without error ended.
type ExitReason int

const (
	// ExitPowerOff means the guest powered off (ACPI S5).
	ExitPowerOff ExitReason = iota + 1
	// ExitReboot means the guest asked for a reset.
	ExitReboot
	// ExitStopped means the caller's context ended the run.
	ExitStopped
	// ExitMigrated means the machine was handed over to another host
	// (HandedOver) and must not run here again.
	ExitMigrated
)

func (r ExitReason) String() string {
	switch r {
	case ExitPowerOff:
		return "power off"
	case ExitReboot:
		return "reboot"
	case ExitStopped:
		return "stopped"
	case ExitMigrated:
		return "migrated"
	}
	return fmt.Sprintf("ExitReason(%d)", int(r))
}

// GuestError is a failure of the guest or of KVM while running it: a
// triple fault, a KVM internal error, a failed VM entry.
type GuestError struct {
	VCPU   int
	Reason string
	// RIP is the guest instruction pointer when it is meaningful, else 0.
	RIP uint64
}

func (e *GuestError) Error() string {
	if e.RIP == 0 {
		return fmt.Sprintf("vCPU %d: %s", e.VCPU, e.Reason)
	}
	return fmt.Sprintf("vCPU %d: %s (RIP %#x)", e.VCPU, e.Reason, e.RIP)
}

// Machine is a VM built from a Config, ready to Run once.
type Machine struct {
	log    *slog.Logger
	sys    *kvm.System
	vm     *kvm.VM
	mem    *Memory
	vcpus  []*vcpu
	bus    ioBus
	serial *serial
	pci    *pciBus
	virtio []*virtioDevice
	msi    *msiRouter

	endOnce sync.Once
	ended   chan struct{}
	// Written once under endOnce, read after ended is closed.
	endReason ExitReason
	endErr    error
	// stuck is set when a vCPU thread did not stop: Close then leaves
	// the vCPUs, VM and memory alone.
	stuck bool

	// Pausing: pausePending tells vCPU loops to park; pauseWanted,
	// parked, resumeCh (closed by Resume) and allParked (closed by the
	// last vCPU to park for this pause) are guarded by pauseMu.
	pausePending atomic.Bool
	pauseMu      sync.Mutex
	pauseWanted  bool
	parked       int
	resumeCh     chan struct{}
	allParked    chan struct{}
	started      time.Time
	cpus         int
	memBytes     uint64

	// throttle is the auto-converge share (percent) of vCPU time taken
	// away; throttleWake tells throttleLoop it changed.
	throttle     atomic.Int32
	throttleWake chan struct{}

	// manualDirty says KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 is on (set by
	// StartDirtyLog, which migration calls from one goroutine).
	// noManualDirty keeps it off: tests set it to run the path of kernels
	// without the capability.
	manualDirty, noManualDirty bool

	// desc is the machine's shape and devices; guestCPUID is vCPU 0's
	// CPUID and tscKHz its TSC rate, for migration's compatibility check.
	desc       Description
	guestCPUID []kvm.CPUIDEntry
	tscKHz     uint32
	// quiesced says devices hold still (Quiesce); guarded by pauseMu.
	quiesced bool

	// svm says KVM runs on AMD SVM (kvm_amd), where restoring TR needs
	// its busy bit cleared (see trForSetSregs).
	svm bool

	// guard is the protected-memory registry (memguard); set by New,
	// replaced by RestoreState. guardCfg is what it was made with.
	guard    atomic.Pointer[memguard.Guard]
	guardCfg memguard.Config
	// readOnlyMem says KVM has KVM_CAP_READONLY_MEM.
	readOnlyMem bool
	// layoutMu serializes changes of the RAM slots and guards slots,
	// layoutGen, dirtyLogging and lostDirty.
	layoutMu sync.Mutex
	// slots are the KVM memory slots over RAM, in guest-physical order.
	slots []ramSlot
	// layoutGuard and layoutGen are the guard and its layout generation
	// that slots reflect.
	layoutGuard *memguard.Guard
	layoutGen   uint64
	// dirtyLogging says KVM logs dirty pages on every RAM slot.
	dirtyLogging bool
	// lostDirty holds, per RAM region, the dirty logs of slots deleted
	// while logging, until TakeDirty reports them.
	lostDirty [][]uint64
	// precopy is set from StartDirtyLog to StopDirtyLog (a migration
	// copying memory); vCPUs read it without layoutMu.
	precopy atomic.Bool
	// layoutHold keeps vCPUs out of KVM_RUN while slots change; holdDone
	// (guarded by holdMu) is closed when the change is over.
	layoutHold atomic.Bool
	holdMu     sync.Mutex
	holdDone   chan struct{}
}

// Validate checks a Config's values that need no files and no KVM.
func (c *Config) Validate() error {
	if c.KernelPath == "" && !c.Incoming {
		return errors.New("no kernel given (--kernel PATH)")
	}
	if c.MemoryBytes < MinMemory {
		return fmt.Errorf("memory %s is too small: gvmm needs at least %s for a Linux guest", FormatSize(c.MemoryBytes), FormatSize(MinMemory))
	}
	if c.MemoryBytes%pageSize != 0 {
		return fmt.Errorf("memory %d is not a multiple of 4 KiB", c.MemoryBytes)
	}
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err == nil {
		if host := uint64(si.Totalram) * uint64(si.Unit); host > 0 && c.MemoryBytes > host {
			return fmt.Errorf("memory %s is more than this host has (%s)", FormatSize(c.MemoryBytes), FormatSize(host))
		}
	}
	if c.CPUs < 1 || c.CPUs > MaxCPUs {
		return fmt.Errorf("cpus %d is outside 1..%d", c.CPUs, MaxCPUs)
	}
	if c.MemguardMaxRegions < 0 || c.MemguardMaxRegions > memguard.MaxRegionsLimit {
		return fmt.Errorf("memguard max regions %d is outside 1..%d", c.MemguardMaxRegions, memguard.MaxRegionsLimit)
	}
	return nil
}

// New builds a machine: it checks the kernel and initrd, then creates the
// VM, its memory, devices and vCPUs, and loads the kernel. Errors about the
// inputs come before any KVM error, so they are reported the same way on
// hosts with and without KVM.
func New(cfg Config) (_ *Machine, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	var boot *bootInput
	if !cfg.Incoming {
		if boot, err = openBoot(&cfg); err != nil {
			return nil, err
		}
		if boot.initrd != nil {
			defer boot.initrd.Close()
		}
	}

	// A NIC without a MAC gets a random one here rather than in the
	// device, so the machine's Description carries it to a destination.
	cfg.Nets = append([]NetConfig(nil), cfg.Nets...)
	for i := range cfg.Nets {
		if cfg.Nets[i].MAC == nil {
			if cfg.Nets[i].MAC, err = randomMAC(); err != nil {
				return nil, err
			}
		}
	}
	m := &Machine{log: log, ended: make(chan struct{}), cpus: cfg.CPUs, memBytes: cfg.MemoryBytes,
		throttleWake: make(chan struct{}, 1), desc: describe(&cfg)}
	devs, err := openDevices(&cfg, log)
	if err != nil {
		return nil, err
	}
	devsOwned := false // until wireVirtio takes them
	defer func() {
		if err != nil {
			if !devsOwned {
				closePending(devs)
			}
			m.Close()
		}
	}()
	if m.sys, err = kvm.Open(cfg.KVMPath); err != nil {
		return nil, err
	}
	if err := m.checkCaps(cfg.CPUs); err != nil {
		return nil, err
	}
	if m.vm, err = m.sys.CreateVM(); err != nil {
		return nil, err
	}
	// The order follows the kernel's expectations: TSS and identity map
	// before the irqchip, the irqchip before the PIT and the vCPUs.
	if err := m.vm.SetTSSAddr(tssAddr); err != nil {
		return nil, err
	}
	if err := m.vm.SetIdentityMapAddr(identityMap); err != nil {
		return nil, err
	}
	if err := m.vm.CreateIRQChip(); err != nil {
		return nil, err
	}
	if err := m.vm.CreatePIT2(kvm.PITSpeakerDummy); err != nil {
		return nil, err
	}
	if m.mem, err = NewMemory(cfg.MemoryBytes); err != nil {
		return nil, err
	}
	if err := m.initSlots(); err != nil {
		return nil, err
	}
	if err := m.newGuard(cfg.MemguardInjectFaults, cfg.MemguardMaxRegions); err != nil {
		return nil, err
	}
	if boot != nil {
		if err := m.load(boot.img, cfg, boot.initrd, boot.initrdSize, boot.plan); err != nil {
			return nil, err
		}
	}
	m.wireDevices(cfg.Console)
	devsOwned = true
	if err := m.wireVirtio(devs); err != nil {
		return nil, err
	}
	if err := m.createVCPUs(cfg.CPUs, !cfg.Incoming); err != nil {
		return nil, err
	}
	if cfg.Incoming {
		// vCPUs park before their first KVM_RUN; RestoreState runs
		// on their threads, Resume lets them go.
		m.pauseMu.Lock()
		m.wantPauseLocked()
		m.pauseMu.Unlock()
	}
	return m, nil
}

// randomMAC returns a random locally administered unicast MAC address.
func randomMAC() (stdnet.HardwareAddr, error) {
	mac := make(stdnet.HardwareAddr, 6)
	if _, err := rand.Read(mac); err != nil {
		return nil, fmt.Errorf("random MAC address: %w", err)
	}
	mac[0] = mac[0]&^1 | 2
	return mac, nil
}

// bootInput is what booting a kernel needs, checked before KVM is touched.
type bootInput struct {
	img        *bzImage
	initrd     *os.File // nil without an initrd; the caller closes it
	initrdSize uint64
	plan       bootPlan
}

// openBoot reads and checks the kernel and initrd of cfg.
func openBoot(cfg *Config) (_ *bootInput, err error) {
	kernel, err := os.ReadFile(cfg.KernelPath)
	if err != nil {
		return nil, fmt.Errorf("read kernel: %w", err)
	}
	img, err := parseBzImage(kernel)
	if err != nil {
		return nil, fmt.Errorf("kernel %s: %w", cfg.KernelPath, err)
	}
	b := &bootInput{img: img}
	if cfg.InitrdPath != "" {
		if b.initrd, err = os.Open(cfg.InitrdPath); err != nil {
			return nil, fmt.Errorf("open initrd: %w", err)
		}
		defer func() {
			if err != nil {
				b.initrd.Close()
			}
		}()
		st, err := b.initrd.Stat()
		if err != nil {
			return nil, fmt.Errorf("stat initrd: %w", err)
		}
		if !st.Mode().IsRegular() {
			return nil, fmt.Errorf("initrd %s is not a regular file", cfg.InitrdPath)
		}
		b.initrdSize = uint64(st.Size())
	}
	layout := ramLayout(cfg.MemoryBytes)
	lowEnd := layout[0].GPA + layout[0].Size
	if b.plan, err = planBoot(img, lowEnd, b.initrdSize); err != nil {
		return nil, err
	}
	if _, err := buildZeroPage(img, zeroPageInput{cmdlineLen: uint32(len(cfg.Cmdline))}); err != nil {
		return nil, err
	}
	return b, nil
}

// checkCaps refuses hosts whose KVM lacks what gvmm relies on.
func (m *Machine) checkCaps(cpus int) error {
	for _, c := range []struct {
		cap  kvm.Cap
		name string
	}{
		{kvm.CapIRQChip, "KVM_CAP_IRQCHIP"},
		{kvm.CapUserMemory, "KVM_CAP_USER_MEMORY"},
		{kvm.CapSetTSSAddr, "KVM_CAP_SET_TSS_ADDR"},
		{kvm.CapPIT2, "KVM_CAP_PIT2"},
		{kvm.CapImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"},
	} {
		n, err := m.sys.CheckExtension(c.cap)
		if err != nil {
			return err
		}
		if n <= 0 {
			return fmt.Errorf("this KVM lacks %s, which gvmm needs", c.name)
		}
	}
	max, err := m.sys.CheckExtension(kvm.CapMaxVCPUs)
	if err != nil {
		return err
	}
	if max <= 0 {
		if max, err = m.sys.CheckExtension(kvm.CapNrVCPUs); err != nil {
			return err
		}
	}
	if max <= 0 {
		max = 4 // KVM_CAP_NR_VCPUS absent: the API documents 4
	}
	if cpus > max {
		return fmt.Errorf("cpus %d is more than KVM allows on this host (%d)", cpus, max)
	}
	return nil
}

// load writes the kernel, initrd, command line, zero page, ACPI tables and
// boot page tables into guest memory.
func (m *Machine) load(img *bzImage, cfg Config, initrd *os.File, initrdSize uint64, plan bootPlan) error {
	if err := m.mem.WriteAt(img.payload, highMemStart); err != nil {
		return fmt.Errorf("load kernel: %w", err)
	}
	if initrd != nil {
		dst, err := m.mem.Slice(plan.initrdAddr, initrdSize)
		if err != nil {
			return fmt.Errorf("load initrd: %w", err)
		}
		if _, err := io.ReadFull(initrd, dst); err != nil {
			return fmt.Errorf("load initrd: %w", err)
		}
		m.mem.MarkDirty(plan.initrdAddr, initrdSize)
	}
	cmdline := append([]byte(cfg.Cmdline), 0)
	if err := m.mem.WriteAt(cmdline, cmdlineAddr); err != nil {
		return fmt.Errorf("write command line: %w", err)
	}
	tables, err := acpiTables(acpiAddr, cfg.CPUs)
	if err != nil {
		return err
	}
	if err := m.mem.WriteAt(tables, acpiAddr); err != nil {
		return fmt.Errorf("write ACPI tables: %w", err)
	}
	zp, err := buildZeroPage(img, zeroPageInput{
		cmdlineLen: uint32(len(cfg.Cmdline)),
		initrdAddr: plan.initrdAddr,
		initrdSize: initrdSize,
		e820:       e820Map(m.mem.regions),
		rsdpAddr:   acpiAddr,
	})
	if err != nil {
		return err
	}
	if err := m.mem.WriteAt(zp, zeroPageAddr); err != nil {
		return fmt.Errorf("write zero page: %w", err)
	}
	if err := m.mem.WriteAt(resetStub[:], resetVector); err != nil {
		return fmt.Errorf("write reset vector: %w", err)
	}
	return writeBootTables(m.mem)
}

func (m *Machine) wireDevices(console io.Writer) {
	if console == nil {
		console = io.Discard
	}
	m.serial = newSerial(console, func(level bool) {
		var l uint32
		if level {
			l = 1
		}
		if err := m.vm.IRQLine(irqCOM1, l); err != nil {
			m.log.Error("serial interrupt", "err", err)
		}
	})
	power := func(ev powerEvent) {
		switch ev {
		case powerOff:
			m.log.Info("guest requested power off")
			m.end(ExitPowerOff, nil)
		case powerReset:
			m.log.Info("guest requested reset")
			m.end(ExitReboot, nil)
		}
	}
	m.bus.add(portCOM1, 8, m.serial)
	m.bus.add(0x80, 1, sink{})
	m.bus.add(portCMOSIndex, 2, &cmos{})
	m.bus.add(portI8042Cmd, 1, &powerPorts{base: portI8042Cmd, notify: power})
	m.bus.add(portSleepCtl, 8, &powerPorts{base: portSleepCtl, notify: power})
	m.pci = newPCIBus(power)
	m.bus.add(portPCIAddr, 8, m.pci)
}

func (m *Machine) createVCPUs(n int, boot bool) error {
	mmapSize, err := m.sys.VCPUMmapSize()
	if err != nil {
		return err
	}
	supported, err := m.sys.SupportedCPUID()
	if err != nil {
		return err
	}
	deadline, err := m.sys.CheckExtension(kvm.CapTSCDeadlineTimer)
	if err != nil {
		return err
	}
	for i := 0; i < n; i++ {
		c, err := m.vm.CreateVCPU(i, mmapSize)
		if err != nil {
			return err
		}
		v := &vcpu{id: i, cpu: c, m: m, cmds: make(chan func()), wake: make(chan struct{}, 1)}
		m.vcpus = append(m.vcpus, v)
		cpuid := guestCPUID(supported, i, n, deadline > 0)
		if err := setupVCPU(c, cpuid); err != nil {
			return fmt.Errorf("set up vCPU %d: %w", i, err)
		}
		if i == 0 {
			m.guestCPUID = cpuid
			m.svm = isSVMHost(supported)
			if m.tscKHz, err = c.GetTSCKHz(); err != nil {
				return fmt.Errorf("set up vCPU 0: %w", err)
			}
		}
	}
	if !boot {
		return nil
	}
	return setupBSP(m.vcpus[0].cpu, highMemStart+0x200)
}

// ConsoleInput queues bytes typed on the console for the guest's serial
// port and returns how many it took; the caller retries the rest later.
func (m *Machine) ConsoleInput(p []byte) int { return m.serial.Input(p) }

// Memory returns guest RAM.
func (m *Machine) Memory() *Memory { return m.mem }

// end records how the machine ended; the first call wins.
func (m *Machine) end(r ExitReason, err error) {
	m.endOnce.Do(func() {
		m.endReason, m.endErr = r, err
		close(m.ended)
	})
}

// Run starts every vCPU and returns when the guest powers off or reboots,
// a vCPU fails, or ctx ends. All vCPU threads have stopped when it returns.
// A machine runs once.
func (m *Machine) Run(ctx context.Context) (ExitReason, error) {
	var wg sync.WaitGroup
	started := make(chan struct{}, len(m.vcpus))
	for _, v := range m.vcpus {
		wg.Add(1)
		go func(v *vcpu) {
			defer wg.Done()
			if err := v.run(started); err != nil {
				m.end(0, err)
			}
		}(v)
	}
	for range m.vcpus {
		<-started
	}
	throttleDone := make(chan struct{})
	go func() {
		defer close(throttleDone)
		m.throttleLoop()
	}()
	defer func() { <-throttleDone }()
	guardCtx, stopGuard := context.WithCancel(context.Background())
	guardDone := make(chan struct{})
	go func() {
		defer close(guardDone)
		m.runGuard(guardCtx)
	}()
	defer func() {
		stopGuard()
		<-guardDone
	}()
	m.pauseMu.Lock()
	m.started = time.Now()
	m.pauseMu.Unlock()
	// A partial line on the console (a prompt) is written 20 ms after
	// it started; nothing wakes this loop while the console is quiet.
	flush := time.NewTimer(time.Hour)
	flush.Stop()
	defer flush.Stop()
loop:
	for {
		select {
		case <-m.ended:
			break loop
		case <-ctx.Done():
			m.end(ExitStopped, nil)
		case <-m.serial.held:
			flush.Reset(serialHoldFor)
		case <-flush.C:
			m.serial.Flush()
		}
	}
	for _, v := range m.vcpus {
		v.kick()
	}
	m.log.Debug("waiting for vCPU threads to stop")
	stopped := make(chan struct{})
	go func() {
		wg.Wait()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(vcpuStopTimeout):
		// A vCPU that ignores its kick is stuck inside KVM. Its
		// kvm_run mapping must stay mapped, so the machine is not
		// closed; the caller should exit the process.
		m.stuck = true
		m.serial.Flush()
		return m.endReason, fmt.Errorf("a vCPU did not stop within %v of being kicked (stuck in KVM_RUN)", vcpuStopTimeout)
	}
	m.serial.Flush()
	return m.endReason, m.endErr
}

// serialHoldFor is how long a partial console line waits for the rest.
const serialHoldFor = 20 * time.Millisecond

// vcpuStopTimeout bounds how long Run waits for kicked vCPUs.
const vcpuStopTimeout = 10 * time.Second

// ErrNotRunning is returned by Pause and Resume on a machine that has
// ended or not started.
var ErrNotRunning = errors.New("machine is not running")

// Pause stops every vCPU outside KVM_RUN and returns when all are parked.
// Devices keep running (they finish the I/O in flight). Pausing a paused
// machine does nothing.
func (m *Machine) Pause(ctx context.Context) error {
	select {
	case <-m.ended:
		return ErrNotRunning
	default:
	}
	m.pauseMu.Lock()
	m.wantPauseLocked()
	all, done := m.allParked, m.parked == len(m.vcpus)
	m.pauseMu.Unlock()
	if done {
		return nil
	}
	for _, v := range m.vcpus {
		v.interrupt()
	}
	select {
	case <-all:
		return nil
	case <-ctx.Done():
		m.Resume()
		return fmt.Errorf("pause: %w", ctx.Err())
	case <-m.ended:
		return ErrNotRunning
	}
}

// wantPauseLocked asks the vCPUs to park, unless that is asked already.
func (m *Machine) wantPauseLocked() {
	if m.pauseWanted {
		return
	}
	m.pauseWanted = true
	m.resumeCh = make(chan struct{})
	m.allParked = make(chan struct{})
	m.pausePending.Store(true)
}

// Resume lets quiesced devices and parked vCPUs run again. Resuming a
// running machine does nothing.
func (m *Machine) Resume() error {
	select {
	case <-m.ended:
		return ErrNotRunning
	default:
	}
	if m.isQuiesced() {
		m.unquiesce()
	}
	m.pauseMu.Lock()
	if m.pauseWanted {
		m.pauseWanted = false
		m.pausePending.Store(false)
		close(m.resumeCh)
		m.log.Debug("resume timing: vCPUs released")
	}
	m.pauseMu.Unlock()
	return nil
}

// HandedOver ends a paused machine whose state another host now runs (a
// completed migration): Run returns ExitMigrated and the vCPUs never
// enter the guest again.
func (m *Machine) HandedOver() {
	m.end(ExitMigrated, nil)
}

// Status is a machine's state for the control API.
type Status struct {
	State       string  `json:"state"` // "running", "paused" or "ended"
	CPUs        int     `json:"cpus"`
	MemoryBytes uint64  `json:"memory_bytes"`
	UptimeSec   float64 `json:"uptime_seconds"`
}

// Status reports whether the machine runs, is paused or has ended.
func (m *Machine) Status() Status {
	st := Status{State: "running", CPUs: m.cpus, MemoryBytes: m.memBytes}
	m.pauseMu.Lock()
	if m.pauseWanted {
		st.State = "paused"
	}
	if !m.started.IsZero() {
		st.UptimeSec = time.Since(m.started).Seconds()
	}
	m.pauseMu.Unlock()
	select {
	case <-m.ended:
		st.State = "ended"
	default:
	}
	return st
}

// ExitCounts sums the exits every vCPU handled in user space. Call it only
// after Run returned without a stuck vCPU.
func (m *Machine) ExitCounts() ExitCounts {
	var c ExitCounts
	if m.stuck {
		return c
	}
	for _, v := range m.vcpus {
		c.add(&v.exits)
	}
	return c
}

// Close releases the vCPUs, the VM, guest memory and /dev/kvm. It must not
// be called while Run is running.
func (m *Machine) Close() error {
	if m.stuck {
		return errors.New("machine not released: a vCPU thread is still inside KVM_RUN")
	}
	errs := m.closeVirtio()
	for _, v := range m.vcpus {
		errs = append(errs, v.cpu.Close())
	}
	m.vcpus = nil
	if m.vm != nil {
		errs = append(errs, m.vm.Close())
		m.vm = nil
	}
	if m.mem != nil {
		errs = append(errs, m.mem.Close())
		m.mem = nil
	}
	if m.sys != nil {
		errs = append(errs, m.sys.Close())
		m.sys = nil
	}
	return errors.Join(errs...)
}
