package kvm

import (
	"fmt"
	"sync"

	"golang.org/x/sys/unix"
)

// pageSize is the x86 page size, the unit of the dirty log.
const pageSize = 4096

// VM is a KVM virtual machine (the fd from KVM_CREATE_VM). Its methods may be
// called from any goroutine.
type VM struct {
	fd fileDesc

	mu sync.Mutex
	// slots maps each memory slot set through SetUserMemoryRegion to its
	// size in bytes, so that GetDirtyLog can refuse a bitmap shorter than
	// the one KVM would write. Guarded by mu.
	slots map[uint32]uint64
}

// Close closes the VM fd. KVM frees the VM once its vCPUs are closed too.
// Close is idempotent.
func (v *VM) Close() error { return v.fd.close() }

// CheckExtension returns KVM_CHECK_EXTENSION for c on the VM fd (see
// System.CheckExtension).
func (v *VM) CheckExtension(c Cap) (int, error) {
	return v.fd.ioctl("KVM_CHECK_EXTENSION", _KVM_CHECK_EXTENSION, uintptr(c))
}

// SetTSSAddr sets the guest-physical address of the three pages Intel VMX
// needs for real-mode emulation (KVM_SET_TSS_ADDR). Call it before creating
// vCPUs, at an address not used by guest memory.
func (v *VM) SetTSSAddr(addr uint64) error {
	_, err := v.fd.ioctl("KVM_SET_TSS_ADDR", _KVM_SET_TSS_ADDR, uintptr(addr))
	return err
}

// SetIdentityMapAddr sets the guest-physical address of the one-page
// identity page table VMX uses for real mode (KVM_SET_IDENTITY_MAP_ADDR).
// Call it before creating vCPUs.
func (v *VM) SetIdentityMapAddr(addr uint64) error {
	_, err := ioctlPtr(&v.fd, "KVM_SET_IDENTITY_MAP_ADDR", _KVM_SET_IDENTITY_MAP_ADDR, &addr)
	return err
}

// CreateIRQChip makes the in-kernel PICs, IOAPIC and local APICs
// (KVM_CREATE_IRQCHIP). Call it before creating vCPUs.
func (v *VM) CreateIRQChip() error {
	_, err := v.fd.ioctl("KVM_CREATE_IRQCHIP", _KVM_CREATE_IRQCHIP, 0)
	return err
}

// CreatePIT2 makes the in-kernel i8254 PIT (KVM_CREATE_PIT2); flags may be
// PITSpeakerDummy. Needs CreateIRQChip first.
func (v *VM) CreatePIT2(flags uint32) error {
	cfg := pitConfig{Flags: flags}
	_, err := ioctlPtr(&v.fd, "KVM_CREATE_PIT2", _KVM_CREATE_PIT2, &cfg)
	return err
}

