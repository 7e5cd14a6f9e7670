// Package vmm builds and runs an x86-64 virtual machine on KVM that boots a
// Linux bzImage.
//
// It owns the machine model: guest RAM (mmapped by the VMM, never Go heap)
// and its layout, the Linux/x86 64-bit boot protocol (zero page, command
// line, initrd, e820 map), the firmware tables the kernel reads (ACPI RSDP,
// XSDT, FADT, MADT and a DSDT carrying \_S5), the in-kernel irqchip and PIT,
// the legacy devices a Linux guest touches (8250 UART on ttyS0, PCI
// configuration mechanism #1 with no devices yet, CMOS, the ACPI sleep and
// reset registers), and the vCPU threads.
//
// # Guest physical layout
//
//	0x0000_0500  GDT (null, null, code 0x10, data 0x18, TSS 0x20)
//	0x0000_7000  zero page (struct boot_params)
//	0x0000_8ff0  boot stack top
//	0x0000_9000  PML4, PDPT, 4 page directories: identity map of 4 GiB
//	0x0002_0000  kernel command line
//	0x0009_fc00  reserved (EBDA .. 1 MiB); ACPI tables at 0xe0000
//	0x0010_0000  protected-mode kernel (bzImage payload)
//	  ...        RAM up to min(memory, 3 GiB); initrd at its top
//	0xc000_0000  device hole: IOAPIC 0xfec00000, LAPIC 0xfee00000
//	0x1_0000_0000 the rest of RAM, when memory exceeds 3 GiB
//
// # Threads
//
// Each vCPU runs in its own goroutine locked to its OS thread for life; only
// that thread makes ioctls on its vCPU fd. Other goroutines stop a vCPU by
// setting kvm_run.immediate_exit and signalling its thread (SIGURG, which the
// Go runtime already handles and ignores), so KVM_RUN returns EINTR. EINTR
// is a normal return: the loop checks for a stop request and re-enters.
//
// # Ending
//
// The guest ends the machine by ACPI S5 (poweroff), by the ACPI reset
// register, the i8042 reset command or port 0xcf9 (reboot), all of which are
// normal ends. A triple fault (KVM_EXIT_SHUTDOWN) without a reset request,
// a KVM internal error (emulation failure among them) or a failed VM entry
// ends the machine with an error naming the cause.
package vmm
