package vmm

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// sliceAddr is the host virtual address of b's first byte, for
// KVM_SET_USER_MEMORY_REGION. b must be mmapped memory (never Go heap,
// which the garbage collector may move).
func sliceAddr(b []byte) uint64 {
	return uint64(uintptr(unsafe.Pointer(unsafe.SliceData(b))))
}

// mincore fills vec with one byte per page of b, bit 0 set for resident
// pages (mincore(2)); x/sys/unix has no wrapper.
func mincore(b, vec []byte) error {
	if len(b) == 0 {
		return nil
	}
	_, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)),
		uintptr(unsafe.Pointer(unsafe.SliceData(vec))))
	if e != 0 {
		return e
	}
	return nil
}
