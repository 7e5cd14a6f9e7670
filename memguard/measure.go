package memguard

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"time"
)

// Measurement is one entry of the measurement log.
type Measurement struct {
	Time time.Time
	// Region is the region measured, or 0 for a boot-time range.
	Region uint64
	// Range names a boot-time range ("" for a region).
	Range string
	// Digest is SHA-256 of the bytes, in virtual-address order for a
	// region.
	Digest [32]byte
	// Trigger says what asked: "guest", "periodic", "api", "restore"...
	Trigger string
	// Changed says the digest differs from the previous one.
	Changed bool
	// Unexpected says it changed although the owner wrote nothing through
	// gvmm since the previous measurement: a violation.
	Unexpected bool
}

// measuredRange is a guest-physical range measured since boot.
type measuredRange struct {
	name string
	r    Range
	last *Measurement
}

// AddRange registers a guest-physical range (for example the guest
// kernel's text) to be measured with the regions.
func (g *Guard) AddRange(name string, gpa, size uint64) error {
	if name == "" || size == 0 || gpa+size < gpa {
		return fmt.Errorf("memguard: add range %q [%#x,+%#x): %w", name, gpa, size, EINVAL)
	}
	if !g.inRAM(gpa, size) {
		return fmt.Errorf("memguard: add range %q [%#x,+%#x): %w", name, gpa, size, EACCES)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.addRangeLocked(name, gpa, size)
}

// addRangeLocked is AddRange after its checks of the arguments. g.mu is
// held.
func (g *Guard) addRangeLocked(name string, gpa, size uint64) error {
	if len(g.ranges) >= g.cfg.MaxRegions {
		return fmt.Errorf("memguard: add range %q: %w", name, ENOSPC)
	}
	for _, m := range g.ranges {
		if m.name == name {
			return fmt.Errorf("memguard: add range %q: %w", name, EBUSY)
		}
	}
	g.ranges = append(g.ranges, &measuredRange{name: name, r: Range{gpa, size}})
	return nil
}

// digest hashes pages (region) or one range, through Memory.
func (g *Guard) digestPages(pages []uint64) ([32]byte, error) {
	h := sha256.New()
	buf := make([]byte, 64<<10)
	for i := 0; i < len(pages); {
		// Read runs of contiguous pages at once.
		n := 1
		for i+n < len(pages) && n < len(buf)/pageSize && pages[i+n] == pages[i]+uint64(n)*pageSize {
			n++
		}
		b := buf[:n*pageSize]
		if err := g.cfg.Memory.ReadAt(b, pages[i]); err != nil {
			return [32]byte{}, err
		}
		h.Write(b)
		i += n
	}
	var d [32]byte
	h.Sum(d[:0])
	return d, nil
}

func (g *Guard) digestRange(r Range) ([32]byte, error) {
	h := sha256.New()
	buf := make([]byte, 64<<10)
	for off := uint64(0); off < r.Size; {
		n := min(uint64(len(buf)), r.Size-off)
		if err := g.cfg.Memory.ReadAt(buf[:n], r.GPA+off); err != nil {
			return [32]byte{}, err
		}
		h.Write(buf[:n])
		off += n
	}
	var d [32]byte
	h.Sum(d[:0])
	return d, nil
}

// measureRegion measures r and logs it. g.mu is held.
func (g *Guard) measureRegion(r *region, trigger string) (Measurement, error) {
	d, err := g.digestPages(r.pages)
	if err != nil {
		return Measurement{}, fmt.Errorf("measure region %d: %w", r.id, err)
	}
	m := Measurement{Time: g.now(), Region: r.id, Digest: d, Trigger: trigger}
	if r.last != nil && r.last.Digest != d {
		m.Changed = true
		m.Unexpected = r.writes == r.measuredWrites
	}
	r.measuredWrites = r.writes
	r.last = &m
	if m.Unexpected {
		r.unexpected++
		r.violations++
		g.violations++
		g.log.Warn("memguard: violation: region changed without an owner write", "region", r.id, "mode", r.mode, "trigger", trigger)
	}
	g.appendLog(m)
	return m, nil
}

func (g *Guard) appendLog(m Measurement) {
	if len(g.mlog) >= g.cfg.LogSize {
		copy(g.mlog, g.mlog[1:])
		g.mlog = g.mlog[:len(g.mlog)-1]
	}
	g.mlog = append(g.mlog, m)
}

// measureFor serves OpMeasure: only the owner may ask.
func (g *Guard) measureFor(ctx VCPUContext, id uint64) ([32]byte, error) {
	if err := callerOK(ctx); err != nil {
		return [32]byte{}, fmt.Errorf("measure: %w", err)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	r, ok := g.regions[id]
	if !ok {
		return [32]byte{}, fmt.Errorf("measure %d: %w", id, ENOENT)
	}
	if r.owner != ctx.owner() {
		return [32]byte{}, fmt.Errorf("measure %d: %w", id, EPERM)
	}
	m, err := g.measureRegion(r, "guest")
	if err != nil {
		return [32]byte{}, fmt.Errorf("%w: %w", err, EFAULT)
	}
	return m.Digest, nil
}

// ErrNoRegion is returned for an unknown region id.
var ErrNoRegion = errors.New("no such region")

// MeasureRegion measures one region now.
func (g *Guard) MeasureRegion(id uint64, trigger string) (Measurement, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	r, ok := g.regions[id]
	if !ok {
		return Measurement{}, fmt.Errorf("memguard: measure region %d: %w", id, ErrNoRegion)
	}
	return g.measureRegion(r, trigger)
}

// MeasureAll measures every region and boot-time range, logs each and
// returns the new entries. Each region is measured under the lock on its
// own, so owner accesses wait for one region at most.
func (g *Guard) MeasureAll(trigger string) ([]Measurement, error) {
	g.mu.Lock()
	regions := g.regionsInOrder()
	ranges := append([]*measuredRange(nil), g.ranges...)
	g.mu.Unlock()
	var out []Measurement
	var errs []error
	for _, r := range regions {
		g.mu.Lock()
		if g.regions[r.id] == r {
			m, err := g.measureRegion(r, trigger)
			if err != nil {
				errs = append(errs, err)
			} else {
				out = append(out, m)
			}
		}
		g.mu.Unlock()
	}
	for _, mr := range ranges {
		d, err := g.digestRange(mr.r)
		if err != nil {
			errs = append(errs, fmt.Errorf("measure range %q: %w", mr.name, err))
			continue
		}
		g.mu.Lock()
		m := Measurement{Time: g.now(), Range: mr.name, Digest: d, Trigger: trigger}
		m.Changed = mr.last != nil && mr.last.Digest != d
		mr.last = &m
		g.appendLog(m)
		g.mu.Unlock()
		out = append(out, m)
	}
	if len(errs) > 0 {
		return out, fmt.Errorf("memguard: measure: %w", errors.Join(errs...))
	}
	return out, nil
}

// Log returns a copy of the measurement log, oldest first.
func (g *Guard) Log() []Measurement {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]Measurement(nil), g.mlog...)
}

// Run checks owners and measures everything every interval until ctx ends.
// layoutChanged is called (outside any lock) after owners were released,
// so the VMM applies Slots(); it may be nil.
func (g *Guard) Run(ctx context.Context, every time.Duration, layoutChanged func()) error {
	if every <= 0 {
		return fmt.Errorf("memguard: run: interval %v: %w", every, EINVAL)
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		if g.CheckOwners() > 0 && layoutChanged != nil {
			layoutChanged()
		}
		if _, err := g.MeasureAll("periodic"); err != nil {
			g.log.Warn("memguard: periodic measurement", "err", err)
		}
	}
}

// inRAM reports whether [gpa, gpa+size) lies inside one RAM range.
func (g *Guard) inRAM(gpa, size uint64) bool {
	for _, r := range g.cfg.RAM {
		if r.contains(gpa, size) {
			return true
		}
	}
	return false
}
