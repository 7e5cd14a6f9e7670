package memguard

import (
	"errors"
	"fmt"
	"sort"
)

// ProtectedPage is one protected 4 KiB guest-physical page.
type ProtectedPage struct {
	GPA  uint64
	Mode Mode
}

// Slot is one memory slot of the guest's RAM layout.
type Slot struct {
	GPA, Size uint64
	// ReadOnly asks for KVM_MEM_READONLY: guest writes exit to the VMM as
	// MMIO writes, reads run at full speed.
	ReadOnly bool
}

// ErrTooManySlots is returned when a layout needs more slots than allowed.
var ErrTooManySlots = errors.New("memory-slot layout needs too many slots")

// Layout computes the memory slots over ram: read-write slots for ordinary
// RAM, read-only slots over integrity pages, and no slot over confidential
// pages (the guest's accesses there exit as MMIO). Adjacent pages of the
// same kind share a slot. It fails when the result needs more than
// maxSlots slots, or when a page lies outside ram. It is a pure function
// of its arguments.
func Layout(ram []Range, pages []ProtectedPage, maxSlots int) ([]Slot, error) {
	ps := append([]ProtectedPage(nil), pages...)
	sort.Slice(ps, func(i, j int) bool { return ps[i].GPA < ps[j].GPA })
	for i, p := range ps {
		if p.GPA%pageSize != 0 || !p.Mode.valid() {
			return nil, fmt.Errorf("layout: page %#x (%v): %w", p.GPA, p.Mode, EINVAL)
		}
		if i > 0 && ps[i-1].GPA == p.GPA {
			return nil, fmt.Errorf("layout: page %#x twice: %w", p.GPA, EINVAL)
		}
	}
	var out []Slot
	// first is the first slot of the current RAM range: a slot never spans
	// two ranges, which have different host offsets.
	first := 0
	add := func(s Slot) {
		if s.Size == 0 {
			return
		}
		if n := len(out); n > first && out[n-1].ReadOnly == s.ReadOnly && out[n-1].GPA+out[n-1].Size == s.GPA {
			out[n-1].Size += s.Size
			return
		}
		out = append(out, s)
	}
	j := 0
	for _, r := range ram {
		first = len(out)
		at := r.GPA
		for j < len(ps) && ps[j].GPA < r.end() {
			p := ps[j]
			if p.GPA < at {
				return nil, fmt.Errorf("layout: page %#x outside RAM: %w", p.GPA, EACCES)
			}
			add(Slot{GPA: at, Size: p.GPA - at})
			if p.Mode == Integrity {
				add(Slot{GPA: p.GPA, Size: pageSize, ReadOnly: true})
			}
			at = p.GPA + pageSize
			j++
		}
		add(Slot{GPA: at, Size: r.end() - at})
	}
	if j < len(ps) {
		return nil, fmt.Errorf("layout: page %#x outside RAM: %w", ps[j].GPA, EACCES)
	}
	if len(out) > maxSlots {
		return nil, fmt.Errorf("layout: %d slots, at most %d: %w", len(out), maxSlots, ErrTooManySlots)
	}
	return out, nil
}

// protectedLocked lists the protected pages. g.mu is held.
func (g *Guard) protectedLocked() []ProtectedPage {
	out := make([]ProtectedPage, 0, len(g.byPage))
	for _, p := range g.sorted {
		out = append(out, ProtectedPage{GPA: p, Mode: g.byPage[p].mode})
	}
	return out
}

// Slots returns the memory-slot layout for the current protected pages and
// a generation number that changes whenever the layout does. The VMM
// applies it with every vCPU paused (deleting a slot leaves its RAM
// unmapped for a moment): delete each old slot that differs, then create
// the new ones, with host addresses from its own RAM mapping.
func (g *Guard) Slots() ([]Slot, uint64, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	s, err := Layout(g.cfg.RAM, g.protectedLocked(), g.cfg.MaxSlots)
	return s, g.layoutGen, err
}
