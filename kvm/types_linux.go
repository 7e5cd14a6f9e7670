//go:build ignore

// Input to "go tool cgo -godefs" (see generate.go). Every type and constant
// here is computed from <linux/kvm.h> by the C compiler; internal/mkztypes
// renames the fields to Go style and carries these doc comments over to
// ztypes_linux_amd64.go.

package kvm

/*
#include <stddef.h>
#include <linux/kvm.h>

// Anonymous member structs get a name so that godefs can emit them.
typedef typeof(((struct kvm_vcpu_events *)0)->exception) gvmm_events_exception;
typedef typeof(((struct kvm_vcpu_events *)0)->interrupt) gvmm_events_interrupt;
typedef typeof(((struct kvm_vcpu_events *)0)->nmi) gvmm_events_nmi;
typedef typeof(((struct kvm_vcpu_events *)0)->smi) gvmm_events_smi;
typedef typeof(((struct kvm_vcpu_events *)0)->triple_fault) gvmm_events_triple_fault;

// struct kvm_run is mostly a union of exit records; the package reads it as
// bytes at these offsets (see run.go).
enum {
	gvmm_sizeof_kvm_run = sizeof(struct kvm_run),
	gvmm_run_request_interrupt_window = offsetof(struct kvm_run, request_interrupt_window),
	gvmm_run_immediate_exit = offsetof(struct kvm_run, immediate_exit),
	gvmm_run_exit_reason = offsetof(struct kvm_run, exit_reason),
	gvmm_run_ready_for_interrupt_injection = offsetof(struct kvm_run, ready_for_interrupt_injection),
	gvmm_run_if_flag = offsetof(struct kvm_run, if_flag),
	gvmm_run_flags = offsetof(struct kvm_run, flags),
	gvmm_run_cr8 = offsetof(struct kvm_run, cr8),
	gvmm_run_apic_base = offsetof(struct kvm_run, apic_base),
	gvmm_run_io_direction = offsetof(struct kvm_run, io.direction),
	gvmm_run_io_size = offsetof(struct kvm_run, io.size),
	gvmm_run_io_port = offsetof(struct kvm_run, io.port),
	gvmm_run_io_count = offsetof(struct kvm_run, io.count),
	gvmm_run_io_data_offset = offsetof(struct kvm_run, io.data_offset),
	gvmm_run_mmio_phys_addr = offsetof(struct kvm_run, mmio.phys_addr),
	gvmm_run_mmio_data = offsetof(struct kvm_run, mmio.data),
	gvmm_run_mmio_data_len = sizeof(((struct kvm_run *)0)->mmio.data),
	gvmm_run_mmio_len = offsetof(struct kvm_run, mmio.len),
	gvmm_run_mmio_is_write = offsetof(struct kvm_run, mmio.is_write),
	gvmm_run_internal_suberror = offsetof(struct kvm_run, internal.suberror),
	gvmm_run_internal_ndata = offsetof(struct kvm_run, internal.ndata),
	gvmm_run_internal_data = offsetof(struct kvm_run, internal.data),
	gvmm_run_internal_data_len = sizeof(((struct kvm_run *)0)->internal.data) / sizeof(__u64),
	gvmm_run_fail_entry_reason = offsetof(struct kvm_run, fail_entry.hardware_entry_failure_reason),
	gvmm_run_fail_entry_cpu = offsetof(struct kvm_run, fail_entry.cpu),
	gvmm_run_system_event_type = offsetof(struct kvm_run, system_event.type),
	gvmm_run_system_event_ndata = offsetof(struct kvm_run, system_event.ndata),
	gvmm_run_system_event_data = offsetof(struct kvm_run, system_event.data),
	gvmm_run_system_event_data_len = sizeof(((struct kvm_run *)0)->system_event.data) / sizeof(__u64),
};
*/
import "C"

// Regs mirrors struct kvm_regs (KVM_GET_REGS, KVM_SET_REGS).
type Regs C.struct_kvm_regs

