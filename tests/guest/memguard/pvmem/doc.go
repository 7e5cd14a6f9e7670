// Package pvmem is the guest side of gvmm's protected application memory
// (package github.com/gvmm/gvmm/memguard documents the ABI and what is
// protected against what): a Linux process maps a buffer with Alloc,
// registers it with a Device as integrity or confidential memory, and
// then reads and writes it only with Load, Store, ReadAt and WriteAt,
// which use plain 8-byte and 1-byte moves that KVM can emulate when the
// page is unmapped in the guest (memmove's vector loads are not).
//
// A Device needs root (ioperm) and holds its goroutine on one OS thread
// from Open to Close, since I/O permission is per thread in Linux: make
// every request from the goroutine that opened it.
package pvmem
