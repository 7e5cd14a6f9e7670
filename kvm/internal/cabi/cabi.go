//go:build cgo

package cabi

/*
#include <stddef.h>
#include <linux/kvm.h>

typedef typeof(((struct kvm_vcpu_events *)0)->exception) gvmm_events_exception;
typedef typeof(((struct kvm_vcpu_events *)0)->interrupt) gvmm_events_interrupt;
typedef typeof(((struct kvm_vcpu_events *)0)->nmi) gvmm_events_nmi;
typedef typeof(((struct kvm_vcpu_events *)0)->smi) gvmm_events_smi;
typedef typeof(((struct kvm_vcpu_events *)0)->triple_fault) gvmm_events_triple_fault;

struct gvmm_entry {
	const char *type;  // struct name, or "" for a constant
	const char *name;  // field or constant name, or "" for the struct size
	unsigned long long value; // offset, size or constant value
	unsigned long long size;  // field size
};

#define S(T) { #T, "", sizeof(struct T), 0 }
#define F(T, f) { #T, #f, offsetof(struct T, f), sizeof(((struct T *)0)->f) }
// Anonymous member structs, named "<outer>.<member>" through their typedefs.
#define AS(N, T) { N, "", sizeof(T), 0 }
#define AF(N, T, f) { N, #f, offsetof(T, f), sizeof(((T *)0)->f) }
#define RUN(f) { "kvm_run", #f, offsetof(struct kvm_run, f), sizeof(((struct kvm_run *)0)->f) }
#define K(c) { "", #c, (unsigned long long)(c), 0 }

// Fields are listed in declaration order, all of them: the test matches
// them one to one with the Go struct's fields.
static const struct gvmm_entry gvmm_entries[] = {
	S(kvm_regs), F(kvm_regs, rax), F(kvm_regs, rbx), F(kvm_regs, rcx), F(kvm_regs, rdx),
	F(kvm_regs, rsi), F(kvm_regs, rdi), F(kvm_regs, rsp), F(kvm_regs, rbp),
	F(kvm_regs, r8), F(kvm_regs, r9), F(kvm_regs, r10), F(kvm_regs, r11),
	F(kvm_regs, r12), F(kvm_regs, r13), F(kvm_regs, r14), F(kvm_regs, r15),
	F(kvm_regs, rip), F(kvm_regs, rflags),

	S(kvm_segment), F(kvm_segment, base), F(kvm_segment, limit), F(kvm_segment, selector),
	F(kvm_segment, type), F(kvm_segment, present), F(kvm_segment, dpl), F(kvm_segment, db),
	F(kvm_segment, s), F(kvm_segment, l), F(kvm_segment, g), F(kvm_segment, avl),
	F(kvm_segment, unusable), F(kvm_segment, padding),

	S(kvm_dtable), F(kvm_dtable, base), F(kvm_dtable, limit), F(kvm_dtable, padding),

	S(kvm_sregs), F(kvm_sregs, cs), F(kvm_sregs, ds), F(kvm_sregs, es), F(kvm_sregs, fs),
	F(kvm_sregs, gs), F(kvm_sregs, ss), F(kvm_sregs, tr), F(kvm_sregs, ldt),
	F(kvm_sregs, gdt), F(kvm_sregs, idt), F(kvm_sregs, cr0), F(kvm_sregs, cr2),
	F(kvm_sregs, cr3), F(kvm_sregs, cr4), F(kvm_sregs, cr8), F(kvm_sregs, efer),
	F(kvm_sregs, apic_base), F(kvm_sregs, interrupt_bitmap),

	S(kvm_fpu), F(kvm_fpu, fpr), F(kvm_fpu, fcw), F(kvm_fpu, fsw), F(kvm_fpu, ftwx),
	F(kvm_fpu, pad1), F(kvm_fpu, last_opcode), F(kvm_fpu, last_ip), F(kvm_fpu, last_dp),
	F(kvm_fpu, xmm), F(kvm_fpu, mxcsr), F(kvm_fpu, pad2),

	S(kvm_msr_entry), F(kvm_msr_entry, index), F(kvm_msr_entry, reserved), F(kvm_msr_entry, data),
	S(kvm_msrs), F(kvm_msrs, nmsrs), F(kvm_msrs, pad),
	S(kvm_msr_list), F(kvm_msr_list, nmsrs),

	S(kvm_cpuid_entry2), F(kvm_cpuid_entry2, function), F(kvm_cpuid_entry2, index),
	F(kvm_cpuid_entry2, flags), F(kvm_cpuid_entry2, eax), F(kvm_cpuid_entry2, ebx),
	F(kvm_cpuid_entry2, ecx), F(kvm_cpuid_entry2, edx), F(kvm_cpuid_entry2, padding),
	S(kvm_cpuid2), F(kvm_cpuid2, nent), F(kvm_cpuid2, padding),

	S(kvm_userspace_memory_region), F(kvm_userspace_memory_region, slot),
	F(kvm_userspace_memory_region, flags), F(kvm_userspace_memory_region, guest_phys_addr),
	F(kvm_userspace_memory_region, memory_size), F(kvm_userspace_memory_region, userspace_addr),

	S(kvm_clock_data), F(kvm_clock_data, clock), F(kvm_clock_data, flags), F(kvm_clock_data, pad0),
	F(kvm_clock_data, realtime), F(kvm_clock_data, host_tsc), F(kvm_clock_data, pad),

	S(kvm_device_attr), F(kvm_device_attr, flags), F(kvm_device_attr, group), F(kvm_device_attr, attr),
	F(kvm_device_attr, addr),

	S(kvm_pic_state), F(kvm_pic_state, last_irr), F(kvm_pic_state, irr), F(kvm_pic_state, imr),
	F(kvm_pic_state, isr), F(kvm_pic_state, priority_add), F(kvm_pic_state, irq_base),
	F(kvm_pic_state, read_reg_select), F(kvm_pic_state, poll), F(kvm_pic_state, special_mask),
	F(kvm_pic_state, init_state), F(kvm_pic_state, auto_eoi), F(kvm_pic_state, rotate_on_auto_eoi),
	F(kvm_pic_state, special_fully_nested_mode), F(kvm_pic_state, init4), F(kvm_pic_state, elcr),
	F(kvm_pic_state, elcr_mask),

	S(kvm_ioapic_state), F(kvm_ioapic_state, base_address), F(kvm_ioapic_state, ioregsel),
	F(kvm_ioapic_state, id), F(kvm_ioapic_state, irr), F(kvm_ioapic_state, pad),
	F(kvm_ioapic_state, redirtbl),

	S(kvm_irqchip), F(kvm_irqchip, chip_id), F(kvm_irqchip, pad), F(kvm_irqchip, chip),

	S(kvm_pit_channel_state), F(kvm_pit_channel_state, count), F(kvm_pit_channel_state, latched_count),
	F(kvm_pit_channel_state, count_latched), F(kvm_pit_channel_state, status_latched),
	F(kvm_pit_channel_state, status), F(kvm_pit_channel_state, read_state),
	F(kvm_pit_channel_state, write_state), F(kvm_pit_channel_state, write_latch),
	F(kvm_pit_channel_state, rw_mode), F(kvm_pit_channel_state, mode), F(kvm_pit_channel_state, bcd),
	F(kvm_pit_channel_state, gate), F(kvm_pit_channel_state, count_load_time),
	S(kvm_pit_state2), F(kvm_pit_state2, channels), F(kvm_pit_state2, flags), F(kvm_pit_state2, reserved),
	S(kvm_pit_config), F(kvm_pit_config, flags), F(kvm_pit_config, pad),

	S(kvm_ioeventfd), F(kvm_ioeventfd, datamatch), F(kvm_ioeventfd, addr), F(kvm_ioeventfd, len),
	F(kvm_ioeventfd, fd), F(kvm_ioeventfd, flags), F(kvm_ioeventfd, pad),
	S(kvm_irqfd), F(kvm_irqfd, fd), F(kvm_irqfd, gsi), F(kvm_irqfd, flags), F(kvm_irqfd, resamplefd),
	F(kvm_irqfd, pad),

	S(kvm_irq_routing_irqchip), F(kvm_irq_routing_irqchip, irqchip), F(kvm_irq_routing_irqchip, pin),
	S(kvm_irq_routing_msi), F(kvm_irq_routing_msi, address_lo), F(kvm_irq_routing_msi, address_hi),
	F(kvm_irq_routing_msi, data), F(kvm_irq_routing_msi, devid),
	S(kvm_irq_routing_entry), F(kvm_irq_routing_entry, gsi), F(kvm_irq_routing_entry, type),
	F(kvm_irq_routing_entry, flags), F(kvm_irq_routing_entry, pad), F(kvm_irq_routing_entry, u),
	S(kvm_irq_routing), F(kvm_irq_routing, nr), F(kvm_irq_routing, flags),
	S(kvm_msi), F(kvm_msi, address_lo), F(kvm_msi, address_hi), F(kvm_msi, data), F(kvm_msi, flags),
	F(kvm_msi, devid), F(kvm_msi, pad),
	S(kvm_irq_level), F(kvm_irq_level, irq), F(kvm_irq_level, level),

	S(kvm_dirty_log), F(kvm_dirty_log, slot), F(kvm_dirty_log, padding1), F(kvm_dirty_log, dirty_bitmap),
	S(kvm_clear_dirty_log), F(kvm_clear_dirty_log, slot), F(kvm_clear_dirty_log, num_pages),
	F(kvm_clear_dirty_log, first_page), F(kvm_clear_dirty_log, dirty_bitmap),
	S(kvm_enable_cap), F(kvm_enable_cap, cap), F(kvm_enable_cap, flags), F(kvm_enable_cap, args),
	F(kvm_enable_cap, pad),

	S(kvm_xsave), F(kvm_xsave, region),
	S(kvm_xcr), F(kvm_xcr, xcr), F(kvm_xcr, reserved), F(kvm_xcr, value),
	S(kvm_xcrs), F(kvm_xcrs, nr_xcrs), F(kvm_xcrs, flags), F(kvm_xcrs, xcrs), F(kvm_xcrs, padding),
	S(kvm_lapic_state), F(kvm_lapic_state, regs),

	AS("kvm_vcpu_events.exception", gvmm_events_exception),
	AF("kvm_vcpu_events.exception", gvmm_events_exception, injected),
	AF("kvm_vcpu_events.exception", gvmm_events_exception, nr),
	AF("kvm_vcpu_events.exception", gvmm_events_exception, has_error_code),
	AF("kvm_vcpu_events.exception", gvmm_events_exception, pending),
	AF("kvm_vcpu_events.exception", gvmm_events_exception, error_code),
	AS("kvm_vcpu_events.interrupt", gvmm_events_interrupt),
	AF("kvm_vcpu_events.interrupt", gvmm_events_interrupt, injected),
	AF("kvm_vcpu_events.interrupt", gvmm_events_interrupt, nr),
	AF("kvm_vcpu_events.interrupt", gvmm_events_interrupt, soft),
	AF("kvm_vcpu_events.interrupt", gvmm_events_interrupt, shadow),
	AS("kvm_vcpu_events.nmi", gvmm_events_nmi),
	AF("kvm_vcpu_events.nmi", gvmm_events_nmi, injected),
	AF("kvm_vcpu_events.nmi", gvmm_events_nmi, pending),
	AF("kvm_vcpu_events.nmi", gvmm_events_nmi, masked),
	AF("kvm_vcpu_events.nmi", gvmm_events_nmi, pad),
	AS("kvm_vcpu_events.smi", gvmm_events_smi),
	AF("kvm_vcpu_events.smi", gvmm_events_smi, smm),
	AF("kvm_vcpu_events.smi", gvmm_events_smi, pending),
	AF("kvm_vcpu_events.smi", gvmm_events_smi, smm_inside_nmi),
	AF("kvm_vcpu_events.smi", gvmm_events_smi, latched_init),
	AS("kvm_vcpu_events.triple_fault", gvmm_events_triple_fault),
	AF("kvm_vcpu_events.triple_fault", gvmm_events_triple_fault, pending),
	S(kvm_vcpu_events), F(kvm_vcpu_events, exception), F(kvm_vcpu_events, interrupt),
	F(kvm_vcpu_events, nmi), F(kvm_vcpu_events, sipi_vector), F(kvm_vcpu_events, flags),
	F(kvm_vcpu_events, smi), F(kvm_vcpu_events, triple_fault), F(kvm_vcpu_events, reserved),
	F(kvm_vcpu_events, exception_has_payload), F(kvm_vcpu_events, exception_payload),

	S(kvm_mp_state), F(kvm_mp_state, mp_state),
	S(kvm_debugregs), F(kvm_debugregs, db), F(kvm_debugregs, dr6), F(kvm_debugregs, dr7),
	F(kvm_debugregs, flags), F(kvm_debugregs, reserved),

	S(kvm_run),
	RUN(request_interrupt_window), RUN(immediate_exit), RUN(exit_reason),
	RUN(ready_for_interrupt_injection), RUN(if_flag), RUN(flags), RUN(cr8), RUN(apic_base),
	RUN(io.direction), RUN(io.size), RUN(io.port), RUN(io.count), RUN(io.data_offset),
	RUN(mmio.phys_addr), RUN(mmio.data), RUN(mmio.len), RUN(mmio.is_write),
	RUN(internal.suberror), RUN(internal.ndata), RUN(internal.data),
	RUN(fail_entry.hardware_entry_failure_reason), RUN(fail_entry.cpu),
	RUN(system_event.type), RUN(system_event.ndata), RUN(system_event.data),

	K(KVM_API_VERSION),
	K(KVM_GET_API_VERSION), K(KVM_CREATE_VM), K(KVM_GET_MSR_INDEX_LIST),
	K(KVM_GET_MSR_FEATURE_INDEX_LIST), K(KVM_CHECK_EXTENSION), K(KVM_GET_VCPU_MMAP_SIZE),
	K(KVM_GET_SUPPORTED_CPUID), K(KVM_CREATE_VCPU), K(KVM_GET_DIRTY_LOG), K(KVM_CLEAR_DIRTY_LOG),
	K(KVM_SET_USER_MEMORY_REGION), K(KVM_SET_TSS_ADDR), K(KVM_SET_IDENTITY_MAP_ADDR),
	K(KVM_CREATE_IRQCHIP), K(KVM_IRQ_LINE), K(KVM_GET_IRQCHIP), K(KVM_SET_IRQCHIP),
	K(KVM_CREATE_PIT2), K(KVM_GET_PIT2), K(KVM_SET_PIT2), K(KVM_IOEVENTFD), K(KVM_IRQFD),
	K(KVM_SET_GSI_ROUTING), K(KVM_SIGNAL_MSI), K(KVM_ENABLE_CAP), K(KVM_GET_CLOCK), K(KVM_SET_CLOCK),
	K(KVM_RUN), K(KVM_GET_REGS), K(KVM_SET_REGS), K(KVM_GET_SREGS), K(KVM_SET_SREGS),
	K(KVM_GET_FPU), K(KVM_SET_FPU), K(KVM_GET_XSAVE), K(KVM_GET_XSAVE2), K(KVM_SET_XSAVE),
	K(KVM_GET_XCRS), K(KVM_SET_XCRS), K(KVM_GET_MSRS), K(KVM_SET_MSRS), K(KVM_GET_LAPIC),
	K(KVM_SET_LAPIC), K(KVM_GET_VCPU_EVENTS), K(KVM_SET_VCPU_EVENTS), K(KVM_GET_MP_STATE),
	K(KVM_SET_MP_STATE), K(KVM_GET_DEBUGREGS), K(KVM_SET_DEBUGREGS), K(KVM_SET_CPUID2),
	K(KVM_GET_CPUID2), K(KVM_GET_TSC_KHZ), K(KVM_SET_TSC_KHZ), K(KVM_KVMCLOCK_CTRL),
	K(KVM_GET_DEVICE_ATTR), K(KVM_SET_DEVICE_ATTR),
};

static int gvmm_nentries(void) { return sizeof(gvmm_entries) / sizeof(gvmm_entries[0]); }
static const struct gvmm_entry *gvmm_entry_at(int i) { return &gvmm_entries[i]; }
*/
import "C"