// Segment mirrors struct kvm_segment, one segment register in Sregs.
type Segment C.struct_kvm_segment

// DTable mirrors struct kvm_dtable, a descriptor-table register (GDTR, IDTR).
type DTable C.struct_kvm_dtable

// Sregs mirrors struct kvm_sregs (KVM_GET_SREGS, KVM_SET_SREGS).
type Sregs C.struct_kvm_sregs

// FPU mirrors struct kvm_fpu (KVM_GET_FPU, KVM_SET_FPU).
type FPU C.struct_kvm_fpu

// MSREntry mirrors struct kvm_msr_entry, one element of struct kvm_msrs.
type MSREntry C.struct_kvm_msr_entry

// msrsHeader mirrors the fixed part of struct kvm_msrs; entries follow it.
type msrsHeader C.struct_kvm_msrs

// msrListHeader mirrors the fixed part of struct kvm_msr_list; indices follow.
type msrListHeader C.struct_kvm_msr_list

// CPUIDEntry mirrors struct kvm_cpuid_entry2, one element of struct kvm_cpuid2.
type CPUIDEntry C.struct_kvm_cpuid_entry2

// cpuid2Header mirrors the fixed part of struct kvm_cpuid2; entries follow it.
type cpuid2Header C.struct_kvm_cpuid2

// UserspaceMemoryRegion mirrors struct kvm_userspace_memory_region
// (KVM_SET_USER_MEMORY_REGION).
type UserspaceMemoryRegion C.struct_kvm_userspace_memory_region

// ClockData mirrors struct kvm_clock_data (KVM_GET_CLOCK, KVM_SET_CLOCK).
type ClockData C.struct_kvm_clock_data

// PICState mirrors struct kvm_pic_state, the layout of IRQChip.Chip for the
// PIC chips.
type PICState C.struct_kvm_pic_state

// IOAPICState mirrors struct kvm_ioapic_state, the layout of IRQChip.Chip for
// the IOAPIC.
type IOAPICState C.struct_kvm_ioapic_state

// IRQChip mirrors struct kvm_irqchip (KVM_GET_IRQCHIP, KVM_SET_IRQCHIP). Chip
// is the C union: a PICState or IOAPICState in its first bytes, see
// the PIC and IOAPIC methods.
type IRQChip C.struct_kvm_irqchip

// PITChannelState mirrors struct kvm_pit_channel_state.
type PITChannelState C.struct_kvm_pit_channel_state

// PITState2 mirrors struct kvm_pit_state2 (KVM_GET_PIT2, KVM_SET_PIT2).
type PITState2 C.struct_kvm_pit_state2

// pitConfig mirrors struct kvm_pit_config (KVM_CREATE_PIT2).
type pitConfig C.struct_kvm_pit_config

// IOEventFD mirrors struct kvm_ioeventfd (KVM_IOEVENTFD).
type IOEventFD C.struct_kvm_ioeventfd

// IRQFD mirrors struct kvm_irqfd (KVM_IRQFD).
type IRQFD C.struct_kvm_irqfd

// IRQRoutingIRQChip mirrors struct kvm_irq_routing_irqchip, the union member
// of IRQRoutingEntry for IRQRoutingTypeIRQChip.
type IRQRoutingIRQChip C.struct_kvm_irq_routing_irqchip

// IRQRoutingMSI mirrors struct kvm_irq_routing_msi, the union member of
// IRQRoutingEntry for IRQRoutingTypeMSI.
type IRQRoutingMSI C.struct_kvm_irq_routing_msi

// IRQRoutingEntry mirrors struct kvm_irq_routing_entry, one element of
// struct kvm_irq_routing. U is the C union; build entries with
// IRQChipRoute or MSIRoute.
type IRQRoutingEntry C.struct_kvm_irq_routing_entry

