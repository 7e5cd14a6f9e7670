package memguard

import (
	"errors"
	"testing"
)

func TestStateRoundTrip(t *testing.T) {
	e := newEnv(t, 4, Config{})
	a := mustRegister(e, userVA, 2*pageSize, Confidential)
	b := mustRegister(e, userVA+2*pageSize, pageSize, Integrity)
	copy(e.m.b[dataBase:], "secret")
	if err := e.g.AddRange("kernel-text", 0x200000, 0x4000); err != nil {
		t.Fatal(err)
	}
	kernel := e.ctx
	kernel.CPL = 0
	e.g.HandleAccess(kernel, dataBase, make([]byte, 8), false)
	// An unexpected change of region b (a write the VMM did not filter).
	if _, err := e.g.MeasureRegion(b, "test"); err != nil {
		t.Fatal(err)
	}
	e.m.b[dataBase+2*pageSize] ^= 1
	if m, err := e.g.MeasureRegion(b, "test"); err != nil || !m.Unexpected {
		t.Fatalf("change of region b: %+v %v", m, err)
	}
	if _, err := e.g.MeasureAll("test"); err != nil {
		t.Fatal(err)
	}
	st, err := e.g.Save()
	if err != nil {
		t.Fatal(err)
	}
	// The destination has the same RAM (migrated) and the same config.
	g2, err := Restore(Config{Memory: e.m, RAM: []Range{{0, memSize}}, Logger: quiet()}, st)
	if err != nil {
		t.Fatal(err)
	}
	s1, s2 := e.g.Status(), g2.Status()
	if len(s2.Regions) != 2 || s2.Regions[0].ID != a || s2.Regions[1].ID != b || s2.Protected != s1.Protected ||
		s2.Regions[0].Violations != 1 || s2.Regions[0].Last.Digest != s1.Regions[0].Last.Digest || len(s2.Ranges) != 1 ||
		s2.Regions[1].Unexpected != 1 || s2.Regions[1].Violations != 1 {
		t.Fatalf("restored %+v\noriginal %+v", s2, s1)
	}
	sl1, _, _ := e.g.Slots()
	sl2, _, _ := g2.Slots()
	if !equalSlots(sl1, sl2) {
		t.Errorf("slots differ: %+v %+v", sl1, sl2)
	}
	// Ids continue after the saved ones.
	g2id := g2.HandleIO(e.ctx, Regs{RAX: OpRegister, RBX: userVA + 3*pageSize, RCX: pageSize, RSI: uint64(Integrity)})
	if g2id.Regs.RAX != 0 || g2id.Regs.RBX != b+1 {
		t.Errorf("next register: %+v", g2id.Regs)
	}
}

