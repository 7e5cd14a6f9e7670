package kvm

import (
	"errors"
	"fmt"
	"sync"

	"golang.org/x/sys/unix"
)

// VCPU is a virtual CPU (the fd from KVM_CREATE_VCPU) and its mmapped
// struct kvm_run. All methods but SetImmediateExit must be called from the
// vCPU's own thread (package doc).
type VCPU struct {
	fd fileDesc
	id int
	// xsaveSize is KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) on the VM: the
	// XSAVE buffer size, or 0 where only the 4096-byte KVM_GET_XSAVE exists.
	xsaveSize int

	// mu orders Close against SetImmediateExit, the one call from other
	// threads: Close takes it exclusively to unmap run. The vCPU thread
	// reads run without it.
	mu sync.RWMutex
	// run is the kvm_run mapping, nil once closed. Written only by Close.
	run []byte
}

// Close unmaps kvm_run and closes the vCPU fd. It is idempotent, and safe
// against a concurrent SetImmediateExit; it must not race with the vCPU
// thread's other calls.
func (c *VCPU) Close() error {
	c.mu.Lock()
	run := c.run
	c.run = nil
	c.mu.Unlock()
	var errs []error
	if run != nil {
		if err := unix.Munmap(run); err != nil {
			errs = append(errs, &Error{Op: "munmap kvm_run", Err: err})
		}
	}
	errs = append(errs, c.fd.close())
	return errors.Join(errs...)
}

// ID returns the vCPU id given to VM.CreateVCPU (its initial APIC id).
func (c *VCPU) ID() int { return c.id }

// Run enters the guest (KVM_RUN) until an exit KVM hands to user space;
// ExitReason and the exit accessors then describe it.
//
// Run never retries. When a signal is pending for the thread (the Go
// runtime's SIGURG preemption does this in normal operation; a kick does it
// on purpose) or immediate_exit is set, it returns an *Error wrapping
// unix.EINTR, and errors.Is(err, unix.EINTR) lets the caller decide whether
// to run again. (Where the guest was interrupted after entering, KVM
// reports ExitIntr with the same error.)
func (c *VCPU) Run() error {
	_, err := c.fd.ioctl("KVM_RUN", _KVM_RUN, 0)
	return err
}

// SetImmediateExit sets or clears kvm_run.immediate_exit (needs
// CapImmediateExit). While it is set, KVM_RUN returns EINTR at once without
// entering the guest. It is the one method safe to call from any thread.
//
// A kick, making a vCPU thread leave or skip the guest, is
// SetImmediateExit(true) followed by a signal to that thread: the store is
// an atomic, sequentially consistent read-modify-write of the word holding
// the byte, so it is globally visible before the signal is sent. Then
// either the thread has not yet entered KVM_RUN, and KVM reads the set byte
// on entry and returns EINTR; or it is in KVM_RUN, and the pending signal
// makes KVM return EINTR; or it is between two KVM_RUNs, and the next one
// sees the byte. No case loses the kick. The vCPU thread clears the byte
// (SetImmediateExit(false)) once it has handled the kick, before running
// again. After Close it does nothing.
func (c *VCPU) SetImmediateExit(on bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if len(c.run) < sizeofKVMRun {
		return
	}
	var v byte
	if on {
		v = 1
	}
	storeRunByte(c.run, runOffImmediateExit, v)
}

// ImmediateExit reports whether kvm_run.immediate_exit is set.
func (c *VCPU) ImmediateExit() bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.run) >= sizeofKVMRun && loadRunByte(c.run, runOffImmediateExit) != 0
}

// ExitReason returns kvm_run.exit_reason, valid after Run.
func (c *VCPU) ExitReason() ExitReason { return runView(c.run).exitReason() }

// IO returns the port I/O exit record (ExitReason ExitIO); Data aliases
// kvm_run and is valid until the next Run.
func (c *VCPU) IO() IOExit { return runView(c.run).io() }

// MMIO returns the MMIO exit record (ExitReason ExitMMIO); Data aliases
// kvm_run, so a read is completed by writing Data before the next Run.
func (c *VCPU) MMIO() MMIOExit { return runView(c.run).mmio() }