// irqRoutingHeader mirrors the fixed part of struct kvm_irq_routing.
type irqRoutingHeader C.struct_kvm_irq_routing

// MSI mirrors struct kvm_msi (KVM_SIGNAL_MSI).
type MSI C.struct_kvm_msi

// irqLevel mirrors struct kvm_irq_level (KVM_IRQ_LINE).
type irqLevel C.struct_kvm_irq_level

// dirtyLog mirrors struct kvm_dirty_log (KVM_GET_DIRTY_LOG). Bitmap is the
// union's pointer member, so the bitmap stays reachable while KVM writes it.
type dirtyLog C.struct_kvm_dirty_log

// clearDirtyLog mirrors struct kvm_clear_dirty_log (KVM_CLEAR_DIRTY_LOG).
type clearDirtyLog C.struct_kvm_clear_dirty_log

// deviceAttr mirrors struct kvm_device_attr (KVM_{HAS,GET,SET}_DEVICE_ATTR;
// on a vCPU fd, the vCPU's attributes). Addr is the address of the value.
type deviceAttr C.struct_kvm_device_attr

// enableCap mirrors struct kvm_enable_cap (KVM_ENABLE_CAP).
type enableCap C.struct_kvm_enable_cap

// xsaveLegacy mirrors struct kvm_xsave, the fixed 4096-byte KVM_GET_XSAVE
// buffer; XSave holds the bytes.
type xsaveLegacy C.struct_kvm_xsave

// XCR mirrors struct kvm_xcr, one extended control register.
type XCR C.struct_kvm_xcr

// XCRs mirrors struct kvm_xcrs (KVM_GET_XCRS, KVM_SET_XCRS).
type XCRs C.struct_kvm_xcrs

// LAPICState mirrors struct kvm_lapic_state (KVM_GET_LAPIC, KVM_SET_LAPIC):
// the local APIC's 1 KiB register page.
type LAPICState C.struct_kvm_lapic_state

// VCPUEventsException mirrors the exception member of struct kvm_vcpu_events.
type VCPUEventsException C.gvmm_events_exception

// VCPUEventsInterrupt mirrors the interrupt member of struct kvm_vcpu_events.
type VCPUEventsInterrupt C.gvmm_events_interrupt

// VCPUEventsNMI mirrors the nmi member of struct kvm_vcpu_events.
type VCPUEventsNMI C.gvmm_events_nmi

// VCPUEventsSMI mirrors the smi member of struct kvm_vcpu_events.
type VCPUEventsSMI C.gvmm_events_smi

// VCPUEventsTripleFault mirrors the triple_fault member of struct
// kvm_vcpu_events.
type VCPUEventsTripleFault C.gvmm_events_triple_fault

// VCPUEvents mirrors struct kvm_vcpu_events (KVM_GET_VCPU_EVENTS,
// KVM_SET_VCPU_EVENTS).
type VCPUEvents C.struct_kvm_vcpu_events

// MPState mirrors struct kvm_mp_state (KVM_GET_MP_STATE, KVM_SET_MP_STATE).
type MPState C.struct_kvm_mp_state

// DebugRegs mirrors struct kvm_debugregs (KVM_GET_DEBUGREGS,
// KVM_SET_DEBUGREGS).
type DebugRegs C.struct_kvm_debugregs

// Cap is a KVM capability number for KVM_CHECK_EXTENSION and KVM_ENABLE_CAP.
type Cap uint32

