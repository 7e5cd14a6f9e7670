package vmm

import (
	"testing"

	"github.com/gvmm/gvmm/kvm"
)

func findLeaf(t *testing.T, es []kvm.CPUIDEntry, fn, idx uint32) kvm.CPUIDEntry {
	t.Helper()
	for _, e := range es {
		if e.Function == fn && e.Index == idx {
			return e
		}
	}
	t.Fatalf("leaf %#x.%d missing", fn, idx)
	return kvm.CPUIDEntry{}
}

func TestGuestCPUID(t *testing.T) {
	supported := []kvm.CPUIDEntry{
		{Function: 0, EAX: 0xd},
		{Function: 1, EBX: 0xff0a0800, ECX: 0x1 | cpuid1ECXVMX, EDX: cpuid1EDXHTT | 1},
		{Function: 0x80000001, ECX: cpuidExt1ECXSVM | 1},
		{Function: 0xb, Index: 0, EAX: 1, EBX: 2, ECX: 0x100, EDX: 9},
		{Function: 0xb, Index: 1, EAX: 5, EBX: 32, ECX: 0x201, EDX: 9},
		{Function: 0xb, Index: 2, EAX: 0, EBX: 0, ECX: 2, EDX: 9},
		{Function: 0x80000008, ECX: 0x700f},
		{Function: 0x40000000, EBX: 0x4b4d564b},
	}
	tests := []struct {
		id, n    int
		coreBits uint32
	}{{0, 1, 0}, {1, 2, 1}, {3, 4, 2}, {4, 5, 3}}
	for _, tt := range tests {
		got := guestCPUID(supported, tt.id, tt.n, true)
		l1 := findLeaf(t, got, 1, 0)
		if l1.EBX>>24 != uint32(tt.id) || (l1.EBX>>16)&0xff != uint32(tt.n) || l1.EBX&0xffff != 0x0800 {
			t.Errorf("id %d n %d: leaf 1 EBX %#x", tt.id, tt.n, l1.EBX)
		}
		if l1.ECX&cpuid1ECXHypervisor == 0 || l1.ECX&cpuid1ECXTSCDeadline == 0 || l1.ECX&1 == 0 {
			t.Errorf("leaf 1 ECX %#x lacks hypervisor/TSC-deadline or lost a KVM bit", l1.ECX)
		}
		if l1.ECX&cpuid1ECXVMX != 0 || findLeaf(t, got, 0x80000001, 0).ECX != 1 {
			t.Errorf("VMX or SVM still visible, or another bit lost")
		}
		if (l1.EDX&cpuid1EDXHTT != 0) != (tt.n > 1) {
			t.Errorf("n %d: HTT bit %#x", tt.n, l1.EDX&cpuid1EDXHTT)
		}
		smt, core, inv := findLeaf(t, got, 0xb, 0), findLeaf(t, got, 0xb, 1), findLeaf(t, got, 0xb, 2)
		if smt.EBX != 1 || core.EBX != uint32(tt.n) || core.EAX != tt.coreBits || smt.EDX != uint32(tt.id) || core.EDX != uint32(tt.id) || inv.EBX != 0 {
			t.Errorf("n %d: leaf 0xb %+v %+v %+v", tt.n, smt, core, inv)
		}
		if amd := findLeaf(t, got, 0x80000008, 0); amd.ECX&0xff != uint32(tt.n-1) || amd.ECX&0xf000 != 0 {
			t.Errorf("n %d: leaf 0x80000008 ECX %#x", tt.n, amd.ECX)
		}
		if kvmLeaf := findLeaf(t, got, 0x40000000, 0); kvmLeaf.EBX != 0x4b4d564b {
			t.Error("KVM signature leaf changed")
		}
	}
	if l1 := findLeaf(t, guestCPUID(supported, 0, 1, false), 1, 0); l1.ECX&cpuid1ECXTSCDeadline != 0 {
		t.Error("TSC deadline announced without KVM support")
	}
	if supported[1].ECX&cpuid1ECXHypervisor != 0 {
		t.Error("guestCPUID modified its input")
	}
}
