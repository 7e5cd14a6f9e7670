package memguard

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// PhysReader reads guest-physical memory. *vmm.Memory satisfies it; reads
// outside guest RAM fail.
type PhysReader interface {
	ReadAt(p []byte, gpa uint64) error
}

// Page-table entry bits (Intel SDM vol. 3A, 4.5).
const (
	ptePresent = 1 << 0
	pteWrite   = 1 << 1
	pteUser    = 1 << 2
	pteHuge    = 1 << 7 // PS
)

// Errors of a walk. ErrNotMapped and ErrNotUser wrap the guest's EFAULT.
var (
	ErrNotMapped    = errors.New("not mapped")
	ErrNotUser      = errors.New("not a user page")
	ErrNotWritable  = errors.New("not writable")
	ErrNonCanonical = errors.New("not a canonical user address")
	ErrBadEntry     = errors.New("reserved page-table entry")
)

// Translation is where one virtual address leads.
type Translation struct {
	// GPA is the guest-physical address of the byte at the virtual
	// address.
	GPA uint64
	// PageSize is 4 KiB, 2 MiB or 1 GiB.
	PageSize uint64
	// User and Writable are the AND of U/S and R/W over every level:
	// whether CPL 3 may read and write it.
	User, Writable bool
	// Tables are the guest-physical addresses of the tables walked, top
	// level first; Levels of them are valid.
	Tables [5]uint64
	Levels int
}

// userLimit is the first address above the canonical lower half.
func userLimit(la57 bool) uint64 {
	if la57 {
		return 1 << 56
	}
	return 1 << 47
}

// Walk translates va through the 4-level (or, with la57, 5-level) page
// tables rooted at root. It reads at most five entries, so no table layout
// (loops, self references) can make it run long; every entry it follows is
// read through mem, which refuses addresses outside RAM. Only user-half
// addresses are walked.
func Walk(mem PhysReader, root uint64, la57 bool, va uint64) (Translation, error) {
	var t Translation
	if va >= userLimit(la57) {
		return t, fmt.Errorf("walk %#x: %w", va, ErrNonCanonical)
	}
	levels := 4
	if la57 {
		levels = 5
	}
	table := root & physMask
	t.User, t.Writable = true, true
	var buf [8]byte
	for level := levels; level >= 1; level-- {
		t.Tables[t.Levels] = table
		t.Levels++
		shift := uint(pageShift + 9*(level-1))
		idx := (va >> shift) & 511
		if err := mem.ReadAt(buf[:], table+idx*8); err != nil {
			return t, fmt.Errorf("walk %#x: read level-%d table at %#x: %w", va, level, table, err)
		}
		e := binary.LittleEndian.Uint64(buf[:])
		if e&ptePresent == 0 {
			return t, fmt.Errorf("walk %#x: level %d: %w", va, level, ErrNotMapped)
		}
		t.User = t.User && e&pteUser != 0
		t.Writable = t.Writable && e&pteWrite != 0
		if e&pteHuge != 0 && level > 1 {
			if level > 3 {
				// PS is reserved in PML5E and PML4E.
				return t, fmt.Errorf("walk %#x: level %d: %w", va, level, ErrBadEntry)
			}
			size := uint64(1) << shift
			base := e & physMask &^ (size - 1) // drops the PAT bit (12)
			t.GPA = base | va&(size-1)
			t.PageSize = size
			return t, nil
		}
		table = e & physMask
	}
	t.GPA = table | va&(pageSize-1)
	t.PageSize = pageSize
	return t, nil
}
