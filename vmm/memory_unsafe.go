package vmm

import "unsafe"

// sliceAddr is the host virtual address of b's first byte, for
// KVM_SET_USER_MEMORY_REGION. b must be mmapped memory (never Go heap,
// which the garbage collector may move).
func sliceAddr(b []byte) uint64 {
	return uint64(uintptr(unsafe.Pointer(unsafe.SliceData(b))))
}
