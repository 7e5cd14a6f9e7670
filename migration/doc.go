// Package migration is the root of gvmm's live-migration package family.
//
// The family is layered so that dependencies point one way:
//
//   - migration/stream is a leaf (standard library and
//     github.com/klauspost/compress only). It moves guest pages, device and
//     vCPU state blobs and a CPU compatibility record from a source to a
//     destination over one or more byte streams, with zero-page runs,
//     adaptive zstd compression, AES-256-GCM on every record, sequence
//     numbers, per-pass ordering and a final authenticated manifest. It knows
//     nothing about KVM, vCPUs or devices: state blobs are opaque bytes keyed
//     by stable component ids such as "vcpu/0".
//
// Higher layers (the pre-copy loop, dirty tracking, switchover policy) drive
// small interfaces that the machine implements; they do not import vmm, and
// vmm does not import them. cmd/gvmm is where everything meets.
package migration
