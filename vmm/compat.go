package vmm

import (
	"fmt"
	"math/bits"
	"strings"

	"github.com/gvmm/gvmm/kvm"
)

// MigrationInfo is what a source sends before any page: the machine's
// shape, so the destination can build a machine to receive into, and the
// CPU the guest was given, so it can refuse a host that cannot run it.
type MigrationInfo struct {
	Description Description
	// CPUID is vCPU 0's CPUID as the guest sees it.
	CPUID []kvm.CPUIDEntry
	// TSCKHz is the guest's TSC rate.
	TSCKHz uint32
}

// MigrationInfo returns this machine's MigrationInfo, encoded.
func (m *Machine) MigrationInfo() ([]byte, error) {
	c, err := encodeComponent("migration-info", MigrationInfo{Description: m.desc, CPUID: m.guestCPUID, TSCKHz: m.tscKHz})
	return c.Data, err
}

// DecodeMigrationInfo decodes what MigrationInfo encoded, strictly.
func DecodeMigrationInfo(b []byte) (MigrationInfo, error) {
	var info MigrationInfo
	if err := decodeComponent(StateComponent{ID: "migration-info", Data: b}, &info); err != nil {
		return info, err
	}
	if len(info.CPUID) > maxGuestCPUIDEntries {
		return info, fmt.Errorf("migration info: %d CPUID entries, at most %d", len(info.CPUID), maxGuestCPUIDEntries)
	}
	return info, nil
}

// cpuidCheck is a CPUID register whose feature bits the destination's KVM
// must all support.
type cpuidCheck struct {
	fn, index uint32
	reg       string
	// ignore masks bits gvmm itself synthesises (hypervisor, topology,
	// TSC-deadline) rather than passes through, and bits that mirror the
	// guest's control registers (OSXSAVE, OSPKE).
	ignore uint32
	names  map[int]string
}

var cpuidChecks = []cpuidCheck{
	{fn: 1, reg: "ECX", ignore: cpuid1ECXHypervisor | cpuid1ECXTSCDeadline | cpuid1ECXOSXSAVE, names: map[int]string{
		0: "SSE3", 1: "PCLMULQDQ", 9: "SSSE3", 12: "FMA", 13: "CX16", 19: "SSE4.1", 20: "SSE4.2",
		22: "MOVBE", 23: "POPCNT", 25: "AES", 26: "XSAVE", 28: "AVX", 29: "F16C", 30: "RDRAND"}},
	{fn: 1, reg: "EDX", ignore: cpuid1EDXHTT, names: map[int]string{25: "SSE", 26: "SSE2"}},
	{fn: 7, reg: "EBX", names: map[int]string{
		3: "BMI1", 5: "AVX2", 8: "BMI2", 9: "ERMS", 16: "AVX512F", 18: "RDSEED", 19: "ADX", 29: "SHA"}},
	{fn: 7, reg: "ECX", ignore: cpuid7ECXOSPKE, names: map[int]string{1: "AVX512VBMI", 8: "GFNI", 9: "VAES", 10: "VPCLMULQDQ"}},
	{fn: 7, reg: "EDX"},
	{fn: 0xd, index: 1, reg: "EAX", names: map[int]string{0: "XSAVEOPT", 1: "XSAVEC", 3: "XSAVES"}},
	{fn: 0x80000001, reg: "ECX", ignore: cpuidExt1ECXSVM, names: map[int]string{0: "LAHF_LM", 5: "ABM", 6: "SSE4A"}},
	{fn: 0x80000001, reg: "EDX", names: map[int]string{20: "NX", 26: "PDPE1GB", 27: "RDTSCP", 29: "LM"}},
}

func cpuidReg(entries []kvm.CPUIDEntry, fn, index uint32, reg string) uint32 {
	for _, e := range entries {
		if e.Function != fn || (e.Flags&kvm.CPUIDFlagSignificantIndex != 0 && e.Index != index) {
			continue
		}
		switch reg {
		case "EAX":
			return e.EAX
		case "EBX":
			return e.EBX
		case "ECX":
			return e.ECX
		case "EDX":
			return e.EDX
		}
	}
	return 0
}

// CheckCompatible says, in words a person can act on, why this host
// cannot run the guest described by info, or returns nil: every CPU
// feature the guest was given must be one this host's KVM supports, the
// guest's XSAVE area must fit, and a different TSC rate needs TSC scaling.
func (m *Machine) CheckCompatible(info MigrationInfo) error {
	if err := m.desc.sameShape(info.Description); err != nil {
		return err
	}
	supported, err := m.sys.SupportedCPUID()
	if err != nil {
		return err
	}
	if missing := missingCPUFeatures(info.CPUID, supported); len(missing) > 0 {
		return fmt.Errorf("this host's CPU (as KVM offers it) lacks features the guest uses: %s; "+
			"migrate to a host with a newer CPU, or start the guest with a CPU model both hosts support",
			strings.Join(missing, ", "))
	}
	if src, dst := cpuidReg(info.CPUID, 0xd, 0, "ECX"), cpuidReg(supported, 0xd, 0, "ECX"); src > dst {
		return fmt.Errorf("the guest's XSAVE area is %d bytes but this host supports only %d", src, dst)
	}
	if info.TSCKHz != 0 && m.tscKHz != 0 && info.TSCKHz != m.tscKHz {
		n, err := m.sys.CheckExtension(kvm.CapTSCControl)
		if err != nil {
			return err
		}
		if n <= 0 {
			return fmt.Errorf("the guest's TSC runs at %d kHz, this host's at %d kHz, and this host's KVM cannot scale the TSC (no KVM_CAP_TSC_CONTROL)",
				info.TSCKHz, m.tscKHz)
		}
	}
	return nil
}

// missingCPUFeatures names the features of the guest's CPUID that the
// supported CPUID lacks (cpuidChecks), in check order.
func missingCPUFeatures(guest, supported []kvm.CPUIDEntry) []string {
	var missing []string
	for _, c := range cpuidChecks {
		want := cpuidReg(guest, c.fn, c.index, c.reg) &^ c.ignore
		lack := want &^ cpuidReg(supported, c.fn, c.index, c.reg)
		for lack != 0 {
			b := bits.TrailingZeros32(lack)
			lack &^= 1 << b
			name := c.names[b]
			if name == "" {
				name = "?"
			}
			missing = append(missing, fmt.Sprintf("%s (CPUID.%#x.%d:%s bit %d)", name, c.fn, c.index, c.reg, b))
		}
	}
	return missing
}

// maxGuestCPUIDEntries is KVM_MAX_CPUID_ENTRIES, the most a vCPU takes.
const maxGuestCPUIDEntries = 256
