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

// mmapAligned maps size bytes of anonymous private memory whose first
// byte is align-aligned (align a power of two, a multiple of the page
// size): it maps size+align bytes and unmaps what lies before and after
// the aligned part. The result is freed with munmapAligned, not
// unix.Munmap (which knows only the mappings it made).
func mmapAligned(size, align uint64, flags int) ([]byte, error) {
	p, err := unix.MmapPtr(-1, 0, nil, uintptr(size+align), unix.PROT_READ|unix.PROT_WRITE, flags)
	if err != nil {
		return nil, err
	}
	base := uint64(uintptr(p))
	start := (base + align - 1) &^ (align - 1)
	if head := start - base; head > 0 {
		if err := unix.MunmapPtr(p, uintptr(head)); err != nil {
			_ = unix.MunmapPtr(p, uintptr(size+align))
			return nil, err
		}
	}
	if tail := base + size + align - (start + size); tail > 0 {
		if err := unix.MunmapPtr(unsafe.Add(p, start-base+size), uintptr(tail)); err != nil {
			_ = unix.MunmapPtr(unsafe.Add(p, start-base), uintptr(size))
			return nil, err
		}
	}
	return unsafe.Slice((*byte)(unsafe.Add(p, start-base)), size), nil
}

// munmapAligned unmaps memory from mmapAligned.
func munmapAligned(b []byte) error {
	return unix.MunmapPtr(unsafe.Pointer(unsafe.SliceData(b)), uintptr(len(b)))
}
