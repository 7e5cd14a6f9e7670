//go:build linux && amd64

package main

import "unsafe"

// addrOf is the address of a mapping's first byte.
func addrOf(b []byte) uintptr { return uintptr(unsafe.Pointer(unsafe.SliceData(b))) }
