package kvm

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// DefaultPath is the KVM device Open uses for an empty path.
const DefaultPath = "/dev/kvm"

// System is an open /dev/kvm: the system ioctls and the factory of VMs. Its
// methods may be called from any goroutine.
type System struct {
	fd fileDesc
}

// Open opens the KVM device at path ("" means DefaultPath) and checks that
// it speaks API version 12 (KVM_GET_API_VERSION). When KVM cannot be used
// the error matches ErrUnavailable; see there.
func Open(path string) (*System, error) {
	if path == "" {
		path = DefaultPath
	}
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		if unavailable(err) {
			return nil, &openError{path: path, err: err}
		}
		return nil, &Error{Op: "open " + path, Err: err}
	}
	s := &System{}
	s.fd.set(fd)
	v, err := s.fd.ioctl("KVM_GET_API_VERSION", _KVM_GET_API_VERSION, 0)
	if err != nil {
		s.Close()
		return nil, err
	}
	if v != APIVersion {
		s.Close()
		return nil, fmt.Errorf("kvm: %s: KVM_GET_API_VERSION is %d, want %d: %w", path, v, APIVersion, ErrUnavailable)
	}
	return s, nil
}

// Close closes /dev/kvm. VMs created from s stay valid. Close is idempotent.
func (s *System) Close() error { return s.fd.close() }

// CheckExtension returns KVM_CHECK_EXTENSION for c on /dev/kvm: 0 when the
// capability is absent, otherwise 1 or a capability-specific value. Prefer
// VM.CheckExtension where a capability can differ per VM.
func (s *System) CheckExtension(c Cap) (int, error) {
	return s.fd.ioctl("KVM_CHECK_EXTENSION", _KVM_CHECK_EXTENSION, uintptr(c))
}

// VCPUMmapSize returns KVM_GET_VCPU_MMAP_SIZE, the size to pass to
// VM.CreateVCPU.
func (s *System) VCPUMmapSize() (int, error) {
	return s.fd.ioctl("KVM_GET_VCPU_MMAP_SIZE", _KVM_GET_VCPU_MMAP_SIZE, 0)
}

// CreateVM makes a VM (KVM_CREATE_VM, default machine type).
func (s *System) CreateVM() (*VM, error) {
	fd, err := s.fd.ioctl("KVM_CREATE_VM", _KVM_CREATE_VM, 0)
	if err != nil {
		return nil, err
	}
	v := &VM{slots: map[uint32]uint64{}}
	v.fd.set(fd)
	return v, nil
}

// Limits on the buffers grown on E2BIG; far above what kernels report
// (KVM_MAX_CPUID_ENTRIES is 256), they only stop a runaway loop.
const (
	firstCPUIDEntries = 128
	maxCPUIDEntries   = 1 << 14
	firstMSRIndices   = 256
	maxMSRIndices     = 1 << 16
)

// SupportedCPUID returns KVM_GET_SUPPORTED_CPUID: the CPUID leaves KVM can
// present to a guest, a starting point for VCPU.SetCPUID.
func (s *System) SupportedCPUID() ([]CPUIDEntry, error) {
	return getCPUID(&s.fd, "KVM_GET_SUPPORTED_CPUID", _KVM_GET_SUPPORTED_CPUID)
}

// getCPUID makes a KVM_GET_*CPUID* ioctl, doubling the buffer on E2BIG.
func getCPUID(f *fileDesc, op string, req uintptr) ([]CPUIDEntry, error) {
	for n := firstCPUIDEntries; ; n *= 2 {
		buf := encodeCPUID(make([]CPUIDEntry, n))
		_, err := ioctlBuf(f, op, req, buf)
		if errors.Is(err, unix.E2BIG) && n < maxCPUIDEntries {
			continue
		}
		if err != nil {
			return nil, err
		}
		entries, err := decodeCPUID(buf)
		if err != nil {
			return nil, &Error{Op: op, Err: err}
		}
		return entries, nil
	}
}

// MSRIndexList returns KVM_GET_MSR_INDEX_LIST: the MSRs that VCPU.GetMSRs
// and VCPU.SetMSRs (and so save/restore) can handle.
func (s *System) MSRIndexList() ([]uint32, error) {
	return s.msrList("KVM_GET_MSR_INDEX_LIST", _KVM_GET_MSR_INDEX_LIST)
}

// FeatureMSRIndexList returns KVM_GET_MSR_FEATURE_INDEX_LIST: the
// feature-reporting MSRs (such as IA32_ARCH_CAPABILITIES) that /dev/kvm
// itself can read (needs CapGetMSRFeatures).
func (s *System) FeatureMSRIndexList() ([]uint32, error) {
	return s.msrList("KVM_GET_MSR_FEATURE_INDEX_LIST", _KVM_GET_MSR_FEATURE_INDEX_LIST)
}

// msrList makes a kvm_msr_list ioctl. On E2BIG KVM writes the number it
// needs into nmsrs; the buffer grows to that, or doubles if it did not.
func (s *System) msrList(op string, req uintptr) ([]uint32, error) {
	n := firstMSRIndices
	for {
		buf := encodeMSRList(n)
		_, err := ioctlBuf(&s.fd, op, req, buf)
		if errors.Is(err, unix.E2BIG) && n < maxMSRIndices {
			need, _ := msrListCount(buf)
			n = min(max(need, 2*n), maxMSRIndices)
			continue
		}
		if err != nil {
			return nil, err
		}
		list, err := decodeMSRList(buf)
		if err != nil {
			return nil, &Error{Op: op, Err: err}
		}
		return list, nil
	}
}
