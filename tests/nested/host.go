package main

import (
	"errors"
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// kvmAPIVersion is KVM_API_VERSION from linux/kvm.h; KVM_GET_API_VERSION
// is _IO(KVMIO=0xAE, 0x00).
const (
	kvmAPIVersion    = 12
	kvmGetAPIVersion = 0xAE00
)

// kvmUsable reports why the host's /dev/kvm cannot run gvmm's guests (nil
// if it can): it must be backed by hardware virtualization (kvm_intel or
// kvm_amd, loaded or built in), open read-write and answer
// KVM_GET_API_VERSION with 12.
//
// The API check alone is not enough: some sandboxes offer /dev/kvm through
// kvm_pvm (PVM, virtualization by page tables, no VMX/SVM), which answers
// every ioctl but runs only guest kernels built for PVM, not Debian's.
func kvmUsable() error {
	if _, err := os.Stat("/sys/module/kvm_pvm"); err == nil {
		return errors.New("/dev/kvm is kvm_pvm (PVM), which runs only PVM-enabled guest kernels")
	}
	hw := false
	for _, m := range []string{"/sys/module/kvm_intel", "/sys/module/kvm_amd"} {
		if _, err := os.Stat(m); err == nil {
			hw = true
		}
	}
	if !hw {
		return errors.New("neither kvm_intel nor kvm_amd is loaded")
	}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR|syscall.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	v, _, errno := syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), kvmGetAPIVersion, 0)
	if errno != 0 {
		return fmt.Errorf("KVM_GET_API_VERSION: %w", errno)
	}
	if v != kvmAPIVersion {
		return fmt.Errorf("KVM_GET_API_VERSION: %d, want %d", v, kvmAPIVersion)
	}
	return nil
}

// isTerminal reports whether f is a terminal (TCGETS succeeds on it).
func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