// InternalError returns the ExitInternalError record.
func (c *VCPU) InternalError() InternalErrorExit { return runView(c.run).internalError() }

// FailEntry returns the ExitFailEntry record.
func (c *VCPU) FailEntry() FailEntryExit { return runView(c.run).failEntry() }

// SystemEvent returns the ExitSystemEvent record.
func (c *VCPU) SystemEvent() SystemEventExit { return runView(c.run).systemEvent() }

// GetRegs returns the general-purpose registers (KVM_GET_REGS).
func (c *VCPU) GetRegs() (Regs, error) {
	var r Regs
	_, err := ioctlPtr(&c.fd, "KVM_GET_REGS", _KVM_GET_REGS, &r)
	return r, err
}

// SetRegs sets the general-purpose registers (KVM_SET_REGS).
func (c *VCPU) SetRegs(r *Regs) error {
	_, err := ioctlPtr(&c.fd, "KVM_SET_REGS", _KVM_SET_REGS, r)
	return err
}

// GetSregs returns the special registers (KVM_GET_SREGS).
func (c *VCPU) GetSregs() (Sregs, error) {
	var s Sregs
	_, err := ioctlPtr(&c.fd, "KVM_GET_SREGS", _KVM_GET_SREGS, &s)
	return s, err
}

// SetSregs sets the special registers (KVM_SET_SREGS).
func (c *VCPU) SetSregs(s *Sregs) error {
	_, err := ioctlPtr(&c.fd, "KVM_SET_SREGS", _KVM_SET_SREGS, s)
	return err
}

// GetFPU returns the x87/SSE state (KVM_GET_FPU).
func (c *VCPU) GetFPU() (FPU, error) {
	var f FPU
	_, err := ioctlPtr(&c.fd, "KVM_GET_FPU", _KVM_GET_FPU, &f)
	return f, err
}

// SetFPU sets the x87/SSE state (KVM_SET_FPU).
func (c *VCPU) SetFPU(f *FPU) error {
	_, err := ioctlPtr(&c.fd, "KVM_SET_FPU", _KVM_SET_FPU, f)
	return err
}

// XSave is the vCPU's XSAVE area as KVM exchanges it: the 4096-byte struct
// kvm_xsave, or with CapXSave2 the larger size that capability reports.
type XSave struct {
	Region []byte
}

// xsaveLen is the buffer KVM reads or writes for the XSAVE ioctls.
func (c *VCPU) xsaveLen() int { return max(c.xsaveSize, sizeofXSaveLegacy) }

// GetXSave returns the XSAVE area: KVM_GET_XSAVE2 with the size from
// CapXSave2 where the VM reports one, else KVM_GET_XSAVE.
func (c *VCPU) GetXSave() (XSave, error) {
	buf := make([]byte, c.xsaveLen())
	op, req := "KVM_GET_XSAVE", uintptr(_KVM_GET_XSAVE)
	if c.xsaveSize > 0 {
		op, req = "KVM_GET_XSAVE2", _KVM_GET_XSAVE2
	}
	if _, err := ioctlBuf(&c.fd, op, req, buf); err != nil {
		return XSave{}, err
	}
	return XSave{Region: buf}, nil
}

// SetXSave sets the XSAVE area (KVM_SET_XSAVE). A Region shorter than the
// size KVM reads is zero-extended, never read past.
func (c *VCPU) SetXSave(x *XSave) error {
	buf := make([]byte, max(c.xsaveLen(), len(x.Region)))
	copy(buf, x.Region)
	_, err := ioctlBuf(&c.fd, "KVM_SET_XSAVE", _KVM_SET_XSAVE, buf)
	return err
}

// GetXCRs returns the extended control registers (KVM_GET_XCRS).
func (c *VCPU) GetXCRs() (XCRs, error) {
	var x XCRs
	_, err := ioctlPtr(&c.fd, "KVM_GET_XCRS", _KVM_GET_XCRS, &x)
	return x, err
}

// SetXCRs sets the extended control registers (KVM_SET_XCRS).
func (c *VCPU) SetXCRs(x *XCRs) error {
	_, err := ioctlPtr(&c.fd, "KVM_SET_XCRS", _KVM_SET_XCRS, x)
	return err
}

