package memguard

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// lockPages locks (or unlocks) the host pages backing the given guest
// pages in RAM, run by run. Guest RAM is already MADV_DONTDUMP (vmm maps
// it so), so protected pages stay out of core dumps; locking keeps them
// out of swap.
func lockPages(hm HostMemory, pages []uint64, lock bool) error {
	for i := 0; i < len(pages); {
		n := 1
		for i+n < len(pages) && pages[i+n] == pages[i]+uint64(n)*pageSize {
			n++
		}
		b, err := hm.Slice(pages[i], uint64(n)*pageSize)
		if err != nil {
			return fmt.Errorf("lock %#x: %w", pages[i], err)
		}
		if lock {
			err = unix.Mlock(b)
		} else {
			err = unix.Munlock(b)
		}
		if err != nil {
			op := "mlock"
			if !lock {
				op = "munlock"
			}
			return fmt.Errorf("%s %#x+%#x: %w", op, pages[i], n*pageSize, err)
		}
		i += n
	}
	return nil
}

// Secret is guarded host memory for gvmm's own key material (migration
// keys, unsealed secrets): a mapping outside the Go heap, locked in RAM,
// excluded from core dumps, not inherited by children, with an
// inaccessible guard page on each side, and wiped when destroyed. Copies
// the caller makes of Bytes() are not covered.
type Secret struct {
	mapping []byte // guard page, data pages, guard page
	data    []byte
}

// ErrDestroyed is returned by a Secret used after Destroy.
var ErrDestroyed = errors.New("secret destroyed")

// NewSecret returns a Secret of n bytes, zeroed.
func NewSecret(n int) (*Secret, error) {
	if n <= 0 || n > 1<<30 {
		return nil, fmt.Errorf("memguard: new secret: size %d: %w", n, EINVAL)
	}
	ps := unix.Getpagesize()
	dataLen := (n + ps - 1) / ps * ps
	m, err := unix.Mmap(-1, 0, dataLen+2*ps, unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("memguard: new secret: mmap: %w", err)
	}
	s := &Secret{mapping: m}
	inner := m[ps : ps+dataLen]
	steps := []struct {
		name string
		f    func() error
	}{
		{"mprotect", func() error { return unix.Mprotect(inner, unix.PROT_READ|unix.PROT_WRITE) }},
		{"madvise(MADV_DONTDUMP)", func() error { return unix.Madvise(inner, unix.MADV_DONTDUMP) }},
		{"madvise(MADV_WIPEONFORK)", func() error { return unix.Madvise(inner, unix.MADV_WIPEONFORK) }},
		{"mlock", func() error { return unix.Mlock(inner) }},
	}
	for _, st := range steps {
		if err := st.f(); err != nil {
			_ = unix.Munmap(m)
			return nil, fmt.Errorf("memguard: new secret: %s: %w", st.name, err)
		}
	}
	s.data = inner[:n:n]
	return s, nil
}

// Bytes is the secret's memory; nil after Destroy.
func (s *Secret) Bytes() []byte { return s.data }

// Destroy wipes, unlocks and unmaps the secret. It is idempotent.
func (s *Secret) Destroy() error {
	if s.mapping == nil {
		return nil
	}
	full := s.data[:cap(s.data)]
	clear(full)
	s.data = nil
	m := s.mapping
	s.mapping = nil
	if err := unix.Munmap(m); err != nil {
		return fmt.Errorf("memguard: destroy secret: munmap: %w", err)
	}
	return nil
}
