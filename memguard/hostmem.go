package memguard

import (
	"errors"
	"fmt"
	"sort"

	"golang.org/x/sys/unix"
)

// hostLockUnit is the granularity of host locks: the transparent huge
// page of x86-64. A protected page is locked together with the rest of
// its 2 MiB block (clipped to its RAM range), so that mlock and munlock
// change the host mapping only at huge-page boundaries. Locking a single
// 4 KiB page inside a huge page splits the host VMA there and the huge
// page's mapping with it: the host kernel invalidates the guest's nested
// page tables for the block (an IPI to every CPU running a vCPU), KVM can
// map the block only with 4 KiB entries from then on (many more nested
// page faults), and khugepaged later collapses it again behind the
// guest's back (invalidating it once more). Under nested KVM on QEMU's
// TCG each of those host interrupts into a running vCPU is a chance of
// the emulated-SVM failure seen as L1 panics and L2 triple faults. The
// cost is that up to 2 MiB of guest RAM stays resident per locked block
// (an mlock beyond RLIMIT_MEMLOCK fails, is logged, and the region is
// reported as not locked).
const hostLockUnit = 2 << 20

// lockUnits are the host lock units covering pages, in order and each
// once: the hostLockUnit-aligned block around each page, clipped to the
// RAM range that holds it. Pages outside RAM have none (registration
// refuses them).
func lockUnits(ram []Range, pages []uint64) []Range {
	seen := make(map[uint64]bool)
	var out []Range
	for _, p := range pages {
		for _, r := range ram {
			if !r.contains(p, pageSize) {
				continue
			}
			start := max(r.GPA, p&^(hostLockUnit-1))
			end := min(r.end(), p&^(hostLockUnit-1)+hostLockUnit)
			if !seen[start] {
				seen[start] = true
				out = append(out, Range{GPA: start, Size: end - start})
			}
			break
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].GPA < out[j].GPA })
	return out
}

// hostLock locks (or unlocks) the host memory backing u in RAM.
func hostLock(hm HostMemory, u Range, lock bool) error {
	b, err := hm.Slice(u.GPA, u.Size)
	if err != nil {
		return fmt.Errorf("lock %#x+%#x: %w", u.GPA, u.Size, err)
	}
	op := "mlock"
	if lock {
		err = unix.Mlock(b)
	} else {
		op = "munlock"
		err = unix.Munlock(b)
	}
	if err != nil {
		return fmt.Errorf("%s %#x+%#x: %w", op, u.GPA, u.Size, err)
	}
	return nil
}

// lockRegion locks r's lock units in host RAM, counting each unit's
// users so that a unit shared with other regions is locked once and
// unlocked with its last region. r.locked says whether every unit is
// locked. g.mu is held.
func (g *Guard) lockRegion(hm HostMemory, r *region) {
	var firstErr error
	for _, u := range lockUnits(g.cfg.RAM, r.pages) {
		if g.hostLocks[u.GPA] == 0 {
			if err := hostLock(hm, u, true); err != nil {
				if firstErr == nil {
					firstErr = err
				}
				continue
			}
		}
		g.hostLocks[u.GPA]++
		r.held = append(r.held, u)
	}
	r.locked = firstErr == nil && len(r.held) > 0
	if firstErr != nil {
		g.log.Warn("memguard: cannot lock region in host memory", "id", r.id, "err", firstErr)
	}
}

// unlockUnits drops one use of each unit, unlocking those with no use
// left. g.mu is held.
func (g *Guard) unlockUnits(hm HostMemory, units []Range) {
	for _, u := range units {
		n := g.hostLocks[u.GPA] - 1
		if n > 0 {
			g.hostLocks[u.GPA] = n
			continue
		}
		delete(g.hostLocks, u.GPA)
		if err := hostLock(hm, u, false); err != nil {
			g.log.Warn("memguard: cannot unlock host memory", "err", err)
		}
	}
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
