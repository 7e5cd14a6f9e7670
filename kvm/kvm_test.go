package kvm_test

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/gvmm/gvmm/kvm"
)

// openKVM opens /dev/kvm for a test that needs it. Without KVM the test is
// skipped, unless GVMM_REQUIRE_KVM=1 (set by the nested harness, which runs
// kvm.test where KVM exists): then a missing KVM fails the test, so that a
// KVM test cannot pass by only ever skipping.
func openKVM(t *testing.T) *kvm.System {
	t.Helper()
	s, err := kvm.Open("")
	if err != nil {
		if errors.Is(err, kvm.ErrUnavailable) && os.Getenv("GVMM_REQUIRE_KVM") != "1" {
			t.Skipf("skipping KVM test: %v", err)
		}
		t.Fatalf("GVMM_REQUIRE_KVM=%q: %v", os.Getenv("GVMM_REQUIRE_KVM"), err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

const (
	memSize  = 0x20000 // guest RAM at guest-physical 0
	codeAddr = 0x1000
	dataAddr = 0x8000 // the page the guest writes, for the dirty log
	port     = 0x3f8
)

// guestCode is 16-bit real-mode code:
//
//	mov dx, 0x3f8          ; BA F8 03
//	mov al, 0x42           ; B0 42
//	out dx, al             ; EE
//	mov byte [0x8000], 1   ; C6 06 00 80 01
//	hlt                    ; F4
var guestCode = []byte{0xba, 0xf8, 0x03, 0xb0, 0x42, 0xee, 0xc6, 0x06, 0x00, 0x80, 0x01, 0xf4}

type guest struct {
	sys *kvm.System
	vm  *kvm.VM
	cpu *kvm.VCPU
	mem []byte
}

// newGuest makes a VM with memSize bytes of RAM holding guestCode at
// codeAddr (dirty logging on) and one vCPU in real mode at codeAddr. The
// calling goroutine is locked to its thread, which owns the vCPU. setup,
// if given, runs on the new VM before its memory slot is set.
func newGuest(t *testing.T, setup ...func(*kvm.VM) error) *guest {
	t.Helper()
	runtime.LockOSThread()
	t.Cleanup(runtime.UnlockOSThread)
	g := &guest{sys: openKVM(t)}
	var err error
	if g.vm, err = g.sys.CreateVM(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.vm.Close() })
	for _, f := range setup {
		if err := f(g.vm); err != nil {
			t.Fatal(err)
		}
	}
	// Intel VMX needs these for real mode without unrestricted guest; they
	// lie above guest RAM.
	if err := g.vm.SetTSSAddr(0xfffbd000); err != nil {
		t.Fatal(err)
	}
	if err := g.vm.SetIdentityMapAddr(0xfffbc000); err != nil {
		t.Fatal(err)
	}
	g.mem, err = unix.Mmap(-1, 0, memSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(g.mem) })
	copy(g.mem[codeAddr:], guestCode)
	region := kvm.UserspaceMemoryRegion{
		Slot:          0,
		Flags:         kvm.MemLogDirtyPages,
		GuestPhysAddr: 0,
		MemorySize:    memSize,
		UserspaceAddr: uint64(addrOf(g.mem)),
	}
	if err := g.vm.SetUserMemoryRegion(&region); err != nil {
		t.Fatal(err)
	}
	mmapSize, err := g.sys.VCPUMmapSize()
	if err != nil {
		t.Fatal(err)
	}
	if g.cpu, err = g.vm.CreateVCPU(0, mmapSize); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.cpu.Close() })
	if cpuid, err := g.sys.SupportedCPUID(); err != nil {
		t.Fatal(err)
	} else if err := g.cpu.SetCPUID(cpuid); err != nil {
		t.Fatal(err)
	}

	sregs, err := g.cpu.GetSregs()
	if err != nil {
		t.Fatal(err)
	}
	sregs.CS.Base, sregs.CS.Selector = 0, 0
	for _, s := range []*kvm.Segment{&sregs.DS, &sregs.ES, &sregs.SS} {
		s.Base, s.Selector = 0, 0
	}
	if err := g.cpu.SetSregs(&sregs); err != nil {
		t.Fatal(err)
	}
	regs := kvm.Regs{RIP: codeAddr, RFLAGS: 0x2, RSP: 0x7000}
	if err := g.cpu.SetRegs(&regs); err != nil {
		t.Fatal(err)
	}
	return g
}

