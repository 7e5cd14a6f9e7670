// Package integration runs the gvmm binary against real guests under KVM.
//
// The tests need a gvmm binary, a guest kernel and a guest initramfs, named
// by the environment: GVMM_BIN, GVMM_GUEST_KERNEL, GVMM_GUEST_INITRD
// (tests/nested sets them, and builds all three, both inside the nested
// machine and on hosts with /dev/kvm). Without them, or without /dev/kvm,
// the tests skip, except when GVMM_REQUIRE_KVM=1, where a missing piece is
// a failure: a KVM test that only ever skips proves nothing.
package integration