// Capabilities (KVM_CAP_*).
const (
	CapIRQChip                Cap = C.KVM_CAP_IRQCHIP
	CapHLT                    Cap = C.KVM_CAP_HLT
	CapUserMemory             Cap = C.KVM_CAP_USER_MEMORY
	CapSetTSSAddr             Cap = C.KVM_CAP_SET_TSS_ADDR
	CapExtCPUID               Cap = C.KVM_CAP_EXT_CPUID
	CapNrVCPUs                Cap = C.KVM_CAP_NR_VCPUS
	CapNrMemslots             Cap = C.KVM_CAP_NR_MEMSLOTS
	CapMPState                Cap = C.KVM_CAP_MP_STATE
	CapSyncMMU                Cap = C.KVM_CAP_SYNC_MMU
	CapUserNMI                Cap = C.KVM_CAP_USER_NMI
	CapIRQRouting             Cap = C.KVM_CAP_IRQ_ROUTING
	CapIRQInjectStatus        Cap = C.KVM_CAP_IRQ_INJECT_STATUS
	CapIRQFD                  Cap = C.KVM_CAP_IRQFD
	CapPIT2                   Cap = C.KVM_CAP_PIT2
	CapPITState2              Cap = C.KVM_CAP_PIT_STATE2
	CapIOEventFD              Cap = C.KVM_CAP_IOEVENTFD
	CapSetIdentityMapAddr     Cap = C.KVM_CAP_SET_IDENTITY_MAP_ADDR
	CapAdjustClock            Cap = C.KVM_CAP_ADJUST_CLOCK
	CapInternalErrorData      Cap = C.KVM_CAP_INTERNAL_ERROR_DATA
	CapVCPUEvents             Cap = C.KVM_CAP_VCPU_EVENTS
	CapDebugRegs              Cap = C.KVM_CAP_DEBUGREGS
	CapXSave                  Cap = C.KVM_CAP_XSAVE
	CapXCRS                   Cap = C.KVM_CAP_XCRS
	CapTSCControl             Cap = C.KVM_CAP_TSC_CONTROL
	CapGetTSCKHz              Cap = C.KVM_CAP_GET_TSC_KHZ
	CapMaxVCPUs               Cap = C.KVM_CAP_MAX_VCPUS
	CapTSCDeadlineTimer       Cap = C.KVM_CAP_TSC_DEADLINE_TIMER
	CapKVMClockCtrl           Cap = C.KVM_CAP_KVMCLOCK_CTRL
	CapSignalMSI              Cap = C.KVM_CAP_SIGNAL_MSI
	CapReadonlyMem            Cap = C.KVM_CAP_READONLY_MEM
	CapSplitIRQChip           Cap = C.KVM_CAP_SPLIT_IRQCHIP
	CapMaxVCPUID              Cap = C.KVM_CAP_MAX_VCPU_ID
	CapX2APICAPI              Cap = C.KVM_CAP_X2APIC_API
	CapImmediateExit          Cap = C.KVM_CAP_IMMEDIATE_EXIT
	CapGetMSRFeatures         Cap = C.KVM_CAP_GET_MSR_FEATURES
	CapExceptionPayload       Cap = C.KVM_CAP_EXCEPTION_PAYLOAD
	CapManualDirtyLogProtect2 Cap = C.KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2
	CapXSave2                 Cap = C.KVM_CAP_XSAVE2
	CapSystemEventData        Cap = C.KVM_CAP_SYSTEM_EVENT_DATA
)

// ExitReason is kvm_run.exit_reason, why KVM_RUN returned to user space.
type ExitReason uint32

