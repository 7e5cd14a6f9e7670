package memguard

// Status is the registry as the API shows it (gvmm status).
type Status struct {
	Regions []RegionStatus
	Ranges  []RangeStatus
	// Violations counts every refused access and unexpected change;
	// Refusals counts refused requests.
	Violations, Refusals uint64
	// Protected is the number of protected pages.
	Protected int
}

// RegionStatus is one region.
type RegionStatus struct {
	ID   uint64
	Mode Mode
	// Owner is the owner's top-level page-table GPA (its identity).
	Owner      uint64
	VA, Length uint64
	// Locked says its backing pages are locked in host RAM.
	Locked     bool
	Violations uint64
	// Unexpected counts the measurements that found the region changed
	// without an owner write (each is also a violation).
	Unexpected uint64
	// Last is the latest measurement, nil before the first.
	Last *Measurement
}

// RangeStatus is one boot-time measured range.
type RangeStatus struct {
	Name      string
	GPA, Size uint64
	Last      *Measurement
}

// Status returns a snapshot.
func (g *Guard) Status() Status {
	g.mu.Lock()
	defer g.mu.Unlock()
	s := Status{Violations: g.violations, Refusals: g.refusals, Protected: len(g.byPage)}
	for _, r := range g.regionsInOrder() {
		rs := RegionStatus{ID: r.id, Mode: r.mode, Owner: r.owner, VA: r.va, Length: r.length(),
			Locked: r.locked, Violations: r.violations, Unexpected: r.unexpected}
		if r.last != nil {
			m := *r.last
			rs.Last = &m
		}
		s.Regions = append(s.Regions, rs)
	}
	for _, mr := range g.ranges {
		rs := RangeStatus{Name: mr.name, GPA: mr.r.GPA, Size: mr.r.Size}
		if mr.last != nil {
			m := *mr.last
			rs.Last = &m
		}
		s.Ranges = append(s.Ranges, rs)
	}
	return s
}