// run runs the vCPU until an exit that is not an EINTR: the Go runtime's
// preemption signals make KVM_RUN return EINTR at any time.
func (g *guest) run(t *testing.T) kvm.ExitReason {
	t.Helper()
	for i := 0; ; i++ {
		err := g.cpu.Run()
		if err == nil {
			return g.cpu.ExitReason()
		}
		if !errors.Is(err, unix.EINTR) || i > 1000 {
			t.Fatalf("Run: %v", err)
		}
	}
}

func TestRealModeGuest(t *testing.T) {
	g := newGuest(t)

	if r := g.run(t); r != kvm.ExitIO {
		t.Fatalf("first exit %v, want KVM_EXIT_IO", r)
	}
	io := g.cpu.IO()
	if io.Direction != kvm.IOOut || io.Port != port || io.Size != 1 || io.Count != 1 || len(io.Data) != 1 || io.Data[0] != 0x42 {
		t.Fatalf("IO exit %+v, want out of 0x42 to port %#x", io, port)
	}

	if r := g.run(t); r != kvm.ExitHLT {
		t.Fatalf("second exit %v, want KVM_EXIT_HLT", r)
	}
	regs, err := g.cpu.GetRegs()
	if err != nil {
		t.Fatal(err)
	}
	if want := uint64(codeAddr + len(guestCode)); regs.RIP != want {
		t.Errorf("RIP after hlt = %#x, want %#x", regs.RIP, want)
	}
	if regs.RAX&0xff != 0x42 || regs.RDX&0xffff != port {
		t.Errorf("RAX %#x RDX %#x", regs.RAX, regs.RDX)
	}
	if g.mem[dataAddr] != 1 {
		t.Errorf("guest write not visible: mem[%#x] = %d", dataAddr, g.mem[dataAddr])
	}

	bitmap := make([]uint64, kvm.DirtyBitmapLen(memSize))
	if err := g.vm.GetDirtyLog(0, bitmap); err != nil {
		t.Fatal(err)
	}
	const page = dataAddr / 4096
	if bitmap[page/64]&(1<<(page%64)) == 0 {
		t.Errorf("dirty log %x lacks page %d, which the guest wrote", bitmap, page)
	}
	if bitmap[0x10/64]&(1<<0x10) != 0 {
		t.Errorf("dirty log %x has page 0x10, which nobody wrote", bitmap)
	}
	// A bitmap shorter than the slot would make KVM write past it.
	if err := g.vm.GetDirtyLog(0, bitmap[:0]); !errors.Is(err, unix.EINVAL) {
		t.Errorf("GetDirtyLog with empty bitmap: %v", err)
	}
	if err := g.vm.GetDirtyLog(7, bitmap); !errors.Is(err, unix.ENOENT) {
		t.Errorf("GetDirtyLog of unknown slot: %v", err)
	}
}

