package virtio

import "encoding/binary"

// GuestMemory is the view of guest RAM the devices use. *vmm.Memory
// satisfies it.
type GuestMemory interface {
	// Slice returns the host view of [gpa, gpa+n) for reading, or an error
	// when any part of the range lies outside guest RAM. A caller that
	// writes through the view must call MarkDirty for what it wrote.
	Slice(gpa, n uint64) ([]byte, error)
	// WriteAt copies p into guest RAM at gpa and marks it dirty.
	WriteAt(p []byte, gpa uint64) error
	// MarkDirty records a VMM write to [gpa, gpa+n).
	MarkDirty(gpa, n uint64)
}

// The guest may change any of these fields at any time: each helper reads
// the field once, with one load of its width, into a value the caller keeps.

func readU16(mem GuestMemory, gpa uint64) (uint16, error) {
	b, err := mem.Slice(gpa, 2)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint16(b), nil
}

func writeU16(mem GuestMemory, gpa uint64, v uint16) error {
	var b [2]byte
	binary.LittleEndian.PutUint16(b[:], v)
	return mem.WriteAt(b[:], gpa)
}