// SetUserMemoryRegion creates, moves, resizes or (MemorySize 0) deletes a
// memory slot (KVM_SET_USER_MEMORY_REGION). UserspaceAddr must be the
// address of a host mapping of at least MemorySize bytes that outlives the
// slot; the package does not check it.
func (v *VM) SetUserMemoryRegion(r *UserspaceMemoryRegion) error {
	if _, err := ioctlPtr(&v.fd, "KVM_SET_USER_MEMORY_REGION", _KVM_SET_USER_MEMORY_REGION, r); err != nil {
		return err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if r.MemorySize == 0 {
		delete(v.slots, r.Slot)
	} else {
		v.slots[r.Slot] = r.MemorySize
	}
	return nil
}

// DirtyBitmapLen returns the number of uint64 words a dirty bitmap for a
// slot of memorySize bytes needs: one bit per 4 KiB page.
func DirtyBitmapLen(memorySize uint64) int {
	pages := (memorySize + pageSize - 1) / pageSize
	return int((pages + 63) / 64)
}

// IRQLine sets the level of an interrupt line of the in-kernel irqchip
// (KVM_IRQ_LINE): for edge-triggered lines, 1 then 0.
func (v *VM) IRQLine(irq uint32, level uint32) error {
	l := irqLevel{IRQ: irq, Level: level}
	_, err := ioctlPtr(&v.fd, "KVM_IRQ_LINE", _KVM_IRQ_LINE, &l)
	return err
}

// GetDirtyLog fills bitmap with the pages of slot written since the last
// call (KVM_GET_DIRTY_LOG); bit i of word j is page 64*j+i of the slot. The
// slot must have been set with MemLogDirtyPages through this VM, and bitmap
// must hold at least DirtyBitmapLen(slot size) words, since KVM writes that
// many.
func (v *VM) GetDirtyLog(slot uint32, bitmap []uint64) error {
	const op = "KVM_GET_DIRTY_LOG"
	if err := v.checkBitmap(op, slot, 0, bitmap); err != nil {
		return err
	}
	d := dirtyLog{Slot: slot, DirtyBitmap: bitmapPtr(bitmap)}
	_, err := ioctlPtr(&v.fd, op, _KVM_GET_DIRTY_LOG, &d)
	return err
}

// ClearDirtyLog re-protects numPages pages of slot starting at firstPage (a
// multiple of 64) whose bits are set in bitmap (KVM_CLEAR_DIRTY_LOG), with
// CapManualDirtyLogProtect2 enabled. bitmap must hold numPages bits.
func (v *VM) ClearDirtyLog(slot uint32, firstPage uint64, numPages uint32, bitmap []uint64) error {
	const op = "KVM_CLEAR_DIRTY_LOG"
	if err := v.checkBitmap(op, slot, numPages, bitmap); err != nil {
		return err
	}
	d := clearDirtyLog{Slot: slot, NumPages: numPages, FirstPage: firstPage, DirtyBitmap: bitmapPtr(bitmap)}
	_, err := ioctlPtr(&v.fd, op, _KVM_CLEAR_DIRTY_LOG, &d)
	return err
}

// checkBitmap refuses a bitmap KVM would read or write past: for
// numPages 0 it must cover the whole slot, else numPages bits.
func (v *VM) checkBitmap(op string, slot, numPages uint32, bitmap []uint64) error {
	v.mu.Lock()
	size, ok := v.slots[slot]
	v.mu.Unlock()
	if !ok {
		return &Error{Op: op, Err: fmt.Errorf("slot %d was not set through this VM: %w", slot, unix.ENOENT)}
	}
	need := DirtyBitmapLen(size)
	if numPages != 0 {
		need = int((uint64(numPages) + 63) / 64)
	}
	if len(bitmap) < need || len(bitmap) == 0 {
		return &Error{Op: op, Err: fmt.Errorf("bitmap of %d words, slot %d needs %d: %w", len(bitmap), slot, need, unix.EINVAL)}
	}
	return nil
}

// EnableCap enables a VM capability (KVM_ENABLE_CAP on the VM fd).
func (v *VM) EnableCap(c Cap, flags uint32, args [4]uint64) error {
	e := enableCap{Cap: uint32(c), Flags: flags, Args: args}
	_, err := ioctlPtr(&v.fd, "KVM_ENABLE_CAP", _KVM_ENABLE_CAP, &e)
	return err
}

// GetClock returns the kvmclock base (KVM_GET_CLOCK).
func (v *VM) GetClock() (ClockData, error) {
	var c ClockData
	_, err := ioctlPtr(&v.fd, "KVM_GET_CLOCK", _KVM_GET_CLOCK, &c)
	return c, err
}

// SetClock sets the kvmclock base (KVM_SET_CLOCK).
func (v *VM) SetClock(c *ClockData) error {
	_, err := ioctlPtr(&v.fd, "KVM_SET_CLOCK", _KVM_SET_CLOCK, c)
	return err
}

// GetIRQChip returns the state of one in-kernel interrupt controller
// (KVM_GET_IRQCHIP): chipID is IRQChipPICMaster, IRQChipPICSlave or
// IRQChipIOAPIC; read it with IRQChip.PIC or IRQChip.IOAPIC.
func (v *VM) GetIRQChip(chipID uint32) (IRQChip, error) {
	c := IRQChip{ChipID: chipID}
	_, err := ioctlPtr(&v.fd, "KVM_GET_IRQCHIP", _KVM_GET_IRQCHIP, &c)
	return c, err
}

// SetIRQChip restores the chip c.ChipID (KVM_SET_IRQCHIP).
func (v *VM) SetIRQChip(c *IRQChip) error {
	_, err := ioctlPtr(&v.fd, "KVM_SET_IRQCHIP", _KVM_SET_IRQCHIP, c)
	return err
}

// GetPIT2 returns the in-kernel PIT state (KVM_GET_PIT2).
func (v *VM) GetPIT2() (PITState2, error) {
	var p PITState2
	_, err := ioctlPtr(&v.fd, "KVM_GET_PIT2", _KVM_GET_PIT2, &p)
	return p, err
}

// SetPIT2 restores the in-kernel PIT state (KVM_SET_PIT2).
func (v *VM) SetPIT2(p *PITState2) error {
	_, err := ioctlPtr(&v.fd, "KVM_SET_PIT2", _KVM_SET_PIT2, p)
	return err
}

// IOEventFD binds (or, with IOEventFDFlagDeassign, unbinds) an eventfd to
// guest writes of an MMIO or port address (KVM_IOEVENTFD).
func (v *VM) IOEventFD(e *IOEventFD) error {
	_, err := ioctlPtr(&v.fd, "KVM_IOEVENTFD", _KVM_IOEVENTFD, e)
	return err
}

// IRQFD binds (or, with IRQFDFlagDeassign, unbinds) an eventfd that raises
// a GSI when signalled (KVM_IRQFD).
func (v *VM) IRQFD(f *IRQFD) error {
	_, err := ioctlPtr(&v.fd, "KVM_IRQFD", _KVM_IRQFD, f)
	return err
}

// SetGSIRouting replaces the whole GSI routing table (KVM_SET_GSI_ROUTING).
// Build entries with IRQChipRoute and MSIRoute.
func (v *VM) SetGSIRouting(entries []IRQRoutingEntry) error {
	_, err := ioctlBuf(&v.fd, "KVM_SET_GSI_ROUTING", _KVM_SET_GSI_ROUTING, encodeIRQRouting(entries))
	return err
}

// SignalMSI injects an MSI (KVM_SIGNAL_MSI). The count is KVM's: above 0
// delivered, 0 blocked by the guest.
func (v *VM) SignalMSI(m *MSI) (int, error) {
	return ioctlPtr(&v.fd, "KVM_SIGNAL_MSI", _KVM_SIGNAL_MSI, m)
}

// CreateVCPU makes vCPU id (KVM_CREATE_VCPU) and maps its struct kvm_run;
// mmapSize is System.VCPUMmapSize. The returned VCPU is bound to no thread
// yet: the first thread that runs it should make all its calls (package
// doc).
func (v *VM) CreateVCPU(id int, mmapSize int) (*VCPU, error) {
	if mmapSize < sizeofKVMRun {
		return nil, &Error{Op: "KVM_CREATE_VCPU", Err: fmt.Errorf("mmap size %d is smaller than struct kvm_run (%d): %w", mmapSize, sizeofKVMRun, unix.EINVAL)}
	}
	// The XSAVE size is a VM property; query it once for GetXSave/SetXSave.
	xsaveSize, err := v.CheckExtension(CapXSave2)
	if err != nil {
		return nil, err
	}
	fd, err := v.fd.ioctl("KVM_CREATE_VCPU", _KVM_CREATE_VCPU, uintptr(id))
	if err != nil {
		return nil, err
	}
	run, err := unix.Mmap(fd, 0, mmapSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(fd)
		return nil, &Error{Op: "mmap kvm_run", Err: err}
	}
	c := &VCPU{id: id, run: run, xsaveSize: xsaveSize}
	c.fd.set(fd)
	return c, nil
}