// TestManualDirtyLog checks manual dirty-log protection with logging that
// starts all-dirty (KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2), as vmm uses it:
// every page reads dirty until KVM_CLEAR_DIRTY_LOG clears and protects
// it; after that only the guest's write shows; KVM_GET_DIRTY_LOG alone
// leaves the bits set; and CLEAR's range rules are enforced.
func TestManualDirtyLog(t *testing.T) {
	const caps = kvm.DirtyLogManualProtectEnable | kvm.DirtyLogInitiallySet
	g := newGuest(t, func(vm *kvm.VM) error {
		n, err := vm.CheckExtension(kvm.CapManualDirtyLogProtect2)
		if err != nil {
			return err
		}
		if n&caps != caps {
			return fmt.Errorf("KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 = %#x, want flags %#x (Linux 5.8 and later have both)", n, caps)
		}
		return vm.EnableCap(kvm.CapManualDirtyLogProtect2, 0, [4]uint64{caps})
	})
	const pages = memSize / 4096
	bitmap := make([]uint64, kvm.DirtyBitmapLen(memSize))
	if err := g.vm.GetDirtyLog(0, bitmap); err != nil {
		t.Fatal(err)
	}
	for p := 0; p < pages; p++ {
		if bitmap[p/64]&(1<<(p%64)) == 0 {
			t.Fatalf("initially-set dirty log %x lacks page %d", bitmap, p)
		}
	}
	// num_pages must be a multiple of 64 unless it reaches the slot's end.
	if err := g.vm.ClearDirtyLog(0, 0, 3, bitmap); !errors.Is(err, unix.EINVAL) {
		t.Errorf("ClearDirtyLog of 3 pages: %v, want EINVAL", err)
	}
	if err := g.vm.ClearDirtyLog(0, 0, pages, bitmap); err != nil {
		t.Fatal(err)
	}
	if r := g.run(t); r != kvm.ExitIO {
		t.Fatalf("first exit %v, want KVM_EXIT_IO", r)
	}
	if r := g.run(t); r != kvm.ExitHLT {
		t.Fatalf("second exit %v, want KVM_EXIT_HLT", r)
	}
	// The written page must show, and a page nobody touched must not.
	// KVM may report more (under nested SVM the code page shows too),
	// which only costs a migration a page.
	const page = dataAddr / 4096
	const untouched = 0x10
	var first []uint64
	for round := 0; round < 2; round++ {
		clear(bitmap)
		if err := g.vm.GetDirtyLog(0, bitmap); err != nil {
			t.Fatal(err)
		}
		if bitmap[page/64]&(1<<(page%64)) == 0 || bitmap[untouched/64]&(1<<(untouched%64)) != 0 {
			t.Errorf("round %d: dirty log %x, want page %d set and page %d clear", round, bitmap, page, untouched)
		}
		// Without a CLEAR, the bits stay: round 1 sees round 0's.
		if round == 0 {
			first = append([]uint64(nil), bitmap...)
		} else if !slices.Equal(first, bitmap) {
			t.Errorf("dirty log changed without KVM_CLEAR_DIRTY_LOG: %x, then %x", first, bitmap)
		}
	}
	if err := g.vm.ClearDirtyLog(0, 0, pages, bitmap); err != nil {
		t.Fatal(err)
	}
	clear(bitmap)
	if err := g.vm.GetDirtyLog(0, bitmap); err != nil {
		t.Fatal(err)
	}
	for w, v := range bitmap {
		if v != 0 {
			t.Errorf("after clearing, dirty log word %d = %#x, want 0", w, v)
		}
	}
}

func TestRegsRoundTrip(t *testing.T) {
	g := newGuest(t)
	want := kvm.Regs{RAX: 1, RBX: 2, RCX: 3, RDX: 4, RSI: 5, RDI: 6, RSP: 7, RBP: 8,
		R8: 9, R9: 10, R10: 11, R11: 12, R12: 13, R13: 14, R14: 15, R15: 16, RIP: codeAddr, RFLAGS: 0x2 | 1<<0}
	if err := g.cpu.SetRegs(&want); err != nil {
		t.Fatal(err)
	}
	if got, err := g.cpu.GetRegs(); err != nil || got != want {
		t.Errorf("GetRegs = %+v, %v; want %+v", got, err, want)
	}

	sregs, err := g.cpu.GetSregs()
	if err != nil {
		t.Fatal(err)
	}
	sregs.FS.Base, sregs.GS.Base = 0x12340, 0x56780
	sregs.CR2 = 0xdead000
	if err := g.cpu.SetSregs(&sregs); err != nil {
		t.Fatal(err)
	}
	got, err := g.cpu.GetSregs()
	if err != nil {
		t.Fatal(err)
	}
	if got.FS.Base != 0x12340 || got.GS.Base != 0x56780 || got.CR2 != 0xdead000 || got.CS.Base != 0 || got.CS.Selector != 0 {
		t.Errorf("GetSregs after SetSregs = %+v", got)
	}
}

func TestImmediateExit(t *testing.T) {
	g := newGuest(t)
	if n, err := g.sys.CheckExtension(kvm.CapImmediateExit); err != nil || n == 0 {
		t.Skipf("no KVM_CAP_IMMEDIATE_EXIT (%d, %v)", n, err)
	}
	g.cpu.SetImmediateExit(true)
	err := g.cpu.Run()
	if !errors.Is(err, unix.EINTR) {
		t.Fatalf("Run with immediate_exit = %v, want EINTR", err)
	}
	var e *kvm.Error
	if !errors.As(err, &e) || e.Op != "KVM_RUN" {
		t.Errorf("error %v does not name KVM_RUN", err)
	}
	if regs, err := g.cpu.GetRegs(); err != nil || regs.RIP != codeAddr {
		t.Errorf("RIP = %#x (%v): the guest ran despite immediate_exit", regs.RIP, err)
	}
	g.cpu.SetImmediateExit(false)
	if r := g.run(t); r != kvm.ExitIO {
		t.Errorf("exit after clearing immediate_exit = %v, want KVM_EXIT_IO", r)
	}
}

