// Package selftest is a throwaway test package for the nested harness
// itself: it proves that L1 booted, loaded kvm-amd and handed the harness's
// environment to a test binary, without needing gvmm. It lives under
// testdata so that go test ./... leaves it alone; run it with
//
//	GVMM_NESTED=force go run ./tests/nested test -no-gvmm ./tests/nested/testdata/selftest
package selftest

import (
	"os"
	"syscall"
	"testing"
)

// KVM_GET_API_VERSION and KVM_CREATE_VM from linux/kvm.h (KVMIO = 0xAE).
const (
	kvmGetAPIVersion = 0xAE00
	kvmCreateVM      = 0xAE01
)

func openKVM(t *testing.T) *os.File {
	t.Helper()
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR|syscall.O_CLOEXEC, 0)
	if err != nil {
		if os.Getenv("GVMM_REQUIRE_KVM") == "1" {
			t.Fatalf("GVMM_REQUIRE_KVM=1 but: %v", err)
		}
		t.Skipf("no KVM: %v", err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func TestAPIVersion(t *testing.T) {
	f := openKVM(t)
	v, _, errno := syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), kvmGetAPIVersion, 0)
	if errno != 0 {
		t.Fatalf("KVM_GET_API_VERSION: %v", errno)
	}
	if v != 12 {
		t.Fatalf("KVM_GET_API_VERSION = %d, want 12", v)
	}
}

func TestCreateVM(t *testing.T) {
	f := openKVM(t)
	vm, _, errno := syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), kvmCreateVM, 0)
	if errno != 0 {
		t.Fatalf("KVM_CREATE_VM: %v", errno)
	}
	syscall.Close(int(vm))
}

// TestEnvironment checks the contract of doc.go: the guest image exists
// where the environment says.
func TestEnvironment(t *testing.T) {
	for _, v := range []string{"GVMM_GUEST_KERNEL", "GVMM_GUEST_INITRD"} {
		p := os.Getenv(v)
		if p == "" {
			t.Fatalf("%s is not set", v)
		}
		if fi, err := os.Stat(p); err != nil || fi.Size() == 0 {
			t.Fatalf("%s=%s: %v", v, p, err)
		}
	}
	if _, err := os.Stat("testdata/hello.txt"); err != nil {
		t.Fatalf("testdata next to the binary: %v", err)
	}
}
