package kvm_test

import "unsafe"

// addrOf returns the host address of a mapping, for UserspaceMemoryRegion.
func addrOf(b []byte) uintptr { return uintptr(unsafe.Pointer(&b[0])) }
