// Package kvm is gvmm's binding to the Linux KVM API (/dev/kvm) on x86-64.
//
// It owns three kinds of file descriptor, each held by a typed handle that
// closes it: System (/dev/kvm), VM (from KVM_CREATE_VM) and VCPU (from
// KVM_CREATE_VCPU, together with its mmapped struct kvm_run). Every method is
// one ioctl, or a few, and nothing more: no policy, no retries, no logging.
// The package imports only the standard library and golang.org/x/sys/unix,
// and keeps no package-level mutable state.
//
// # ABI
//
// The ABI structs and constants in ztypes_linux_amd64.go are generated from
// <linux/kvm.h> by "go tool cgo -godefs" (see generate.go and
// internal/mkztypes); each struct's comment names the C struct it mirrors.
// abi_test.go compares every size, field offset and ioctl number with the
// C compiler's values (internal/cabi). Variable-length structs (kvm_cpuid2,
// kvm_msrs, kvm_msr_list, kvm_irq_routing) are marshalled from and to Go
// slices. Only files named *_unsafe.go import unsafe.
//
// # Errors
//
// An ioctl that fails returns *Error, whose Op is the ioctl's C name and
// whose Err is the errno, so errors.Is(err, unix.EINTR) works. Open returns
// an error matching ErrUnavailable when KVM cannot be used at all.
//
// # Threads
//
// A VCPU's ioctls, Run and the kvm_run accessors (ExitReason, IO, MMIO, ...)
// must all be made from the one OS thread that runs the vCPU: lock a
// goroutine to its thread (runtime.LockOSThread) for the vCPU's life and make
// every call on it from there. KVM tolerates other threads, but each vCPU
// ioctl then waits for KVM_RUN to return and the exit data in kvm_run may
// change under the reader.
//
// SetImmediateExit is the only VCPU method meant to be called from another
// thread: with a signal to the vCPU thread it forms a "kick" (see its
// comment). Close is idempotent; it must not race with calls on the handle
// other than SetImmediateExit.
//
// KVM_RUN returns EINTR whenever a signal is pending for the thread. The Go
// runtime preempts goroutines with SIGURG, so this happens in normal
// operation. Run never retries: it returns an *Error wrapping unix.EINTR and
// the caller decides whether to run again.
//
// System and VM methods may be called from any goroutine.
package kvm