// Exit reasons (KVM_EXIT_*).
const (
	ExitUnknown       ExitReason = C.KVM_EXIT_UNKNOWN
	ExitException     ExitReason = C.KVM_EXIT_EXCEPTION
	ExitIO            ExitReason = C.KVM_EXIT_IO
	ExitHypercall     ExitReason = C.KVM_EXIT_HYPERCALL
	ExitDebug         ExitReason = C.KVM_EXIT_DEBUG
	ExitHLT           ExitReason = C.KVM_EXIT_HLT
	ExitMMIO          ExitReason = C.KVM_EXIT_MMIO
	ExitIRQWindowOpen ExitReason = C.KVM_EXIT_IRQ_WINDOW_OPEN
	ExitShutdown      ExitReason = C.KVM_EXIT_SHUTDOWN
	ExitFailEntry     ExitReason = C.KVM_EXIT_FAIL_ENTRY
	ExitIntr          ExitReason = C.KVM_EXIT_INTR
	ExitSetTPR        ExitReason = C.KVM_EXIT_SET_TPR
	ExitTPRAccess     ExitReason = C.KVM_EXIT_TPR_ACCESS
	ExitNMI           ExitReason = C.KVM_EXIT_NMI
	ExitInternalError ExitReason = C.KVM_EXIT_INTERNAL_ERROR
	ExitWatchdog      ExitReason = C.KVM_EXIT_WATCHDOG
	ExitEPR           ExitReason = C.KVM_EXIT_EPR
	ExitSystemEvent   ExitReason = C.KVM_EXIT_SYSTEM_EVENT
	ExitIOAPICEOI     ExitReason = C.KVM_EXIT_IOAPIC_EOI
	ExitHyperV        ExitReason = C.KVM_EXIT_HYPERV
	ExitX86RDMSR      ExitReason = C.KVM_EXIT_X86_RDMSR
	ExitX86WRMSR      ExitReason = C.KVM_EXIT_X86_WRMSR
	ExitDirtyRingFull ExitReason = C.KVM_EXIT_DIRTY_RING_FULL
	ExitAPResetHold   ExitReason = C.KVM_EXIT_AP_RESET_HOLD
	ExitX86BusLock    ExitReason = C.KVM_EXIT_X86_BUS_LOCK
	ExitXen           ExitReason = C.KVM_EXIT_XEN
	ExitNotify        ExitReason = C.KVM_EXIT_NOTIFY
)

// Internal-error suberrors (KVM_INTERNAL_ERROR_*), InternalErrorExit.Suberror.
const (
	InternalErrorEmulation            = C.KVM_INTERNAL_ERROR_EMULATION
	InternalErrorSimulEx              = C.KVM_INTERNAL_ERROR_SIMUL_EX
	InternalErrorDeliveryEv           = C.KVM_INTERNAL_ERROR_DELIVERY_EV
	InternalErrorUnexpectedExitReason = C.KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON
)

// System event types (KVM_SYSTEM_EVENT_*), SystemEventExit.Type.
const (
	SystemEventShutdown = C.KVM_SYSTEM_EVENT_SHUTDOWN
	SystemEventReset    = C.KVM_SYSTEM_EVENT_RESET
	SystemEventCrash    = C.KVM_SYSTEM_EVENT_CRASH
	SystemEventWakeup   = C.KVM_SYSTEM_EVENT_WAKEUP
	SystemEventSuspend  = C.KVM_SYSTEM_EVENT_SUSPEND
	SystemEventSEVTerm  = C.KVM_SYSTEM_EVENT_SEV_TERM
)

// IOExit.Direction values (KVM_EXIT_IO_IN, KVM_EXIT_IO_OUT).
const (
	IOIn  = C.KVM_EXIT_IO_IN
	IOOut = C.KVM_EXIT_IO_OUT
)

// UserspaceMemoryRegion.Flags (KVM_MEM_*).
const (
	MemLogDirtyPages = C.KVM_MEM_LOG_DIRTY_PAGES
	MemReadonly      = C.KVM_MEM_READONLY
)

// ClockData.Flags (KVM_CLOCK_*).
const (
	ClockTSCStable = C.KVM_CLOCK_TSC_STABLE
	ClockRealtime  = C.KVM_CLOCK_REALTIME
	ClockHostTSC   = C.KVM_CLOCK_HOST_TSC
)

// vCPU attribute group and attribute of the guest's TSC offset.
const (
	vcpuTSCCtrl   = C.KVM_VCPU_TSC_CTRL
	vcpuTSCOffset = C.KVM_VCPU_TSC_OFFSET
)

// PITSpeakerDummy is the CreatePIT2 flag KVM_PIT_SPEAKER_DUMMY.
const PITSpeakerDummy = C.KVM_PIT_SPEAKER_DUMMY

