package vmm

import (
	"encoding/binary"
	"fmt"

	"github.com/gvmm/gvmm/kvm"
)

// x86 control register and EFER bits used at boot.
const (
	cr0PE   = 1 << 0
	cr0ET   = 1 << 4
	cr0PG   = 1 << 31
	cr4PAE  = 1 << 5
	eferLME = 1 << 8
	eferLMA = 1 << 10

	gdtSelCode = 0x10 // __BOOT_CS
	gdtSelData = 0x18 // __BOOT_DS
	gdtSelTSS  = 0x20
)

// MSRs given values at boot on every vCPU.
const (
	msrIA32TSC         = 0x10
	msrIA32SysenterCS  = 0x174
	msrIA32SysenterESP = 0x175
	msrIA32SysenterEIP = 0x176
	msrIA32MiscEnable  = 0x1a0
	msrMTRRDefType     = 0x2ff
	msrSTAR            = 0xc0000081
	msrLSTAR           = 0xc0000082
	msrCSTAR           = 0xc0000083
	msrSyscallMask     = 0xc0000084
	msrKernelGSBase    = 0xc0000102

	miscEnableFastString = 1
	mtrrEnableWB         = 1<<11 | 6 // MTRRs on, default type write-back
)

// LAPIC local vector table registers and delivery modes.
const (
	apicLVTLINT0   = 0x350
	apicLVTLINT1   = 0x360
	apicModeNMI    = 4
	apicModeExtINT = 7
)

// resetStub is the only "BIOS" gvmm has: 16 bytes of real-mode code at the
// reset vector that ask gvmm for a reset through the ACPI reset register.
// Linux reboots through it on hardware-reduced ACPI machines: there
// reboot_type defaults to EFI (efi_reboot_required), and without EFI it
// falls through to BOOT_BIOS, a real-mode jump to f000:fff0.
var resetStub = [16]byte{
	0xba, portResetReg & 0xff, portResetReg >> 8, // mov dx, portResetReg
	0xb0, resetValue, // mov al, resetValue
	0xee,       // out dx, al
	0xf4,       // hlt
	0xeb, 0xfd, // jmp to the hlt
}

// gdtEntry encodes an x86 segment descriptor.
func gdtEntry(flags uint16, base, limit uint32) uint64 {
	return uint64(base&0xff000000)<<32 |
		uint64(flags&0xf0ff)<<40 |
		uint64(limit&0x000f0000)<<32 |
		uint64(base&0x00ffffff)<<16 |
		uint64(limit&0x0000ffff)
}

// bootGDT is the GDT the 64-bit boot protocol asks for: flat 4 GiB code at
// __BOOT_CS (0x10) and data at __BOOT_DS (0x18), plus a TSS.
func bootGDT() []uint64 {
	return []uint64{
		0,
		0,
		gdtEntry(0xa09b, 0, 0xfffff), // code: present, ring 0, exec/read, L=1, G=1
		gdtEntry(0xc093, 0, 0xfffff), // data: present, ring 0, read/write, D/B=1, G=1
		gdtEntry(0x808b, 0, 0xfffff), // 64-bit TSS (busy)
	}
}

// segmentFromGDT expands descriptor e at selector sel into KVM's form.
func segmentFromGDT(e uint64, sel uint16) kvm.Segment {
	limit := uint32(e&0xffff) | uint32(e>>32)&0xf0000
	g := uint8(e>>55) & 1
	if g == 1 {
		limit = limit<<12 | 0xfff
	}
	present := uint8(e>>47) & 1
	s := kvm.Segment{
		Base:     (e>>16)&0xffffff | (e>>32)&0xff000000,
		Limit:    limit,
		Selector: sel,
		Type:     uint8(e>>40) & 0xf,
		S:        uint8(e>>44) & 1,
		DPL:      uint8(e>>45) & 3,
		Present:  present,
		AVL:      uint8(e>>52) & 1,
		L:        uint8(e>>53) & 1,
		DB:       uint8(e>>54) & 1,
		G:        g,
	}
	if present == 0 {
		s.Unusable = 1
	}
	return s
}

