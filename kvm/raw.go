package kvm

import "fmt"

// Raw is the set of kernel structures that can be copied as their bytes:
// fixed size, integers and arrays of them only, no pointers, no padding
// Go adds that C does not have (abi_test.go checks both against
// linux/kvm.h). Their raw bytes are the kernel's layout on this
// architecture (x86-64, little-endian), which is what a VMM saves for a
// vCPU or an in-kernel device. Copying them is what QEMU and Cloud
// Hypervisor do; encoding/binary's field-by-field reflection took eight
// times as long for a vCPU's state (40 against 5 us on a modern host),
// and a migrating guest is paused meanwhile.
type Raw interface {
	MPState | VCPUEvents | LAPICState | XCRs | Sregs | Regs | DebugRegs |
		IRQChip | PITState2 | ClockData | MSREntry | CPUIDEntry
}

// AppendRaw appends the raw bytes of the values in vs to b.
func AppendRaw[T Raw](b []byte, vs ...T) []byte {
	if len(vs) == 0 {
		return b
	}
	return append(b, rawBytes(vs)...)
}

// DecodeRaw fills vs from p, which must hold exactly len(vs) values.
func DecodeRaw[T Raw](p []byte, vs []T) error {
	dst := rawBytes(vs)
	if len(p) != len(dst) {
		return fmt.Errorf("kvm: %d bytes for %d × %d-byte %T", len(p), len(vs), RawSize[T](), *new(T))
	}
	copy(dst, p)
	return nil
}

// DecodeRawValue fills *v from p, which must hold exactly one T.
func DecodeRawValue[T Raw](p []byte, v *T) error { return DecodeRaw(p, one(v)) }

// RawSize is the size of one T in bytes.
func RawSize[T Raw]() int { return rawSize[T]() }