// MPState.State values (KVM_MP_STATE_*), x86 ones.
const (
	MPStateRunnable      = C.KVM_MP_STATE_RUNNABLE
	MPStateUninitialized = C.KVM_MP_STATE_UNINITIALIZED
	MPStateInitReceived  = C.KVM_MP_STATE_INIT_RECEIVED
	MPStateHalted        = C.KVM_MP_STATE_HALTED
	MPStateSIPIReceived  = C.KVM_MP_STATE_SIPI_RECEIVED
	MPStateAPResetHold   = C.KVM_MP_STATE_AP_RESET_HOLD
)

// CPUIDEntry.Flags (KVM_CPUID_FLAG_*). The kernel spells the first one
// KVM_CPUID_FLAG_SIGNIFCANT_INDEX.
const (
	CPUIDFlagSignificantIndex = C.KVM_CPUID_FLAG_SIGNIFCANT_INDEX
	CPUIDFlagStatefulFunc     = C.KVM_CPUID_FLAG_STATEFUL_FUNC
	CPUIDFlagStateReadNext    = C.KVM_CPUID_FLAG_STATE_READ_NEXT
)

// IRQChip.ChipID values (KVM_IRQCHIP_*).
const (
	IRQChipPICMaster = C.KVM_IRQCHIP_PIC_MASTER
	IRQChipPICSlave  = C.KVM_IRQCHIP_PIC_SLAVE
	IRQChipIOAPIC    = C.KVM_IRQCHIP_IOAPIC
)

// IOEventFD.Flags (KVM_IOEVENTFD_FLAG_*).
const (
	IOEventFDFlagDatamatch = C.KVM_IOEVENTFD_FLAG_DATAMATCH
	IOEventFDFlagPIO       = C.KVM_IOEVENTFD_FLAG_PIO
	IOEventFDFlagDeassign  = C.KVM_IOEVENTFD_FLAG_DEASSIGN
)

// IRQFD.Flags (KVM_IRQFD_FLAG_*).
const (
	IRQFDFlagDeassign = C.KVM_IRQFD_FLAG_DEASSIGN
	IRQFDFlagResample = C.KVM_IRQFD_FLAG_RESAMPLE
)

// IRQRoutingEntry.Type (KVM_IRQ_ROUTING_*).
const (
	IRQRoutingTypeIRQChip = C.KVM_IRQ_ROUTING_IRQCHIP
	IRQRoutingTypeMSI     = C.KVM_IRQ_ROUTING_MSI
)

// MSIValidDevID is the MSI.Flags / IRQRoutingEntry.Flags bit KVM_MSI_VALID_DEVID.
const MSIValidDevID = C.KVM_MSI_VALID_DEVID

// VCPUEvents.Flags (KVM_VCPUEVENT_VALID_*).
const (
	VCPUEventValidNMIPending  = C.KVM_VCPUEVENT_VALID_NMI_PENDING
	VCPUEventValidSIPIVector  = C.KVM_VCPUEVENT_VALID_SIPI_VECTOR
	VCPUEventValidShadow      = C.KVM_VCPUEVENT_VALID_SHADOW
	VCPUEventValidSMM         = C.KVM_VCPUEVENT_VALID_SMM
	VCPUEventValidPayload     = C.KVM_VCPUEVENT_VALID_PAYLOAD
	VCPUEventValidTripleFault = C.KVM_VCPUEVENT_VALID_TRIPLE_FAULT
)

// EnableCap arguments for CapManualDirtyLogProtect2 (KVM_DIRTY_LOG_*).
const (
	DirtyLogManualProtectEnable = C.KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE
	DirtyLogInitiallySet        = C.KVM_DIRTY_LOG_INITIALLY_SET
)

// APIVersion is the only KVM_GET_API_VERSION value this package accepts.
const APIVersion = C.KVM_API_VERSION

