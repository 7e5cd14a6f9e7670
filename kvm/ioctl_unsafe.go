package kvm

import (
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ioctlPtr makes an ioctl whose argument points to *p, a struct mirroring
// the C struct the ioctl takes (the ioctl number encodes its size, checked
// in abi_test.go). The conversion happens in the Syscall argument list, so p
// stays alive and in place until the call returns.
func ioctlPtr[T any](f *fileDesc, op string, req uintptr, p *T) (int, error) {
	fd, err := f.get(op)
	if err != nil {
		return -1, err
	}
	r, errno := retryIoctl(req, func() (uintptr, unix.Errno) {
		r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(unsafe.Pointer(p)))
		return r, e
	})
	if errno != 0 {
		return -1, &Error{Op: op, Err: errno}
	}
	return int(r), nil
}

// ioctlBuf makes an ioctl whose argument is a marshalled variable-length
// struct in buf (see marshal.go). buf must be at least as long as KVM will
// read or write; the callers size it from the header they put in it.
func ioctlBuf(f *fileDesc, op string, req uintptr, buf []byte) (int, error) {
	if len(buf) == 0 {
		return -1, &Error{Op: op, Err: unix.EINVAL}
	}
	fd, err := f.get(op)
	if err != nil {
		return -1, err
	}
	r, errno := retryIoctl(req, func() (uintptr, unix.Errno) {
		r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(unsafe.Pointer(&buf[0])))
		return r, e
	})
	if errno != 0 {
		return -1, &Error{Op: op, Err: errno}
	}
	return int(r), nil
}

// bitmapPtr returns the address of a dirty bitmap as the *byte that the
// generated dirtyLog and clearDirtyLog hold; a real pointer (not a uintptr)
// keeps the bitmap reachable, and up to date if a stack moves, until the
// ioctl is made.
func bitmapPtr(bitmap []uint64) *byte {
	return (*byte)(unsafe.Pointer(&bitmap[0]))
}

// runWord returns the aligned 32-bit word of the kvm_run mapping that holds
// the byte at off. run comes from mmap, so it is page aligned.
func runWord(run []byte, off int) *uint32 {
	return (*uint32)(unsafe.Pointer(&run[off&^3]))
}

// storeRunByte writes v to run[off] with a compare-and-swap of the aligned
// word that holds it: the byte never tears or reads as an intermediate
// value, a concurrent update to the neighbouring bytes is not lost, and the
// store is sequentially consistent (a LOCK CMPXCHG on x86, a full barrier),
// so it is visible before anything the caller does next, such as
// signalling the vCPU thread.
func storeRunByte(run []byte, off int, v byte) {
	w := runWord(run, off)
	shift := uint(off&3) * 8
	mask := uint32(0xff) << shift
	for {
		old := atomic.LoadUint32(w)
		if atomic.CompareAndSwapUint32(w, old, old&^mask|uint32(v)<<shift) {
			return
		}
	}
}

// loadRunByte reads run[off] atomically (see storeRunByte).
func loadRunByte(run []byte, off int) byte {
	return byte(atomic.LoadUint32(runWord(run, off)) >> (uint(off&3) * 8))
}
