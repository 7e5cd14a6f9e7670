package kvm

import "unsafe"

// rawBytes is the memory of vs as bytes; T is one of Raw's plain kernel
// structures, so any bytes written into it make a valid T.
func rawBytes[T Raw](vs []T) []byte {
	if len(vs) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&vs[0])), len(vs)*rawSize[T]())
}

func rawSize[T Raw]() int {
	var v T
	return int(unsafe.Sizeof(v))
}

// one is *v as a one-element slice sharing its memory.
func one[T Raw](v *T) []T { return unsafe.Slice(v, 1) }
