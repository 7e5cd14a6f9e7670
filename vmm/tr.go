package vmm

import "github.com/gvmm/gvmm/kvm"

// TSS descriptor types (Intel SDM 3.3.5, AMD APM 4.8.3): the busy bit is
// bit 1 of the type.
const (
	tssBusyBit       = 0x2
	tss16Busy  uint8 = 0x3
	tss64Busy  uint8 = 0xb
)

// isSVMHost says whether KVM runs on AMD SVM: the host vendor, which
// KVM_GET_SUPPORTED_CPUID passes through in leaf 0, is AMD or Hygon
// (kvm_amd serves only those; kvm_intel never does).
func isSVMHost(supported []kvm.CPUIDEntry) bool {
	for _, e := range supported {
		if e.Function != 0 {
			continue
		}
		// "AuthenticAMD" and "HygonGenuine" in EBX, EDX, ECX.
		return (e.EBX == 0x68747541 && e.EDX == 0x69746e65 && e.ECX == 0x444d4163) ||
			(e.EBX == 0x6f677948 && e.EDX == 0x6e65476e && e.ECX == 0x656e6975)
	}
	return false
}

// trForSetSregs is the TR to hand KVM_SET_SREGS when restoring a saved
// vCPU.
//
// KVM reports TR as busy on both vendors: VMX requires a busy TSS in the
// guest state (VM entry fails otherwise), and SVM's svm_get_segment sets
// the busy bit because the VMCB does not keep it. On SVM, KVM_SET_SREGS
// writes the type into the VMCB as given, and hardware never looks at it
// again (LTR and task switches read the GDT). One CPU does: QEMU's TCG
// emulating SVM loads the VMCB's TR attributes on VMLOAD, and its I/O
// permission check (check_io) refuses any TR type but 9, the available
// 32/64-bit TSS (its own LTR caches the descriptor before marking it
// busy). A restored guest under nested KVM on TCG would then take #GP on
// every user-mode port access that ioperm allows, which is how the guest
// memguard library talks to gvmm. So on SVM the busy bit is cleared, which
// is what the guest's own LTR leaves in the VMCB; on VMX TR stays busy
// (restoreSregs keeps the cleared bit only where KVM reads TR back busy
// anyway).
func trForSetSregs(tr kvm.Segment, svm bool) kvm.Segment {
	if svm && (tr.Type == tss64Busy || tr.Type == tss16Busy) {
		tr.Type &^= tssBusyBit
	}
	return tr
}

// restoreSregs is KVM_SET_SREGS of a saved vCPU's special registers, with
// TR as trForSetSregs has it where that is invisible: if KVM does not
// read TR back busy (VMX, or an AMD host whose KVM is not kvm_amd, such
// as kvm_pvm), the saved TR is set as it was. Either way KVM_GET_SREGS
// then reads back the saved state.
func (v *vcpu) restoreSregs(saved *kvm.Sregs) error {
	sregs := *saved
	sregs.TR = trForSetSregs(sregs.TR, v.m.svm)
	if err := v.cpu.SetSregs(&sregs); err != nil {
		return err
	}
	if sregs.TR.Type == saved.TR.Type {
		return nil
	}
	got, err := v.cpu.GetSregs()
	if err != nil {
		return err
	}
	if got.TR.Type == saved.TR.Type {
		return nil
	}
	return v.cpu.SetSregs(saved)
}
