// Package vmmtest builds synthetic guest images for tests: a minimal
// bzImage whose 64-bit entry point runs a few bytes of machine code, so
// tests can drive the boot path and the failure paths (triple fault,
// emulation failure) without a Linux kernel.
package vmmtest

import "encoding/binary"

// Setup header offsets, from the kernel's Documentation/arch/x86/boot.rst.
const (
	setupSects  = 4
	setupSize   = (setupSects + 1) * 512
	entryOffset = 0x200 // 64-bit entry point: load address + 0x200
)

// BzImage returns a bzImage (boot protocol 2.15, 64-bit entry) whose
// 64-bit entry point executes code. initSize is the header's init_size.
func BzImage(code []byte, initSize uint32) []byte {
	payload := make([]byte, entryOffset+len(code))
	copy(payload[entryOffset:], code)
	for len(payload)%16 != 0 {
		payload = append(payload, 0xf4) // hlt
	}
	b := make([]byte, setupSize+len(payload))
	copy(b[setupSize:], payload)
	le := binary.LittleEndian
	b[0x1f1] = setupSects
	le.PutUint32(b[0x1f4:], uint32(len(payload)/16)) // syssize in paragraphs
	le.PutUint16(b[0x1fe:], 0xaa55)                  // boot_flag
	b[0x200] = 0xeb                                  // jmp: header ends at 0x202+0x6a
	b[0x201] = 0x6a
	copy(b[0x202:], "HdrS")
	le.PutUint16(b[0x206:], 0x020f)     // boot protocol 2.15
	b[0x211] = 0x01                     // loadflags: LOADED_HIGH
	le.PutUint32(b[0x22c:], 0x7fffffff) // initrd_addr_max
	le.PutUint32(b[0x230:], 0x200000)   // kernel_alignment
	b[0x234] = 1                        // relocatable
	le.PutUint16(b[0x236:], 0x1)        // xloadflags: XLF_KERNEL_64
	le.PutUint32(b[0x238:], 2047)       // cmdline_size
	le.PutUint32(b[0x260:], initSize)   // init_size
	return b
}

// Machine code for the 64-bit entry point.
var (
	// CodeTripleFault executes ud2 with an empty IDT: #UD cannot be
	// delivered, nor the #DF that follows, so the CPU shuts down.
	CodeTripleFault = []byte{0x0f, 0x0b}
	// CodeExecMMIO jumps into the device hole at 0xd0000000, where no
	// memory slot is: KVM cannot fetch the instruction to emulate it.
	CodeExecMMIO = []byte{0xb8, 0x00, 0x00, 0x00, 0xd0, 0xff, 0xe0} // mov eax, 0xd0000000; jmp rax
)

// CodePowerOff writes ACPI S5 (SLP_TYP 5 | SLP_EN) to the sleep control
// port gvmm announces in its FADT (0x600), as Linux's poweroff does.
var CodePowerOff = []byte{
	0x66, 0xba, 0x00, 0x06, // mov dx, 0x600
	0xb0, 0x34, // mov al, 0x34
	0xee,       // out dx, al
	0xf4,       // hlt
	0xeb, 0xfd, // jmp back to hlt
}