// GetMSRs reads the MSRs named by entries[i].Index into entries[i].Data
// (KVM_GET_MSRS) and returns how many KVM read: it stops at the first MSR it
// cannot read, so a count below len(entries) names the failing one.
func (c *VCPU) GetMSRs(entries []MSREntry) (int, error) {
	if len(entries) == 0 {
		return 0, nil
	}
	buf := encodeMSRs(entries)
	n, err := ioctlBuf(&c.fd, "KVM_GET_MSRS", _KVM_GET_MSRS, buf)
	if err != nil {
		return 0, err
	}
	if err := decodeMSRs(buf, entries); err != nil {
		return 0, &Error{Op: "KVM_GET_MSRS", Err: err}
	}
	return n, nil
}

// SetMSRs writes the MSRs in entries (KVM_SET_MSRS) and returns how many
// KVM wrote; like GetMSRs it stops at the first failure, and the caller must
// check the count.
func (c *VCPU) SetMSRs(entries []MSREntry) (int, error) {
	if len(entries) == 0 {
		return 0, nil
	}
	return ioctlBuf(&c.fd, "KVM_SET_MSRS", _KVM_SET_MSRS, encodeMSRs(entries))
}

// GetLAPIC returns the local APIC register page (KVM_GET_LAPIC).
func (c *VCPU) GetLAPIC() (LAPICState, error) {
	var l LAPICState
	_, err := ioctlPtr(&c.fd, "KVM_GET_LAPIC", _KVM_GET_LAPIC, &l)
	return l, err
}

// SetLAPIC sets the local APIC register page (KVM_SET_LAPIC).
func (c *VCPU) SetLAPIC(l *LAPICState) error {
	_, err := ioctlPtr(&c.fd, "KVM_SET_LAPIC", _KVM_SET_LAPIC, l)
	return err
}

// GetVCPUEvents returns pending exceptions, interrupts and NMIs
// (KVM_GET_VCPU_EVENTS).
func (c *VCPU) GetVCPUEvents() (VCPUEvents, error) {
	var e VCPUEvents
	_, err := ioctlPtr(&c.fd, "KVM_GET_VCPU_EVENTS", _KVM_GET_VCPU_EVENTS, &e)
	return e, err
}

// SetVCPUEvents sets them (KVM_SET_VCPU_EVENTS); Flags says which optional
// fields are valid.
func (c *VCPU) SetVCPUEvents(e *VCPUEvents) error {
	_, err := ioctlPtr(&c.fd, "KVM_SET_VCPU_EVENTS", _KVM_SET_VCPU_EVENTS, e)
	return err
}

// GetMPState returns the multiprocessing state (KVM_GET_MP_STATE).
func (c *VCPU) GetMPState() (MPState, error) {
	var m MPState
	_, err := ioctlPtr(&c.fd, "KVM_GET_MP_STATE", _KVM_GET_MP_STATE, &m)
	return m, err
}

// SetMPState sets the multiprocessing state (KVM_SET_MP_STATE).
func (c *VCPU) SetMPState(m *MPState) error {
	_, err := ioctlPtr(&c.fd, "KVM_SET_MP_STATE", _KVM_SET_MP_STATE, m)
	return err
}

// GetDebugRegs returns the debug registers (KVM_GET_DEBUGREGS).
func (c *VCPU) GetDebugRegs() (DebugRegs, error) {
	var d DebugRegs
	_, err := ioctlPtr(&c.fd, "KVM_GET_DEBUGREGS", _KVM_GET_DEBUGREGS, &d)
	return d, err
}

// SetDebugRegs sets the debug registers (KVM_SET_DEBUGREGS).
func (c *VCPU) SetDebugRegs(d *DebugRegs) error {
	_, err := ioctlPtr(&c.fd, "KVM_SET_DEBUGREGS", _KVM_SET_DEBUGREGS, d)
	return err
}

