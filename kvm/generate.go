package kvm

// The ABI types and constants in ztypes_linux_amd64.go come from
// <linux/kvm.h>; regenerate them after editing types_linux.go (needs cgo and
// the kernel headers).
//go:generate go run ./internal/mkztypes -in types_linux.go -out ztypes_linux_amd64.go
