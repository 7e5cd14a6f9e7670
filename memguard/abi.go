package memguard

import "fmt"

// Port is the first of the four I/O ports (Port..Port+3) gvmm claims for
// the paravirtual interface. A request is one 32-bit OUT to Port; see the
// package documentation for the register convention. It sits clear of
// QEMU's fw_cfg ports (0x510-0x51b) so a guest kernel probing for fw_cfg
// never touches it.
const (
	Port     = 0x0520
	PortSize = 4
)

// ABIVersion is returned by OpVersion in RBX.
const ABIVersion = 1

// Operations: the 32-bit value the guest writes to Port (EAX).
const (
	OpVersion    = 1 // RBX <- ABIVersion, RCX <- max regions, RSI <- max pages
	OpRegister   = 2 // RBX = VA, RCX = length, RSI = Mode; RBX <- region id
	OpUnregister = 3 // RBX = region id
	OpMeasure    = 4 // RBX = region id; RBX, RCX, RSI, RDI <- SHA-256
)

// Mode is a region's protection.
type Mode uint8

const (
	// Integrity: anyone may read; only the owner may write (through gvmm).
	Integrity Mode = 1
	// Confidential: only the owner may read or write (through gvmm).
	Confidential Mode = 2
)

func (m Mode) String() string {
	switch m {
	case Integrity:
		return "integrity"
	case Confidential:
		return "confidential"
	}
	return fmt.Sprintf("mode(%d)", uint8(m))
}

func (m Mode) valid() bool { return m == Integrity || m == Confidential }

// Errno is a result code returned to the guest in RAX, negated, with Linux
// errno values so a guest library can map them to its own errors.
type Errno int64

const (
	EPERM     Errno = 1  // request not from user mode (CPL 3), or not the owner
	ENOENT    Errno = 2  // no such region
	EFAULT    Errno = 14 // range not mapped, not a user page, or not writable
	EBUSY     Errno = 16 // overlaps another region (VA for the owner, GPA for anyone)
	EINVAL    Errno = 22 // bad mode, unaligned address or length, zero length
	ENOSPC    Errno = 28 // per-VM limit on regions, pages or memory slots
	ENOSYS    Errno = 38 // unknown operation
	EOVERFLOW Errno = 75 // range wraps or leaves the canonical user half
	EACCES    Errno = 13 // range maps memory outside RAM or reserved by gvmm
)

func (e Errno) Error() string {
	switch e {
	case EPERM:
		return "not permitted (not user mode, or not the owner)"
	case ENOENT:
		return "no such region"
	case EFAULT:
		return "range not mapped, not user, or not writable"
	case EBUSY:
		return "overlaps a protected region"
	case EINVAL:
		return "invalid argument"
	case ENOSPC:
		return "limit reached"
	case ENOSYS:
		return "unknown operation"
	case EOVERFLOW:
		return "range overflows"
	case EACCES:
		return "range maps device or reserved memory"
	}
	return fmt.Sprintf("errno %d", int64(e))
}

// Regs are the general-purpose registers of the request (as read by
// KVM_GET_REGS at the port exit) and of the response (to write back with
// KVM_SET_REGS). RDX holds the port number on the way in (OUT %eax,%dx) and
// is never changed.
type Regs struct {
	RAX, RBX, RCX, RDX, RSI, RDI uint64
}

// VCPUContext is what gvmm knows of the vCPU at an exit: enough to tell who
// is asking. It is plain data taken from KVM_GET_SREGS and KVM_GET_REGS.
type VCPUContext struct {
	VCPU int
	// CR0, CR3, CR4 and EFER as the vCPU had them.
	CR0, CR3, CR4, EFER uint64
	// CPL is the current privilege level: take SS.DPL from
	// KVM_GET_SREGS, where KVM reports the CPL on both VMX and SVM (CS.DPL
	// is not the CPL for a conforming code segment). Only 3 can be an
	// owner.
	CPL uint8
	// RIP is logged with violations.
	RIP uint64
}

// Control register and EFER bits the package reads.
const (
	cr0PG     = 1 << 31
	cr4PAE    = 1 << 5
	cr4LA57   = 1 << 12
	cr4PCIDE  = 1 << 17
	eferLMA   = 1 << 10
	physMask  = 0x000f_ffff_ffff_f000 // bits 51:12 of CR3 and of table entries
	pageSize  = 4096
	pageShift = 12
)

// longMode reports whether the vCPU is in 64-bit paging (4- or 5-level).
func (c VCPUContext) longMode() bool {
	return c.CR0&cr0PG != 0 && c.CR4&cr4PAE != 0 && c.EFER&eferLMA != 0
}

// la57 reports 5-level paging.
func (c VCPUContext) la57() bool { return c.CR4&cr4LA57 != 0 }

// root is the guest-physical address of the top-level page table: CR3
// bits 51:12. The low 12 bits are the PCID when CR4.PCIDE is set (Linux
// with page-table isolation also flips bit 11 there, PTI_USER_PCID_BIT)
// and PWT/PCD otherwise; bit 63 (no-flush) never reads back as set. All
// are masked.
func (c VCPUContext) root() uint64 { return c.CR3 & physMask }

// owner is the identity of the address space: the root as seen in user
// mode. Linux's page-table isolation switches to the kernel copy of the
// top-level table (CR3 bit 12 clear, PTI_USER_PGTABLE_BIT) on kernel entry
// and back to the user copy (bit 12 set) on exit; both a registration and
// every owner access come from CPL 3, so both see the user copy and the
// exact root is compared. Masking bit 12 as well would make two adjacent
// 4 KiB top-level tables of a kernel without isolation (which allocates
// them one page each) the same owner.
func (c VCPUContext) owner() uint64 { return c.root() }