// Sizes of the variable-length and raw ABI records.
const (
	sizeofKVMRun          = C.gvmm_sizeof_kvm_run
	sizeofXSaveLegacy     = C.sizeof_struct_kvm_xsave
	sizeofCPUIDEntry      = C.sizeof_struct_kvm_cpuid_entry2
	sizeofCPUID2Header    = C.sizeof_struct_kvm_cpuid2
	sizeofMSREntry        = C.sizeof_struct_kvm_msr_entry
	sizeofMSRsHeader      = C.sizeof_struct_kvm_msrs
	sizeofMSRListHeader   = C.sizeof_struct_kvm_msr_list
	sizeofIRQRoutingEntry = C.sizeof_struct_kvm_irq_routing_entry
	sizeofIRQRoutingHdr   = C.sizeof_struct_kvm_irq_routing
)

// Offsets into struct kvm_run (see run.go).
const (
	runOffRequestInterruptWindow     = C.gvmm_run_request_interrupt_window
	runOffImmediateExit              = C.gvmm_run_immediate_exit
	runOffExitReason                 = C.gvmm_run_exit_reason
	runOffReadyForInterruptInjection = C.gvmm_run_ready_for_interrupt_injection
	runOffIFFlag                     = C.gvmm_run_if_flag
	runOffFlags                      = C.gvmm_run_flags
	runOffCR8                        = C.gvmm_run_cr8
	runOffAPICBase                   = C.gvmm_run_apic_base
	runOffIODirection                = C.gvmm_run_io_direction
	runOffIOSize                     = C.gvmm_run_io_size
	runOffIOPort                     = C.gvmm_run_io_port
	runOffIOCount                    = C.gvmm_run_io_count
	runOffIODataOffset               = C.gvmm_run_io_data_offset
	runOffMMIOPhysAddr               = C.gvmm_run_mmio_phys_addr
	runOffMMIOData                   = C.gvmm_run_mmio_data
	runMMIODataLen                   = C.gvmm_run_mmio_data_len
	runOffMMIOLen                    = C.gvmm_run_mmio_len
	runOffMMIOIsWrite                = C.gvmm_run_mmio_is_write
	runOffInternalSuberror           = C.gvmm_run_internal_suberror
	runOffInternalNData              = C.gvmm_run_internal_ndata
	runOffInternalData               = C.gvmm_run_internal_data
	runInternalDataLen               = C.gvmm_run_internal_data_len
	runOffFailEntryReason            = C.gvmm_run_fail_entry_reason
	runOffFailEntryCPU               = C.gvmm_run_fail_entry_cpu
	runOffSystemEventType            = C.gvmm_run_system_event_type
	runOffSystemEventNData           = C.gvmm_run_system_event_ndata
	runOffSystemEventData            = C.gvmm_run_system_event_data
	runSystemEventDataLen            = C.gvmm_run_system_event_data_len
)

