package vmm

import (
	"slices"
	"testing"

	"github.com/gvmm/gvmm/kvm"
)

func TestMissingCPUFeatures(t *testing.T) {
	const (
		aes   = 1 << 25
		xsave = 1 << 26
		avx2  = 1 << 5
	)
	host := []kvm.CPUIDEntry{
		{Function: 1, ECX: aes | xsave},
		{Function: 7, Flags: kvm.CPUIDFlagSignificantIndex, EBX: 0},
	}
	for _, tc := range []struct {
		name  string
		guest []kvm.CPUIDEntry
		want  []string
	}{
		{name: "same", guest: host},
		{
			// A CPUID read back from a running vCPU: OSXSAVE and OSPKE
			// mirror CR4, the hypervisor and TSC-deadline bits are
			// gvmm's own.
			name: "run-time and synthesised bits",
			guest: []kvm.CPUIDEntry{
				{Function: 1, ECX: aes | xsave | cpuid1ECXOSXSAVE | cpuid1ECXHypervisor | cpuid1ECXTSCDeadline},
				{Function: 7, Flags: kvm.CPUIDFlagSignificantIndex, ECX: cpuid7ECXOSPKE},
			},
		},
		{
			name: "a feature the host lacks",
			guest: []kvm.CPUIDEntry{
				{Function: 1, ECX: aes | xsave | cpuid1ECXOSXSAVE},
				{Function: 7, Flags: kvm.CPUIDFlagSignificantIndex, EBX: avx2},
			},
			want: []string{"AVX2 (CPUID.0x7.0:EBX bit 5)"},
		},
		{
			name:  "an unnamed bit",
			guest: []kvm.CPUIDEntry{{Function: 1, ECX: aes | 1<<2}},
			want:  []string{"? (CPUID.0x1.0:ECX bit 2)"},
		},
		{
			name:  "a sub-leaf the host does not list",
			guest: []kvm.CPUIDEntry{{Function: 0xd, Index: 1, Flags: kvm.CPUIDFlagSignificantIndex, EAX: 1}},
			want:  []string{"XSAVEOPT (CPUID.0xd.1:EAX bit 0)"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := missingCPUFeatures(tc.guest, host); !slices.Equal(got, tc.want) {
				t.Errorf("missingCPUFeatures = %q, want %q", got, tc.want)
			}
		})
	}
}
