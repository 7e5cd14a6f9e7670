package kvm

import (
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// fileDesc owns one file descriptor. It stores fd+1 so that its zero value
// is closed; close is idempotent and safe to call concurrently with itself.
type fileDesc struct {
	fdPlus1 atomic.Int64
}

// set gives f the descriptor fd; it is called once, by the constructor of
// the handle that embeds f.
func (f *fileDesc) set(fd int) { f.fdPlus1.Store(int64(fd) + 1) }

// get returns the descriptor, or an *Error with ErrClosed naming op.
func (f *fileDesc) get(op string) (int, error) {
	fd := int(f.fdPlus1.Load()) - 1
	if fd < 0 {
		return -1, &Error{Op: op, Err: ErrClosed}
	}
	return fd, nil
}

func (f *fileDesc) close() error {
	fd := int(f.fdPlus1.Swap(0)) - 1
	if fd < 0 {
		return nil
	}
	if err := unix.Close(fd); err != nil {
		return &Error{Op: "close", Err: err}
	}
	return nil
}

// ioctl makes an ioctl whose argument is an integer (or nothing) and names
// the error after op.
func (f *fileDesc) ioctl(op string, req uintptr, arg uintptr) (int, error) {
	fd, err := f.get(op)
	if err != nil {
		return -1, err
	}
	r, errno := retryIoctl(req, func() (uintptr, unix.Errno) {
		r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, arg)
		return r, e
	})
	if errno != 0 {
		return -1, &Error{Op: op, Err: errno}
	}
	return int(r), nil
}

// retryIoctl makes an ioctl again when a signal interrupted it before it
// took effect (EINTR), which the Go runtime's preemption signal (SIGURG)
// makes routine: KVM_CREATE_VM and memory-slot changes can sleep long
// enough to see one. KVM_RUN is the exception: its EINTR is how a vCPU is
// kicked, and goes back to the caller.
func retryIoctl(req uintptr, call func() (uintptr, unix.Errno)) (uintptr, unix.Errno) {
	for {
		r, errno := call()
		if errno != unix.EINTR || req == _KVM_RUN {
			return r, errno
		}
	}
}