// writeBootTables writes the GDT and the identity-mapping page tables (4
// GiB in 2 MiB pages) the 64-bit entry point needs.
func writeBootTables(mem *Memory) error {
	gdt := bootGDT()
	buf := make([]byte, 8*len(gdt))
	for i, e := range gdt {
		binary.LittleEndian.PutUint64(buf[8*i:], e)
	}
	if err := mem.WriteAt(buf, gdtAddr); err != nil {
		return fmt.Errorf("write GDT: %w", err)
	}
	pt := make([]byte, pdAddr+4*pageSize-pml4Addr)
	le := binary.LittleEndian
	le.PutUint64(pt[0:], pdptAddr|3) // PML4[0] -> PDPT, present+writable
	for i := 0; i < 4; i++ {
		le.PutUint64(pt[pdptAddr-pml4Addr+8*i:], uint64(pdAddr+i*pageSize)|3)
	}
	for i := 0; i < 4*512; i++ {
		le.PutUint64(pt[pdAddr-pml4Addr+8*i:], uint64(i)<<21|0x83) // 2 MiB, present+writable
	}
	if err := mem.WriteAt(pt, pml4Addr); err != nil {
		return fmt.Errorf("write page tables: %w", err)
	}
	return nil
}

// setupBSP puts vCPU 0 at the kernel's 64-bit entry point: long mode with
// paging on, flat segments from the boot GDT, RSI pointing at the zero
// page, interrupts off. Application processors are started by the guest
// through INIT/SIPI, which the in-kernel LAPIC handles.
func setupBSP(c *kvm.VCPU, entry uint64) error {
	sregs, err := c.GetSregs()
	if err != nil {
		return err
	}
	gdt := bootGDT()
	code := segmentFromGDT(gdt[2], gdtSelCode)
	data := segmentFromGDT(gdt[3], gdtSelData)
	tss := segmentFromGDT(gdt[4], gdtSelTSS)
	sregs.CS = code
	sregs.DS, sregs.ES, sregs.FS, sregs.GS, sregs.SS = data, data, data, data, data
	sregs.TR = tss
	sregs.GDT = kvm.DTable{Base: gdtAddr, Limit: uint16(8*len(gdt) - 1)}
	sregs.IDT = kvm.DTable{Base: 0, Limit: 0}
	sregs.CR0 = cr0PE | cr0ET | cr0PG
	sregs.CR3 = pml4Addr
	sregs.CR4 = cr4PAE
	sregs.EFER = eferLME | eferLMA
	if err := c.SetSregs(&sregs); err != nil {
		return err
	}
	regs := kvm.Regs{
		RFLAGS: 0x2,
		RIP:    entry,
		RSP:    bootStackTop,
		RBP:    bootStackTop,
		RSI:    zeroPageAddr,
	}
	if err := c.SetRegs(&regs); err != nil {
		return err
	}
	fpu := kvm.FPU{FCW: 0x37f, MXCSR: 0x1f80}
	return c.SetFPU(&fpu)
}

// setupVCPU gives any vCPU its CPUID, boot MSRs and LAPIC local interrupt
// pins (LINT0 ExtINT for the PIC, LINT1 NMI), as a PC BIOS would.
func setupVCPU(c *kvm.VCPU, cpuid []kvm.CPUIDEntry) error {
	if err := c.SetCPUID(cpuid); err != nil {
		return err
	}
	msrs := []kvm.MSREntry{
		{Index: msrIA32SysenterCS}, {Index: msrIA32SysenterESP}, {Index: msrIA32SysenterEIP},
		{Index: msrSTAR}, {Index: msrCSTAR}, {Index: msrKernelGSBase}, {Index: msrSyscallMask},
		{Index: msrLSTAR}, {Index: msrIA32TSC},
		{Index: msrIA32MiscEnable, Data: miscEnableFastString},
		{Index: msrMTRRDefType, Data: mtrrEnableWB},
	}
	n, err := c.SetMSRs(msrs)
	if err != nil {
		return err
	}
	if n != len(msrs) {
		return fmt.Errorf("KVM_SET_MSRS: KVM refused MSR %#x (set %d of %d)", msrs[n].Index, n, len(msrs))
	}
	lapic, err := c.GetLAPIC()
	if err != nil {
		return err
	}
	setLVTMode(&lapic, apicLVTLINT0, apicModeExtINT)
	setLVTMode(&lapic, apicLVTLINT1, apicModeNMI)
	return c.SetLAPIC(&lapic)
}

func setLVTMode(l *kvm.LAPICState, reg int, mode uint32) {
	v := binary.LittleEndian.Uint32(l.Regs[reg:])
	v = v&^0x700 | mode<<8
	binary.LittleEndian.PutUint32(l.Regs[reg:], v)
}
