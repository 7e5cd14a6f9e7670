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

// mmapAligned maps size bytes of anonymous memory (prot, flags as for
// mmap(2)) at an address that is a multiple of align, a power of two: it
// maps size+align bytes and unmaps what lies before the aligned start and
// after its end. Unmap the result with munmapBytes.
func mmapAligned(size, align uintptr, prot, flags int) ([]byte, error) {
	p, err := unix.MmapPtr(-1, 0, nil, size+align, prot, flags)
	if err != nil {
		return nil, err
	}
	head := (align - uintptr(p)%align) % align
	if head > 0 {
		if err := unix.MunmapPtr(p, head); err != nil {
			_ = unix.MunmapPtr(p, size+align)
			return nil, err
		}
	}
	start := unsafe.Add(p, head)
	if tail := align - head; tail > 0 {
		if err := unix.MunmapPtr(unsafe.Add(start, size), tail); err != nil {
			_ = unix.MunmapPtr(start, size+tail)
			return nil, err
		}
	}
	return unsafe.Slice((*byte)(start), size), nil
}

// munmapBytes unmaps b, a mapping made by mmapAligned.
func munmapBytes(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	return unix.MunmapPtr(unsafe.Pointer(unsafe.SliceData(b)), uintptr(len(b)))
}
