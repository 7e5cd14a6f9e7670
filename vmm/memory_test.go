package vmm

import (
	"errors"
	"math/bits"
	"testing"
)

func TestMemoryLayoutAndDirty(t *testing.T) {
	m, err := NewMemory(64 << 20)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.WriteAt([]byte("hello"), 0x1ffe); err != nil { // spans pages 1 and 2
		t.Fatal(err)
	}
	p := make([]byte, 5)
	if err := m.ReadAt(p, 0x1ffe); err != nil || string(p) != "hello" {
		t.Fatalf("read back %q, %v", p, err)
	}
	d := m.TakeDirty()
	count := 0
	for _, w := range d {
		count += bits.OnesCount64(w)
	}
	if count != 2 || d[0] != 0b110 {
		t.Fatalf("dirty bitmap %b (%d pages), want pages 1 and 2", d[0], count)
	}
	if d := m.TakeDirty(); d[0] != 0 {
		t.Fatal("TakeDirty did not clear the bitmap")
	}
	for _, bad := range []struct{ gpa, n uint64 }{{64 << 20, 1}, {64<<20 - 1, 2}, {^uint64(0), 2}, {mmioHoleStart, 1}} {
		if _, err := m.Slice(bad.gpa, bad.n); !errors.Is(err, ErrOutOfRange) {
			t.Errorf("Slice(%#x, %d) = %v, want ErrOutOfRange", bad.gpa, bad.n, err)
		}
	}
}

func TestMemoryAboveHole(t *testing.T) {
	if testing.Short() {
		t.Skip("maps 3.5 GiB of address space")
	}
	m, err := NewMemory(mmioHoleStart + 512<<20) // NORESERVE: nothing is touched
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if len(m.regions) != 2 || m.lowEnd() != mmioHoleStart {
		t.Fatalf("regions %+v", m.regions)
	}
	if err := m.WriteAt([]byte{1}, mmioHoleEnd); err != nil {
		t.Fatal(err)
	}
	d := m.TakeDirty()
	page := mmioHoleStart / pageSize // first page after the low region in the mapping
	if d[page/64]&(1<<(page%64)) == 0 {
		t.Fatal("write above 4 GiB not marked at the right bitmap position")
	}
	if _, err := m.Slice(mmioHoleStart-1, 2); !errors.Is(err, ErrOutOfRange) {
		t.Fatal("a range crossing into the hole was accepted")
	}
}

func TestMemoryResident(t *testing.T) {
	m, err := NewMemory(MinMemory)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	before, err := m.Resident()
	if err != nil {
		t.Fatal(err)
	}
	for gpa := uint64(0); gpa < 64*pageSize; gpa += pageSize {
		if err := m.WriteAt([]byte{1}, gpa); err != nil {
			t.Fatal(err)
		}
	}
	after, err := m.Resident()
	if err != nil {
		t.Fatal(err)
	}
	// Huge pages may back more than was touched; never less.
	if after-before < 64*pageSize {
		t.Fatalf("resident grew by %d bytes after touching 64 pages", after-before)
	}
}