func TestMSRs(t *testing.T) {
	g := newGuest(t)
	list, err := g.sys.MSRIndexList()
	if err != nil || len(list) == 0 {
		t.Fatalf("MSRIndexList = %d entries, %v", len(list), err)
	}
	const sysenterCS, sysenterESP = 0x174, 0x175
	n, err := g.cpu.SetMSRs([]kvm.MSREntry{{Index: sysenterCS, Data: 0x10}, {Index: sysenterESP, Data: 0x8000}})
	if err != nil || n != 2 {
		t.Fatalf("SetMSRs = %d, %v; want 2", n, err)
	}
	entries := []kvm.MSREntry{{Index: sysenterCS}, {Index: sysenterESP}}
	n, err = g.cpu.GetMSRs(entries)
	if err != nil || n != 2 {
		t.Fatalf("GetMSRs = %d, %v; want 2", n, err)
	}
	if entries[0].Data != 0x10 || entries[1].Data != 0x8000 {
		t.Errorf("GetMSRs read %+v", entries)
	}
	if n, err := g.cpu.GetMSRs(nil); n != 0 || err != nil {
		t.Errorf("GetMSRs(nil) = %d, %v", n, err)
	}
	if n, _ := g.sys.CheckExtension(kvm.CapGetMSRFeatures); n > 0 {
		if _, err := g.sys.FeatureMSRIndexList(); err != nil {
			t.Errorf("FeatureMSRIndexList: %v", err)
		}
	}
}

func TestCPUID(t *testing.T) {
	g := newGuest(t) // sets the supported CPUID
	want, err := g.sys.SupportedCPUID()
	if err != nil || len(want) == 0 {
		t.Fatalf("SupportedCPUID = %d entries, %v", len(want), err)
	}
	got, err := g.cpu.GetCPUID()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("GetCPUID has %d entries, set %d", len(got), len(want))
	}
	var leaf0 *kvm.CPUIDEntry
	for i := range got {
		if got[i].Function == 0 {
			leaf0 = &got[i]
		}
	}
	if leaf0 == nil || leaf0.EBX == 0 {
		t.Errorf("leaf 0 missing or empty: %+v", leaf0)
	}
	if err := g.cpu.SetCPUID(nil); !errors.Is(err, unix.EINVAL) {
		t.Errorf("SetCPUID(nil) = %v", err)
	}
}

func TestVCPUState(t *testing.T) {
	g := newGuest(t)
	fpu, err := g.cpu.GetFPU()
	if err != nil {
		t.Fatal(err)
	}
	if err := g.cpu.SetFPU(&fpu); err != nil {
		t.Fatal(err)
	}
	xs, err := g.cpu.GetXSave()
	if err != nil {
		t.Fatal(err)
	}
	if len(xs.Region) < 4096 {
		t.Errorf("XSAVE region of %d bytes", len(xs.Region))
	}
	if err := g.cpu.SetXSave(&xs); err != nil {
		t.Fatal(err)
	}
	if n, _ := g.sys.CheckExtension(kvm.CapXCRS); n > 0 {
		xcrs, err := g.cpu.GetXCRs()
		if err != nil {
			t.Fatal(err)
		}
		if err := g.cpu.SetXCRs(&xcrs); err != nil {
			t.Fatal(err)
		}
	}
	ev, err := g.cpu.GetVCPUEvents()
	if err != nil {
		t.Fatal(err)
	}
	if err := g.cpu.SetVCPUEvents(&ev); err != nil {
		t.Fatal(err)
	}
	mp, err := g.cpu.GetMPState()
	if err != nil || mp.State != kvm.MPStateRunnable {
		t.Errorf("GetMPState = %+v, %v", mp, err)
	}
	dr, err := g.cpu.GetDebugRegs()
	if err != nil {
		t.Fatal(err)
	}
	if err := g.cpu.SetDebugRegs(&dr); err != nil {
		t.Fatal(err)
	}
	if khz, err := g.cpu.GetTSCKHz(); err != nil || khz == 0 {
		t.Errorf("GetTSCKHz = %d, %v", khz, err)
	}
	if g.cpu.ID() != 0 {
		t.Errorf("ID = %d", g.cpu.ID())
	}
}