// SetCPUID sets the CPUID leaves the guest sees (KVM_SET_CPUID2). Recent
// kernels refuse to change CPUID once the vCPU has run (EINVAL unless it is
// identical), so call it before the first Run.
func (c *VCPU) SetCPUID(entries []CPUIDEntry) error {
	if len(entries) == 0 {
		return &Error{Op: "KVM_SET_CPUID2", Err: fmt.Errorf("no entries: %w", unix.EINVAL)}
	}
	_, err := ioctlBuf(&c.fd, "KVM_SET_CPUID2", _KVM_SET_CPUID2, encodeCPUID(entries))
	return err
}

// GetCPUID returns the CPUID leaves set for this vCPU (KVM_GET_CPUID2).
//
// Some kernels (6.1 among them) leave kvm_cpuid2.nent as the caller's
// buffer size when KVM_GET_CPUID2 succeeds, so the unused tail of the
// buffer comes back as all-zero entries; they are dropped. No real entry is
// all zero: leaf 0 always reports its maximum leaf and vendor.
func (c *VCPU) GetCPUID() ([]CPUIDEntry, error) {
	entries, err := getCPUID(&c.fd, "KVM_GET_CPUID2", _KVM_GET_CPUID2)
	if err != nil {
		return nil, err
	}
	for len(entries) > 0 && entries[len(entries)-1] == (CPUIDEntry{}) {
		entries = entries[:len(entries)-1]
	}
	return entries, nil
}

// GetTSCKHz returns the guest TSC frequency in kHz (KVM_GET_TSC_KHZ).
func (c *VCPU) GetTSCKHz() (uint32, error) {
	khz, err := c.fd.ioctl("KVM_GET_TSC_KHZ", _KVM_GET_TSC_KHZ, 0)
	if err != nil {
		return 0, err
	}
	return uint32(khz), nil
}

// SetTSCKHz sets the guest TSC frequency in kHz (KVM_SET_TSC_KHZ, needs
// CapTSCControl).
func (c *VCPU) SetTSCKHz(khz uint32) error {
	_, err := c.fd.ioctl("KVM_SET_TSC_KHZ", _KVM_SET_TSC_KHZ, uintptr(khz))
	return err
}

// KVMClockCtrl tells the guest's kvmclock that the vCPU was paused, so that
// it does not report a soft lockup (KVM_KVMCLOCK_CTRL).
func (c *VCPU) KVMClockCtrl() error {
	_, err := c.fd.ioctl("KVM_KVMCLOCK_CTRL", _KVM_KVMCLOCK_CTRL, 0)
	return err
}

// deviceAttrArg is deviceAttr with Addr as a real pointer, as the ioctls
// take it: the value stays reachable, and moves with the goroutine's stack,
// until KVM has read or written it. Its layout is deviceAttr's (checked in
// unit_test.go).
type deviceAttrArg struct {
	Flags uint32
	Group uint32
	Attr  uint64
	Addr  *uint64
}

// TSCOffset returns the guest TSC's offset from the host's: the guest
// reads host TSC + offset (KVM_GET_DEVICE_ATTR, KVM_VCPU_TSC_OFFSET, Linux
// 5.16 and later; errors.Is(err, unix.ENXIO) where KVM lacks it).
func (c *VCPU) TSCOffset() (uint64, error) {
	var v uint64
	a := deviceAttrArg{Group: vcpuTSCCtrl, Attr: vcpuTSCOffset, Addr: &v}
	if _, err := ioctlPtr(&c.fd, "KVM_GET_DEVICE_ATTR", _KVM_GET_DEVICE_ATTR, &a); err != nil {
		return 0, err
	}
	return v, nil
}

// SetTSCOffset sets the guest TSC's offset from the host's
// (KVM_SET_DEVICE_ATTR, KVM_VCPU_TSC_OFFSET). It is how a migrated guest's
// TSC goes on counting the time it was paused (the kernel's
// Documentation/virt/kvm/devices/vcpu.rst, section 4.1).
func (c *VCPU) SetTSCOffset(off uint64) error {
	v := off
	a := deviceAttrArg{Group: vcpuTSCCtrl, Attr: vcpuTSCOffset, Addr: &v}
	_, err := ioctlPtr(&c.fd, "KVM_SET_DEVICE_ATTR", _KVM_SET_DEVICE_ATTR, &a)
	return err
}
