package memguard

import (
	"errors"
	"testing"
)

func TestWalk(t *testing.T) {
	for _, la57 := range []bool{false, true} {
		m := newFakeMem(memSize)
		p := newPT(m, la57, tableBase)
		p.mapPage(0x1000, 0x400000, pageSize, userRW)
		p.mapPage(0x200000, 0x600000, 2<<20, userRW)
		p.mapPage(0x40000000, 0, 1<<30, userRW)
		p.mapPage(0x3000, 0x401000, pageSize, ptePresent|pteUser)  // read-only
		p.mapPage(0x4000, 0x402000, pageSize, ptePresent|pteWrite) // supervisor
		p.mapPage(0x5000, 0x403000, pageSize, pteUser|pteWrite)    // not present
		p.mapPage(0x6000, 0xfff000000, pageSize, userRW)           // outside RAM
		tests := []struct {
			name     string
			va       uint64
			gpa      uint64
			size     uint64
			user, wr bool
			err      error
		}{
			{"4K", 0x1234, 0x400234, pageSize, true, true, nil},
			{"2M", 0x2abcde, 0x6abcde, 2 << 20, true, true, nil},
			{"1G", 0x40123456, 0x123456, 1 << 30, true, true, nil},
			{"read-only", 0x3000, 0x401000, pageSize, true, false, nil},
			{"supervisor", 0x4000, 0x402000, pageSize, false, true, nil},
			{"not present", 0x5000, 0, 0, false, false, ErrNotMapped},
			{"unmapped", 0x10000000, 0, 0, false, false, ErrNotMapped},
			{"kernel half", 0xffff800000000000, 0, 0, false, false, ErrNonCanonical},
			{"beyond 4-level", 1 << 47, 0, 0, false, false, ErrNonCanonical},
		}
		for _, tt := range tests {
			if la57 && tt.name == "beyond 4-level" {
				continue
			}
			tr, err := Walk(m, p.root, la57, tt.va)
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Errorf("la57=%v %s: err %v, want %v", la57, tt.name, err, tt.err)
				}
				continue
			}
			if err != nil || tr.GPA != tt.gpa || tr.PageSize != tt.size || tr.User != tt.user || tr.Writable != tt.wr {
				t.Errorf("la57=%v %s: %+v %v, want gpa %#x size %#x user %v writable %v", la57, tt.name, tr, err, tt.gpa, tt.size, tt.user, tt.wr)
			}
		}
		// A leaf outside RAM walks (the caller checks RAM); a table
		// outside RAM fails.
		if tr, err := Walk(m, p.root, la57, 0x6000); err != nil || tr.GPA != 0xfff000000 {
			t.Errorf("la57=%v leaf outside RAM: %+v %v", la57, tr, err)
		}
	}
}

func TestWalkHostile(t *testing.T) {
	m := newFakeMem(memSize)
	root := uint64(tableBase)
	// Every entry of the root points at the root itself: a loop.
	for i := uint64(0); i < 512; i++ {
		m.put64(root+i*8, root|userRW)
	}
	tr, err := Walk(m, root, false, 0x123456789000)
	if err != nil || tr.Levels != 4 || tr.GPA != root {
		t.Errorf("self loop: %+v %v (a bounded walk ends at the root)", tr, err)
	}
	// Huge page bit at the top level is reserved.
	m.put64(root, 0x200000|userRW|pteHuge)
	if _, err := Walk(m, root, false, 0x1000); !errors.Is(err, ErrBadEntry) {
		t.Errorf("PS in PML4E: %v", err)
	}
	// A table address with every bit set stays inside 52 bits and fails
	// to read.
	m.put64(root, ^uint64(0))
	if _, err := Walk(m, root, false, 0x1000); err == nil {
		t.Error("table outside RAM walked")
	}
	if _, err := Walk(m, ^uint64(0), false, 0x1000); err == nil {
		t.Error("root outside RAM walked")
	}
}