// ioctl request numbers, named after their C macros. abi_test.go checks each
// against the macro's value.
const (
	_KVM_GET_API_VERSION            = C.KVM_GET_API_VERSION
	_KVM_CREATE_VM                  = C.KVM_CREATE_VM
	_KVM_GET_MSR_INDEX_LIST         = C.KVM_GET_MSR_INDEX_LIST
	_KVM_GET_MSR_FEATURE_INDEX_LIST = C.KVM_GET_MSR_FEATURE_INDEX_LIST
	_KVM_CHECK_EXTENSION            = C.KVM_CHECK_EXTENSION
	_KVM_GET_VCPU_MMAP_SIZE         = C.KVM_GET_VCPU_MMAP_SIZE
	_KVM_GET_SUPPORTED_CPUID        = C.KVM_GET_SUPPORTED_CPUID

	_KVM_CREATE_VCPU            = C.KVM_CREATE_VCPU
	_KVM_GET_DIRTY_LOG          = C.KVM_GET_DIRTY_LOG
	_KVM_CLEAR_DIRTY_LOG        = C.KVM_CLEAR_DIRTY_LOG
	_KVM_SET_USER_MEMORY_REGION = C.KVM_SET_USER_MEMORY_REGION
	_KVM_SET_TSS_ADDR           = C.KVM_SET_TSS_ADDR
	_KVM_SET_IDENTITY_MAP_ADDR  = C.KVM_SET_IDENTITY_MAP_ADDR
	_KVM_CREATE_IRQCHIP         = C.KVM_CREATE_IRQCHIP
	_KVM_IRQ_LINE               = C.KVM_IRQ_LINE
	_KVM_GET_IRQCHIP            = C.KVM_GET_IRQCHIP
	_KVM_SET_IRQCHIP            = C.KVM_SET_IRQCHIP
	_KVM_CREATE_PIT2            = C.KVM_CREATE_PIT2
	_KVM_GET_PIT2               = C.KVM_GET_PIT2
	_KVM_SET_PIT2               = C.KVM_SET_PIT2
	_KVM_IOEVENTFD              = C.KVM_IOEVENTFD
	_KVM_IRQFD                  = C.KVM_IRQFD
	_KVM_SET_GSI_ROUTING        = C.KVM_SET_GSI_ROUTING
	_KVM_SIGNAL_MSI             = C.KVM_SIGNAL_MSI
	_KVM_ENABLE_CAP             = C.KVM_ENABLE_CAP
	_KVM_GET_CLOCK              = C.KVM_GET_CLOCK
	_KVM_SET_CLOCK              = C.KVM_SET_CLOCK

	_KVM_RUN             = C.KVM_RUN
	_KVM_GET_REGS        = C.KVM_GET_REGS
	_KVM_SET_REGS        = C.KVM_SET_REGS
	_KVM_GET_SREGS       = C.KVM_GET_SREGS
	_KVM_SET_SREGS       = C.KVM_SET_SREGS
	_KVM_GET_FPU         = C.KVM_GET_FPU
	_KVM_SET_FPU         = C.KVM_SET_FPU
	_KVM_GET_XSAVE       = C.KVM_GET_XSAVE
	_KVM_GET_XSAVE2      = C.KVM_GET_XSAVE2
	_KVM_SET_XSAVE       = C.KVM_SET_XSAVE
	_KVM_GET_XCRS        = C.KVM_GET_XCRS
	_KVM_SET_XCRS        = C.KVM_SET_XCRS
	_KVM_GET_MSRS        = C.KVM_GET_MSRS
	_KVM_SET_MSRS        = C.KVM_SET_MSRS
	_KVM_GET_LAPIC       = C.KVM_GET_LAPIC
	_KVM_SET_LAPIC       = C.KVM_SET_LAPIC
	_KVM_GET_VCPU_EVENTS = C.KVM_GET_VCPU_EVENTS
	_KVM_SET_VCPU_EVENTS = C.KVM_SET_VCPU_EVENTS
	_KVM_GET_MP_STATE    = C.KVM_GET_MP_STATE
	_KVM_SET_MP_STATE    = C.KVM_SET_MP_STATE
	_KVM_GET_DEBUGREGS   = C.KVM_GET_DEBUGREGS
	_KVM_SET_DEBUGREGS   = C.KVM_SET_DEBUGREGS
	_KVM_SET_CPUID2      = C.KVM_SET_CPUID2
	_KVM_GET_CPUID2      = C.KVM_GET_CPUID2
	_KVM_GET_TSC_KHZ     = C.KVM_GET_TSC_KHZ
	_KVM_SET_TSC_KHZ     = C.KVM_SET_TSC_KHZ
	_KVM_KVMCLOCK_CTRL   = C.KVM_KVMCLOCK_CTRL

	_KVM_GET_DEVICE_ATTR = C.KVM_GET_DEVICE_ATTR
	_KVM_SET_DEVICE_ATTR = C.KVM_SET_DEVICE_ATTR
)