func TestRestoreHostile(t *testing.T) {
	e := newEnv(t, 4, Config{})
	mustRegister(e, userVA, 2*pageSize, Confidential)
	if err := e.g.AddRange("kernel-text", 0x200000, 0x4000); err != nil {
		t.Fatal(err)
	}
	good, err := e.g.Save()
	if err != nil {
		t.Fatal(err)
	}
	clone := func() State {
		s := good
		s.Regions = append([]RegionState(nil), good.Regions...)
		for i := range s.Regions {
			s.Regions[i].Pages = append([]uint64(nil), good.Regions[i].Pages...)
			s.Regions[i].Tables = append([]uint64(nil), good.Regions[i].Tables...)
		}
		s.Ranges = append([]RangeState(nil), good.Ranges...)
		return s
	}
	tests := []struct {
		name   string
		mutate func(s *State, m *fakeMem)
		want   error
	}{
		{"version", func(s *State, _ *fakeMem) { s.Version = 9 }, ErrBadState},
		{"next id zero", func(s *State, _ *fakeMem) { s.NextID = 0 }, ErrBadState},
		{"next id huge", func(s *State, _ *fakeMem) { s.NextID = ^uint64(0) }, ErrBadState},
		{"id zero", func(s *State, _ *fakeMem) { s.Regions[0].ID = 0 }, ErrBadState},
		{"id beyond next", func(s *State, _ *fakeMem) { s.Regions[0].ID = s.NextID }, ErrBadState},
		{"duplicate id", func(s *State, _ *fakeMem) { s.Regions = append(s.Regions, s.Regions[0]) }, ErrBadState},
		{"no pages", func(s *State, _ *fakeMem) { s.Regions[0].Pages = nil }, ErrBadState},
		{"tables short", func(s *State, _ *fakeMem) { s.Regions[0].Tables = s.Regions[0].Tables[:1] }, ErrBadState},
		{"page elsewhere", func(s *State, _ *fakeMem) { s.Regions[0].Pages[1] = 0x800000 }, ErrBadState},
		{"table elsewhere", func(s *State, _ *fakeMem) { s.Regions[0].Tables[0] = 0x800000 }, ErrBadState},
		{"owner bits", func(s *State, _ *fakeMem) { s.Regions[0].Owner |= 1 << 63 }, ErrBadState},
		{"bad mode", func(s *State, _ *fakeMem) { s.Regions[0].Mode = 3 }, ErrBadState},
		{"va unmapped", func(s *State, _ *fakeMem) { s.Regions[0].VA = 0x1000 }, ErrBadState},
		{"too many regions", func(s *State, _ *fakeMem) {
			for i := 0; i < DefaultMaxRegions; i++ {
				s.Regions = append(s.Regions, s.Regions[0])
			}
		}, ErrBadState},
		{"range outside RAM", func(s *State, _ *fakeMem) { s.Ranges[0].GPA = memSize }, ErrBadState},
		{"range name twice", func(s *State, _ *fakeMem) { s.Ranges = append(s.Ranges, s.Ranges[0]) }, ErrBadState},
		{"content changed", func(_ *State, m *fakeMem) { m.b[dataBase] ^= 1 }, ErrMeasurementMismatch},
		{"digest changed", func(s *State, _ *fakeMem) { s.Regions[0].Digest[0] ^= 1 }, ErrMeasurementMismatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newFakeMem(memSize)
			copy(m.b, e.m.b)
			s := clone()
			tt.mutate(&s, m)
			g, err := Restore(Config{Memory: m, RAM: []Range{{0, memSize}}, Logger: quiet()}, s)
			if !errors.Is(err, tt.want) || g != nil {
				t.Errorf("err %v, want %v", err, tt.want)
			}
		})
	}
}

func TestRestoreWriteProtected(t *testing.T) {
	e := newEnv(t, 1, Config{})
	mustRegister(e, userVA, pageSize, Confidential)
	// The kernel write-protects the live owner's page before the save.
	e.m.put64(e.p.leafEntry(userVA), dataBase|ptePresent|pteUser)
	st, err := e.g.Save()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Restore(Config{Memory: e.m, RAM: []Range{{0, memSize}}, Logger: quiet()}, st); err != nil {
		t.Errorf("restore of a write-protected live owner: %v", err)
	}
}

// TestRestoreCarriesRangeMeasurement: a measured range travels with its
// latest digest, which Restore does not recompute (no hashing in a
// migration's blackout); the destination's next measurement hashes it and
// reports a change.
func TestRestoreCarriesRangeMeasurement(t *testing.T) {
	e := newEnv(t, 2, Config{})
	if err := e.g.AddRange("kernel-text", 0x200000, 0x4000); err != nil {
		t.Fatal(err)
	}
	src, err := e.g.MeasureAll("test")
	if err != nil || len(src) != 1 {
		t.Fatalf("measure: %+v %v", src, err)
	}
	st, err := e.g.Save()
	if err != nil {
		t.Fatal(err)
	}
	m := newFakeMem(memSize)
	copy(m.b, e.m.b)
	m.b[0x200000] ^= 1 // the guest patched its code after the measurement
	g2, err := Restore(Config{Memory: m, RAM: []Range{{0, memSize}}, Logger: quiet()}, st)
	if err != nil {
		t.Fatal(err)
	}
	rs := g2.Status().Ranges
	if len(rs) != 1 || rs[0].Last == nil || rs[0].Last.Digest != src[0].Digest || rs[0].Last.Trigger != "carried" {
		t.Fatalf("restored range %+v, want the source's digest, carried", rs)
	}
	ms, err := g2.MeasureAll("periodic")
	if err != nil || len(ms) != 1 || !ms[0].Changed || ms[0].Digest == src[0].Digest {
		t.Fatalf("first measurement on the destination: %+v %v", ms, err)
	}
}
