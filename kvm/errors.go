package kvm

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// ErrUnavailable matches (with errors.Is) the error from Open when KVM
// cannot be used by this process: /dev/kvm is missing or has no driver
// behind it (ENOENT, ENODEV, ENXIO), the process may not open it (EACCES,
// EPERM; the message then says "permission denied" and errors.Is(err,
// fs.ErrPermission) holds as well), or it speaks another API version.
var ErrUnavailable = errors.New("KVM is unavailable")

// ErrClosed is the Err of an *Error from a method called on a closed handle.
var ErrClosed = errors.New("use of closed KVM handle")

// Error is a failed KVM operation. Op names the ioctl as its C macro does
// ("KVM_CREATE_VM"); Err is the cause, usually a unix.Errno.
type Error struct {
	Op  string
	Err error
}

func (e *Error) Error() string { return e.Op + ": " + e.Err.Error() }

// Unwrap returns e.Err.
func (e *Error) Unwrap() error { return e.Err }

// openError is Open's error when the device cannot be opened for a reason
// that makes KVM unavailable. It matches ErrUnavailable and the errno.
type openError struct {
	path string
	err  error
}

func (e *openError) Error() string {
	if errors.Is(e.err, unix.EACCES) || errors.Is(e.err, unix.EPERM) {
		return fmt.Sprintf("kvm: permission denied opening %s (KVM is unavailable to this user; it needs read-write access, usually membership of the kvm group): %v", e.path, e.err)
	}
	return fmt.Sprintf("kvm: KVM is unavailable: open %s: %v", e.path, e.err)
}

func (e *openError) Unwrap() []error { return []error{ErrUnavailable, e.err} }

func unavailable(err error) bool {
	for _, errno := range []unix.Errno{unix.ENOENT, unix.ENODEV, unix.ENXIO, unix.EACCES, unix.EPERM} {
		if errors.Is(err, errno) {
			return true
		}
	}
	return false
}
