// Package virtiotest provides test doubles for package virtio and its
// devices: a fake guest memory that records, byte by byte, what the VMM
// marked dirty, and a driver that lays out split virtqueues in it the way a
// guest would (including hostile layouts). It does not import testing.
package virtiotest

import (
	"errors"
	"fmt"
	"sync"
)

// ErrOutOfRange is returned for accesses outside the fake RAM.
var ErrOutOfRange = errors.New("virtiotest: range outside guest RAM")

// Memory is a fake guest RAM of one region [Base, Base+len). WriteAt and the
// Guest* methods lock; views from Slice do not, as with real guest memory,
// so a test must not touch bytes a device worker may be using (publish
// everything, let the device run, stop it, then inspect).
type Memory struct {
	Base uint64
	// SnapshotReads makes Slice return a copy taken under the lock, so a
	// test can write rings as the guest while a device worker reads them
	// without a data race. Devices must then write only with WriteAt
	// (virtio-blk, which preads into views, must not run in this mode).
	SnapshotReads bool

	mu     sync.Mutex
	buf    []byte
	shadow []byte // buf as of the last Undirtied, plus guest writes
	dirty  []bool // bytes marked by WriteAt/MarkDirty since then
}

// NewMemory makes size bytes of zeroed RAM at base.
func NewMemory(base, size uint64) *Memory {
	return &Memory{Base: base, buf: make([]byte, size), shadow: make([]byte, size), dirty: make([]bool, size)}
}

// Size is the RAM size.
func (m *Memory) Size() uint64 { return uint64(len(m.buf)) }

func (m *Memory) off(gpa, n uint64) (uint64, error) {
	size := uint64(len(m.buf))
	if gpa < m.Base || gpa-m.Base > size || n > size-(gpa-m.Base) {
		return 0, fmt.Errorf("%w: [%#x, +%#x)", ErrOutOfRange, gpa, n)
	}
	return gpa - m.Base, nil
}

// Slice implements virtio.GuestMemory.
func (m *Memory) Slice(gpa, n uint64) ([]byte, error) {
	o, err := m.off(gpa, n)
	if err != nil {
		return nil, err
	}
	if m.SnapshotReads {
		m.mu.Lock()
		defer m.mu.Unlock()
		return append([]byte(nil), m.buf[o:o+n]...), nil
	}
	return m.buf[o : o+n : o+n], nil
}

// WriteAt implements virtio.GuestMemory.
func (m *Memory) WriteAt(p []byte, gpa uint64) error {
	o, err := m.off(gpa, uint64(len(p)))
	if err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	copy(m.buf[o:], p)
	for i := range p {
		m.dirty[o+uint64(i)] = true
	}
	return nil
}

// MarkDirty implements virtio.GuestMemory.
func (m *Memory) MarkDirty(gpa, n uint64) {
	o, err := m.off(gpa, n)
	if err != nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := range n {
		m.dirty[o+i] = true
	}
}

// GuestWrite writes as the guest does: no dirty marking, and the shadow
// follows so Undirtied does not blame the VMM.
func (m *Memory) GuestWrite(gpa uint64, p []byte) {
	o, err := m.off(gpa, uint64(len(p)))
	if err != nil {
		panic(err) // a bug in the test, not input
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	copy(m.buf[o:], p)
	copy(m.shadow[o:], p)
}

// GuestRead copies n bytes at gpa as the guest sees them.
func (m *Memory) GuestRead(gpa, n uint64) []byte {
	o, err := m.off(gpa, n)
	if err != nil {
		panic(err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]byte(nil), m.buf[o:o+n]...)
}

// IsDirty reports whether the VMM marked the byte at gpa since the last
// Undirtied.
func (m *Memory) IsDirty(gpa uint64) bool {
	o, err := m.off(gpa, 1)
	if err != nil {
		return false
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.dirty[o]
}

// Undirtied returns the addresses of bytes the VMM changed without marking
// them dirty since the last call (at most limit of them), then starts a new
// round. Call it only while no device worker runs.
func (m *Memory) Undirtied(limit int) (bad []uint64, changed int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := range m.buf {
		if m.buf[i] != m.shadow[i] {
			changed++
			if !m.dirty[i] && len(bad) < limit {
				bad = append(bad, m.Base+uint64(i))
			}
		}
	}
	copy(m.shadow, m.buf)
	clear(m.dirty)
	return bad, changed
}
