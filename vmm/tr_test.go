package vmm

import (
	"testing"

	"github.com/gvmm/gvmm/kvm"
)

func TestTRForSetSregs(t *testing.T) {
	for _, tc := range []struct {
		name string
		typ  uint8
		svm  bool
		want uint8
	}{
		{"SVM 64-bit busy TSS", 11, true, 9},
		{"SVM 16-bit busy TSS", 3, true, 1},
		{"SVM available TSS kept", 9, true, 9},
		{"SVM other type kept", 2, true, 2},
		{"VMX busy TSS kept", 11, false, 11},
		{"VMX 16-bit busy TSS kept", 3, false, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := kvm.Segment{Base: 0xfffffe0000003000, Limit: 0x4087, Selector: 0x40, Type: tc.typ, Present: 1}
			got := trForSetSregs(in, tc.svm)
			if got.Type != tc.want {
				t.Errorf("type %d, want %d", got.Type, tc.want)
			}
			got.Type = in.Type
			if got != in {
				t.Errorf("fields other than the type changed: %+v, want %+v", got, in)
			}
		})
	}
}

func TestIsSVMHost(t *testing.T) {
	leaf0 := func(ebx, edx, ecx uint32) []kvm.CPUIDEntry {
		return []kvm.CPUIDEntry{{Function: 1}, {Function: 0, EAX: 0x10, EBX: ebx, EDX: edx, ECX: ecx}}
	}
	for _, tc := range []struct {
		name string
		in   []kvm.CPUIDEntry
		want bool
	}{
		{"AuthenticAMD", leaf0(0x68747541, 0x69746e65, 0x444d4163), true},
		{"HygonGenuine", leaf0(0x6f677948, 0x6e65476e, 0x656e6975), true},
		{"GenuineIntel", leaf0(0x756e6547, 0x49656e69, 0x6c65746e), false},
		{"no leaf 0", []kvm.CPUIDEntry{{Function: 1}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := isSVMHost(tc.in); got != tc.want {
				t.Errorf("isSVMHost = %v, want %v", got, tc.want)
			}
		})
	}
}
