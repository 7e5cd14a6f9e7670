package vmm

import (
	"errors"
	"fmt"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// ErrOutOfRange is returned by accesses that fall outside guest RAM.
var ErrOutOfRange = errors.New("guest address range outside RAM")

// Memory is guest RAM: one anonymous mapping made by the VMM (never Go
// heap), presented to the guest as one or two regions around the device
// hole below 4 GiB. Every write the VMM makes into guest RAM goes through
// WriteAt or Slice-then-MarkDirty so the VMM-side dirty bitmap sees it;
// KVM's dirty log sees only writes made by vCPUs.
type Memory struct {
	mapping []byte
	regions []memRegion
	// offsets[i] is where regions[i] starts in mapping.
	offsets []uint64
	// dirty has one bit per page of mapping, set by VMM writes.
	dirty []atomic.Uint64
}

// NewMemory maps size bytes of guest RAM.
func NewMemory(size uint64) (*Memory, error) {
	if size == 0 || size%pageSize != 0 {
		return nil, fmt.Errorf("guest memory: size %d is not a positive multiple of %d", size, pageSize)
	}
	if size > 1<<46 {
		return nil, fmt.Errorf("guest memory: size %d is too large", size)
	}
	b, err := unix.Mmap(-1, 0, int(size), unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil, fmt.Errorf("guest memory: mmap %d bytes: %w", size, err)
	}
	// Guest RAM holds the guest's secrets: keep it out of core dumps.
	// Huge pages cut TLB and EPT/NPT costs; both are hints.
	_ = unix.Madvise(b, unix.MADV_DONTDUMP)
	_ = unix.Madvise(b, unix.MADV_HUGEPAGE)
	m := &Memory{mapping: b, regions: ramLayout(size)}
	var off uint64
	for _, r := range m.regions {
		m.offsets = append(m.offsets, off)
		off += r.Size
	}
	pages := size / pageSize
	m.dirty = make([]atomic.Uint64, (pages+63)/64)
	return m, nil
}

// Close unmaps guest RAM. No vCPU may run afterwards.
func (m *Memory) Close() error {
	if m.mapping == nil {
		return nil
	}
	err := unix.Munmap(m.mapping)
	m.mapping = nil
	if err != nil {
		return fmt.Errorf("guest memory: munmap: %w", err)
	}
	return nil
}

// Size is the amount of guest RAM in bytes.
func (m *Memory) Size() uint64 { return uint64(len(m.mapping)) }

// lowEnd is the end of RAM below the device hole.
func (m *Memory) lowEnd() uint64 { return m.regions[0].GPA + m.regions[0].Size }

// offset translates [gpa, gpa+n) to an offset into mapping; the range must
// lie inside one region.
func (m *Memory) offset(gpa, n uint64) (uint64, error) {
	for i, r := range m.regions {
		if gpa >= r.GPA && gpa-r.GPA <= r.Size && n <= r.Size-(gpa-r.GPA) {
			return m.offsets[i] + gpa - r.GPA, nil
		}
	}
	return 0, fmt.Errorf("%w: [%#x, +%#x)", ErrOutOfRange, gpa, n)
}

// Slice returns the host view of [gpa, gpa+n) without marking it dirty:
// for reads. A caller that writes through it must call MarkDirty.
func (m *Memory) Slice(gpa, n uint64) ([]byte, error) {
	off, err := m.offset(gpa, n)
	if err != nil {
		return nil, err
	}
	return m.mapping[off : off+n : off+n], nil
}

// WriteAt copies p into guest RAM at gpa and marks the pages dirty.
func (m *Memory) WriteAt(p []byte, gpa uint64) error {
	b, err := m.Slice(gpa, uint64(len(p)))
	if err != nil {
		return err
	}
	copy(b, p)
	m.MarkDirty(gpa, uint64(len(p)))
	return nil
}

// ReadAt copies guest RAM at gpa into p.
func (m *Memory) ReadAt(p []byte, gpa uint64) error {
	b, err := m.Slice(gpa, uint64(len(p)))
	if err != nil {
		return err
	}
	copy(p, b)
	return nil
}

// MarkDirty records a VMM write to [gpa, gpa+n). Ranges outside RAM are
// ignored (Slice already refused them).
func (m *Memory) MarkDirty(gpa, n uint64) {
	if n == 0 {
		return
	}
	off, err := m.offset(gpa, n)
	if err != nil {
		return
	}
	for p := off / pageSize; p <= (off+n-1)/pageSize; p++ {
		m.dirty[p/64].Or(1 << (p % 64))
	}
}

// TakeDirty returns the VMM-side dirty bitmap (one bit per page, in the
// order of the regions) and clears it.
func (m *Memory) TakeDirty() []uint64 {
	out := make([]uint64, len(m.dirty))
	for i := range m.dirty {
		out[i] = m.dirty[i].Swap(0)
	}
	return out
}

// Resident returns how many bytes of guest RAM are backed by host memory
// (pages the guest or the VMM has touched), from mincore(2).
func (m *Memory) Resident() (uint64, error) {
	if m.mapping == nil {
		return 0, errors.New("guest memory: closed")
	}
	vec := make([]byte, (len(m.mapping)+pageSize-1)/pageSize)
	if err := mincore(m.mapping, vec); err != nil {
		return 0, fmt.Errorf("guest memory: mincore: %w", err)
	}
	var n uint64
	for _, v := range vec {
		n += uint64(v & 1)
	}
	return n * pageSize, nil
}
