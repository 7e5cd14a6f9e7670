//go:build linux && amd64

package pvmem

import "unsafe"

// addr is the buffer's first byte's address.
func (b *Buffer) addr() uintptr { return uintptr(unsafe.Pointer(unsafe.SliceData(b.b))) }

// storeBytes copies src into dst (same length) in aligned 8-byte stores
// and single bytes at the edges: instructions KVM's emulator handles when
// dst is a protected page (memmove may use AVX, which it does not).
//
//go:noinline
func storeBytes(dst, src []byte) {
	i := 0
	for ; i < len(dst) && uintptr(unsafe.Pointer(&dst[i]))%8 != 0; i++ {
		*(*byte)(unsafe.Pointer(&dst[i])) = src[i]
	}
	for ; i+8 <= len(dst); i += 8 {
		var w uint64
		for j := 7; j >= 0; j-- {
			w = w<<8 | uint64(src[i+j])
		}
		*(*uint64)(unsafe.Pointer(&dst[i])) = w
	}
	for ; i < len(dst); i++ {
		*(*byte)(unsafe.Pointer(&dst[i])) = src[i]
	}
}

// loadBytes is storeBytes' reverse: src is the protected side.
//
//go:noinline
func loadBytes(dst, src []byte) {
	i := 0
	for ; i < len(src) && uintptr(unsafe.Pointer(&src[i]))%8 != 0; i++ {
		dst[i] = *(*byte)(unsafe.Pointer(&src[i]))
	}
	for ; i+8 <= len(src); i += 8 {
		w := *(*uint64)(unsafe.Pointer(&src[i]))
		for j := 0; j < 8; j++ {
			dst[i+j] = byte(w >> (8 * j))
		}
	}
	for ; i < len(src); i++ {
		dst[i] = *(*byte)(unsafe.Pointer(&src[i]))
	}
}