// Field is one member of a C struct.
type Field struct {
	Name   string // the C member name ("guest_phys_addr", "io.port")
	Offset uint64
	Size   uint64
}

// Struct is a C struct's size and its members in declaration order.
type Struct struct {
	Size   uint64
	Fields []Field
}

// Structs returns the structs the kvm package mirrors, keyed by C name
// without "struct " ("kvm_regs"; anonymous members as
// "kvm_vcpu_events.exception"). "kvm_run" lists only the members the kvm
// package reads.
func Structs() map[string]Struct {
	out := map[string]Struct{}
	for i := 0; i < int(C.gvmm_nentries()); i++ {
		e := C.gvmm_entry_at(C.int(i))
		typ, name := C.GoString(e._type), C.GoString(e.name)
		if typ == "" {
			continue
		}
		s := out[typ]
		if name == "" {
			s.Size = uint64(e.value)
		} else {
			s.Fields = append(s.Fields, Field{Name: name, Offset: uint64(e.value), Size: uint64(e.size)})
		}
		out[typ] = s
	}
	return out
}

// Constants returns the values of the KVM ioctl macros the kvm package
// uses, and KVM_API_VERSION, keyed by macro name.
func Constants() map[string]uint64 {
	out := map[string]uint64{}
	for i := 0; i < int(C.gvmm_nentries()); i++ {
		e := C.gvmm_entry_at(C.int(i))
		if C.GoString(e._type) == "" {
			out[C.GoString(e.name)] = uint64(e.value)
		}
	}
	return out
}
