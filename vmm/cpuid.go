package vmm

import (
	"math/bits"

	"github.com/gvmm/gvmm/kvm"
)

// CPUID bits gvmm sets or changes.
const (
	cpuid1ECXTSCDeadline = 1 << 24
	cpuid1ECXHypervisor  = 1 << 31
	cpuid1EDXHTT         = 1 << 28
	cpuid1ECXVMX         = 1 << 5
	cpuidExt1ECXSVM      = 1 << 2
)

// CPUID bits KVM changes at run time to mirror the guest's own settings
// (kvm_update_cpuid_runtime): OSXSAVE follows CR4.OSXSAVE and OSPKE
// follows CR4.PKE. A CPUID read back from a running vCPU has them set
// where the guest turned the feature on, and no KVM lists them as
// supported: they are not features a destination must offer.
const (
	cpuid1ECXOSXSAVE = 1 << 27
	cpuid7ECXOSPKE   = 1 << 4
)

// guestCPUID derives vCPU id's CPUID from what KVM supports: every feature
// KVM can virtualise stays, and the topology fields say what the machine
// really is (ncpus single-threaded cores in one package, APIC ID = id).
// The TSC-deadline timer is announced when the in-kernel LAPIC emulates it,
// so the guest never needs to calibrate its LAPIC timer against the PIT.
// Hardware virtualisation (VMX, SVM) is hidden: gvmm does not offer nested
// guests, and a guest that sees SVM takes paths on reboot (disabling
// virtualisation) that reset the vCPU under nested KVM instead of reaching
// the reset register.
func guestCPUID(supported []kvm.CPUIDEntry, id, ncpus int, tscDeadline bool) []kvm.CPUIDEntry {
	out := make([]kvm.CPUIDEntry, len(supported))
	copy(out, supported)
	coreBits := uint32(bits.Len(uint(ncpus - 1)))
	for i := range out {
		e := &out[i]
		switch e.Function {
		case 1:
			e.EBX = e.EBX&0x0000ffff | uint32(id)<<24 | uint32(ncpus&0xff)<<16
			e.ECX |= cpuid1ECXHypervisor
			e.ECX &^= cpuid1ECXVMX
			if tscDeadline {
				e.ECX |= cpuid1ECXTSCDeadline
			}
			if ncpus > 1 {
				e.EDX |= cpuid1EDXHTT
			} else {
				e.EDX &^= cpuid1EDXHTT
			}
		case 4:
			// Deterministic cache parameters: cores per package in
			// EAX[31:26], threads sharing the cache in EAX[25:14].
			if e.EAX&0x1f != 0 {
				e.EAX = e.EAX&0x3fff | uint32(ncpus-1)<<26
			}
		case 0xb, 0x1f:
			// Extended topology: level 0 is SMT (one thread per
			// core), level 1 is core (ncpus cores).
			switch e.Index {
			case 0:
				e.EAX, e.EBX, e.ECX = 0, 1, 1<<8
			case 1:
				e.EAX, e.EBX, e.ECX = coreBits, uint32(ncpus), 2<<8|1
			default:
				e.EAX, e.EBX, e.ECX = 0, 0, e.Index
			}
			e.EDX = uint32(id)
		case 0x80000001:
			e.ECX &^= cpuidExt1ECXSVM
		case 0x80000008:
			// AMD: number of cores minus one; ApicIdCoreIdSize 0
			// means "derive it from that number".
			e.ECX = e.ECX&^0xf0ff | uint32(ncpus-1)&0xff
		case 0x8000001e:
			e.EAX = uint32(id)
			e.EBX = uint32(id) & 0xff
			e.ECX = 0
		}
	}
	return out
}
