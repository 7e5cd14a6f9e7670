package memguard

import (
	"errors"
	"fmt"
)

// StateVersion is the version of State this package writes.
const StateVersion = 1

// State is the registry as plain data, for migration: it travels in its
// own record under the stream's encryption, while the pages' contents go
// with the rest of guest RAM.
type State struct {
	Version uint32
	NextID  uint64
	Regions []RegionState
	Ranges  []RangeState
}

// RegionState is one region: its owner binding, mode and measurement.
type RegionState struct {
	ID    uint64
	Owner uint64
	LA57  bool
	Mode  Mode
	VA    uint64
	// Pages are the bound GPAs in VA order; Tables the last-level table
	// page of each.
	Pages, Tables []uint64
	// Digest is the SHA-256 of the contents when saved.
	Digest     [32]byte
	Violations uint64
	// Unexpected counts unexpected changes found before the save (absent
	// from states of older builds: zero).
	Unexpected uint64
}

// RangeState is one boot-time measured range, with its latest
// measurement (Measured says there was one).
type RangeState struct {
	Name      string
	GPA, Size uint64
	Digest    [32]byte
	Measured  bool
}

// ErrBadState is wrapped by every refusal of Restore.
var ErrBadState = errors.New("invalid memguard state")

// ErrMeasurementMismatch is wrapped when restored contents differ from the
// saved measurement.
var ErrMeasurementMismatch = errors.New("measurement mismatch")

// Save returns the registry's state, measuring each region now (the VM
// must be paused, so nothing changes under the digest). Ranges carry
// their latest measurement instead: they are not protected, and hashing
// a guest kernel's code here would lengthen a migration's blackout by
// its hashing time (about 1 s for 14 MiB under nested TCG) on each side.
func (g *Guard) Save() (State, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	st := State{Version: StateVersion, NextID: g.nextID}
	for _, r := range g.regionsInOrder() {
		m, err := g.measureRegion(r, "save")
		if err != nil {
			return State{}, fmt.Errorf("memguard: save: %w", err)
		}
		st.Regions = append(st.Regions, RegionState{
			ID: r.id, Owner: r.owner, LA57: r.la57, Mode: r.mode, VA: r.va,
			Pages: append([]uint64(nil), r.pages...), Tables: append([]uint64(nil), r.path...),
			Digest: m.Digest, Violations: r.violations, Unexpected: r.unexpected,
		})
	}
	for _, mr := range g.ranges {
		rs := RangeState{Name: mr.name, GPA: mr.r.GPA, Size: mr.r.Size}
		if mr.last != nil {
			rs.Digest, rs.Measured = mr.last.Digest, true
		}
		st.Ranges = append(st.Ranges, rs)
	}
	return st, nil
}

// Restore builds a Guard from a saved state over restored guest memory,
// before the guest resumes. The state is hostile input: every region is
// checked as a registration would be (alignment, RAM, reserved memory,
// limits, overlaps), its owner's page tables must still map it through
// the same tables, and its contents must hash to the saved digest;
// otherwise Restore fails and the VM must not resume. Ranges keep the
// source's latest measurement (trigger "carried") until the next
// MeasureAll hashes them here. The caller then applies Slots().
func Restore(cfg Config, st State) (*Guard, error) {
	g, err := New(cfg)
	if err != nil {
		return nil, err
	}
	if st.Version != StateVersion {
		return nil, fmt.Errorf("memguard: restore: version %d: %w", st.Version, ErrBadState)
	}
	if st.NextID == 0 || st.NextID > 1<<62 {
		return nil, fmt.Errorf("memguard: restore: next id %d: %w", st.NextID, ErrBadState)
	}
	if len(st.Regions) > g.cfg.MaxRegions || len(st.Ranges) > g.cfg.MaxRegions {
		return nil, fmt.Errorf("memguard: restore: %d regions, %d ranges: %w", len(st.Regions), len(st.Ranges), ErrBadState)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, rs := range st.Regions {
		if err := g.restoreRegion(rs, st.NextID); err != nil {
			g.unlockAll()
			return nil, fmt.Errorf("memguard: restore region %d: %w", rs.ID, err)
		}
	}
	g.nextID = st.NextID
	for _, rs := range st.Ranges {
		var err error
		if rs.Name == "" || rs.Size == 0 || rs.GPA+rs.Size < rs.GPA || !g.inRAM(rs.GPA, rs.Size) {
			err = fmt.Errorf("range %q [%#x,+%#x): %w", rs.Name, rs.GPA, rs.Size, EINVAL)
		} else {
			err = g.addRangeLocked(rs.Name, rs.GPA, rs.Size)
		}
		if err != nil {
			g.unlockAll()
			return nil, fmt.Errorf("memguard: restore: %w: %w", err, ErrBadState)
		}
		if rs.Measured {
			mr := g.ranges[len(g.ranges)-1]
			m := Measurement{Time: g.now(), Range: rs.Name, Digest: rs.Digest, Trigger: "carried"}
			mr.last = &m
			g.appendLog(m)
		}
	}
	return g, nil
}

func (g *Guard) restoreRegion(rs RegionState, nextID uint64) error {
	if rs.ID == 0 || rs.ID >= nextID || g.regions[rs.ID] != nil {
		return fmt.Errorf("id %d (next %d): %w", rs.ID, nextID, ErrBadState)
	}
	if len(rs.Pages) == 0 || len(rs.Pages) > g.cfg.MaxPages || len(rs.Tables) != len(rs.Pages) {
		return fmt.Errorf("%d pages, %d tables: %w", len(rs.Pages), len(rs.Tables), ErrBadState)
	}
	if rs.Owner&^physMask != 0 {
		return fmt.Errorf("owner %#x: %w", rs.Owner, ErrBadState)
	}
	// The same checks as a registration, on the owner's restored tables:
	// this also proves the pages and tables in the state are the ones
	// the guest's own tables lead to.
	r, err := g.translate(rs.Owner, rs.LA57, rs.VA, uint64(len(rs.Pages))*pageSize, rs.Mode, false)
	if err != nil {
		return fmt.Errorf("%w: %w", err, ErrBadState)
	}
	for i := range r.pages {
		if r.pages[i] != rs.Pages[i] || r.path[i] != rs.Tables[i] {
			return fmt.Errorf("page %d: binding differs from the owner's page tables: %w", i, ErrBadState)
		}
	}
	r.id = rs.ID
	if err := g.admit(r); err != nil {
		return fmt.Errorf("%w: %w", err, ErrBadState)
	}
	d, err := g.digestPages(r.pages)
	if err != nil {
		return err
	}
	if d != rs.Digest {
		return ErrMeasurementMismatch
	}
	r.violations, r.unexpected = rs.Violations, rs.Unexpected
	g.insert(r)
	m := Measurement{Time: g.now(), Region: r.id, Digest: d, Trigger: "restore"}
	r.last = &m
	g.appendLog(m)
	return nil
}

// unlockAll undoes host locks of a failed Restore. g.mu is held.
func (g *Guard) unlockAll() {
	hm, ok := g.cfg.Memory.(HostMemory)
	if !ok {
		return
	}
	for _, r := range g.regions {
		if r.locked {
			_ = lockPages(hm, r.pages, false)
		}
	}
}