func TestIRQChip(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	s := openKVM(t)
	vm, err := s.CreateVM()
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	if err := vm.CreateIRQChip(); err != nil {
		t.Fatal(err)
	}
	if err := vm.CreatePIT2(kvm.PITSpeakerDummy); err != nil {
		t.Fatal(err)
	}
	mmapSize, err := s.VCPUMmapSize()
	if err != nil {
		t.Fatal(err)
	}
	cpu, err := vm.CreateVCPU(0, mmapSize)
	if err != nil {
		t.Fatal(err)
	}
	defer cpu.Close()

	for _, id := range []uint32{kvm.IRQChipPICMaster, kvm.IRQChipPICSlave, kvm.IRQChipIOAPIC} {
		chip, err := vm.GetIRQChip(id)
		if err != nil {
			t.Fatal(err)
		}
		if err := vm.SetIRQChip(&chip); err != nil {
			t.Fatal(err)
		}
	}
	ioapic, err := vm.GetIRQChip(kvm.IRQChipIOAPIC)
	if err != nil {
		t.Fatal(err)
	}
	if st := ioapic.IOAPIC(); st.BaseAddress != 0xfec00000 {
		t.Errorf("IOAPIC base %#x", st.BaseAddress)
	}
	pit, err := vm.GetPIT2()
	if err != nil {
		t.Fatal(err)
	}
	if err := vm.SetPIT2(&pit); err != nil {
		t.Fatal(err)
	}
	clock, err := vm.GetClock()
	if err != nil {
		t.Fatal(err)
	}
	clock.Flags = 0 // only KVM_CLOCK_REALTIME may be passed back
	if err := vm.SetClock(&clock); err != nil {
		t.Fatal(err)
	}
	if err := vm.IRQLine(4, 1); err != nil {
		t.Fatal(err)
	}
	if err := vm.IRQLine(4, 0); err != nil {
		t.Fatal(err)
	}
	routes := []kvm.IRQRoutingEntry{kvm.IRQChipRoute(4, kvm.IRQChipIOAPIC, 4), kvm.IRQChipRoute(4, kvm.IRQChipPICMaster, 4)}
	if err := vm.SetGSIRouting(routes); err != nil {
		t.Fatal(err)
	}
	lapic, err := cpu.GetLAPIC()
	if err != nil {
		t.Fatal(err)
	}
	if err := cpu.SetLAPIC(&lapic); err != nil {
		t.Fatal(err)
	}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(efd)
	if err := vm.IRQFD(&kvm.IRQFD{FD: uint32(efd), GSI: 4}); err != nil {
		t.Fatal(err)
	}
	if err := vm.IRQFD(&kvm.IRQFD{FD: uint32(efd), GSI: 4, Flags: kvm.IRQFDFlagDeassign}); err != nil {
		t.Fatal(err)
	}
	ioev := kvm.IOEventFD{Addr: 0x600, Len: 2, FD: int32(efd), Flags: kvm.IOEventFDFlagPIO}
	if err := vm.IOEventFD(&ioev); err != nil {
		t.Fatal(err)
	}
	ioev.Flags |= kvm.IOEventFDFlagDeassign
	if err := vm.IOEventFD(&ioev); err != nil {
		t.Fatal(err)
	}
}

func TestCloseIdempotent(t *testing.T) {
	g := newGuest(t)
	for i := 0; i < 2; i++ {
		if err := g.cpu.Close(); err != nil {
			t.Errorf("VCPU.Close #%d: %v", i+1, err)
		}
		if err := g.vm.Close(); err != nil {
			t.Errorf("VM.Close #%d: %v", i+1, err)
		}
	}
	g.cpu.SetImmediateExit(true) // after Close: a no-op, not a fault
	if _, err := g.cpu.GetRegs(); !errors.Is(err, kvm.ErrClosed) {
		t.Errorf("GetRegs after Close = %v", err)
	}
	if _, err := g.vm.CreateVCPU(1, 4096); err == nil {
		t.Error("CreateVCPU on closed VM succeeded")
	}
}
