package kvm

import (
	"encoding/binary"
	"strconv"
)

// runView reads the exit records of a struct kvm_run. It is the mmapped
// page(s) of a VCPU, or any byte slice in tests. Every accessor checks its
// bounds against len(r): a short buffer or a hostile offset yields zero
// values and empty slices, never a panic.
type runView []byte

func (r runView) u8(off int) uint8 {
	if off+1 > len(r) {
		return 0
	}
	return r[off]
}

func (r runView) u16(off int) uint16 {
	if off+2 > len(r) {
		return 0
	}
	return binary.NativeEndian.Uint16(r[off:])
}

func (r runView) u32(off int) uint32 {
	if off+4 > len(r) {
		return 0
	}
	return binary.NativeEndian.Uint32(r[off:])
}

func (r runView) u64(off int) uint64 {
	if off+8 > len(r) {
		return 0
	}
	return binary.NativeEndian.Uint64(r[off:])
}

// u64s returns n (at most max) words from off.
func (r runView) u64s(off int, n uint32, max int) []uint64 {
	k := min(int(n), max)
	if off+8*k > len(r) {
		return nil
	}
	out := make([]uint64, k)
	for i := range out {
		out[i] = r.u64(off + 8*i)
	}
	return out
}

func (r runView) exitReason() ExitReason { return ExitReason(r.u32(runOffExitReason)) }

// IOExit is a port I/O exit (ExitIO).
type IOExit struct {
	Direction uint8 // IOIn or IOOut
	Size      uint8 // bytes per access: 1, 2 or 4
	Port      uint16
	Count     uint32 // accesses, more than 1 for rep ins/outs
	// Data is Size*Count bytes inside kvm_run: for IOOut what the guest
	// wrote, for IOIn where the caller puts what it reads. It is empty if
	// KVM's data_offset points outside the mapping.
	Data []byte
}

func (r runView) io() IOExit {
	e := IOExit{
		Direction: r.u8(runOffIODirection),
		Size:      r.u8(runOffIOSize),
		Port:      r.u16(runOffIOPort),
		Count:     r.u32(runOffIOCount),
	}
	off := r.u64(runOffIODataOffset)
	n := uint64(e.Size) * uint64(e.Count) // at most 255 * (2^32-1): no overflow
	if off <= uint64(len(r)) && n <= uint64(len(r))-off {
		e.Data = r[off : off+n : off+n]
	}
	return e
}

// MMIOExit is a memory-mapped I/O exit (ExitMMIO).
type MMIOExit struct {
	PhysAddr uint64
	// Data is the access, len bytes (at most 8) inside kvm_run: for a write
	// what the guest wrote, for a read where the caller puts the value. It
	// is empty if KVM's len is over 8.
	Data    []byte
	IsWrite bool
}

func (r runView) mmio() MMIOExit {
	e := MMIOExit{
		PhysAddr: r.u64(runOffMMIOPhysAddr),
		IsWrite:  r.u8(runOffMMIOIsWrite) != 0,
	}
	if n := r.u32(runOffMMIOLen); n <= runMMIODataLen && runOffMMIOData+int(n) <= len(r) {
		e.Data = r[runOffMMIOData : runOffMMIOData+n : runOffMMIOData+n]
	}
	return e
}

// InternalErrorExit is an ExitInternalError: KVM could not handle an exit.
type InternalErrorExit struct {
	Suberror uint32   // InternalErrorEmulation, ...
	Data     []uint64 // ndata words (at most 16) of debug data
}

func (r runView) internalError() InternalErrorExit {
	return InternalErrorExit{
		Suberror: r.u32(runOffInternalSuberror),
		Data:     r.u64s(runOffInternalData, r.u32(runOffInternalNData), runInternalDataLen),
	}
}

// FailEntryExit is an ExitFailEntry: the hardware refused VM entry.
type FailEntryExit struct {
	HardwareEntryFailureReason uint64
	CPU                        uint32
}

func (r runView) failEntry() FailEntryExit {
	return FailEntryExit{
		HardwareEntryFailureReason: r.u64(runOffFailEntryReason),
		CPU:                        r.u32(runOffFailEntryCPU),
	}
}

// SystemEventExit is an ExitSystemEvent: the guest asked for shutdown,
// reset, ...
type SystemEventExit struct {
	Type uint32 // SystemEventShutdown, SystemEventReset, ...
	// Data is ndata words (at most 16); empty where the kernel predates
	// CapSystemEventData.
	Data []uint64
}

func (r runView) systemEvent() SystemEventExit {
	return SystemEventExit{
		Type: r.u32(runOffSystemEventType),
		Data: r.u64s(runOffSystemEventData, r.u32(runOffSystemEventNData), runSystemEventDataLen),
	}
}

var exitNames = [...]string{
	ExitUnknown:       "KVM_EXIT_UNKNOWN",
	ExitException:     "KVM_EXIT_EXCEPTION",
	ExitIO:            "KVM_EXIT_IO",
	ExitHypercall:     "KVM_EXIT_HYPERCALL",
	ExitDebug:         "KVM_EXIT_DEBUG",
	ExitHLT:           "KVM_EXIT_HLT",
	ExitMMIO:          "KVM_EXIT_MMIO",
	ExitIRQWindowOpen: "KVM_EXIT_IRQ_WINDOW_OPEN",
	ExitShutdown:      "KVM_EXIT_SHUTDOWN",
	ExitFailEntry:     "KVM_EXIT_FAIL_ENTRY",
	ExitIntr:          "KVM_EXIT_INTR",
	ExitSetTPR:        "KVM_EXIT_SET_TPR",
	ExitTPRAccess:     "KVM_EXIT_TPR_ACCESS",
	ExitNMI:           "KVM_EXIT_NMI",
	ExitInternalError: "KVM_EXIT_INTERNAL_ERROR",
	ExitWatchdog:      "KVM_EXIT_WATCHDOG",
	ExitEPR:           "KVM_EXIT_EPR",
	ExitSystemEvent:   "KVM_EXIT_SYSTEM_EVENT",
	ExitIOAPICEOI:     "KVM_EXIT_IOAPIC_EOI",
	ExitHyperV:        "KVM_EXIT_HYPERV",
	ExitX86RDMSR:      "KVM_EXIT_X86_RDMSR",
	ExitX86WRMSR:      "KVM_EXIT_X86_WRMSR",
	ExitDirtyRingFull: "KVM_EXIT_DIRTY_RING_FULL",
	ExitAPResetHold:   "KVM_EXIT_AP_RESET_HOLD",
	ExitX86BusLock:    "KVM_EXIT_X86_BUS_LOCK",
	ExitXen:           "KVM_EXIT_XEN",
	ExitNotify:        "KVM_EXIT_NOTIFY",
}

// String returns the C name of the exit reason ("KVM_EXIT_IO"), or
// "KVM_EXIT_(n)" for one this package does not name.
func (e ExitReason) String() string {
	if int(e) < len(exitNames) && exitNames[e] != "" {
		return exitNames[e]
	}
	return "KVM_EXIT_(" + strconv.FormatUint(uint64(e), 10) + ")"
}
