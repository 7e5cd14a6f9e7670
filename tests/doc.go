// Package tests holds gvmm's integration tests and the tooling that runs
// them: tests/integration drives a real gvmm binary against real Linux
// guests under KVM, and tests/nested boots a QEMU/TCG machine with emulated
// SVM (so /dev/kvm exists inside it) when the host has no KVM of its own.
package tests
