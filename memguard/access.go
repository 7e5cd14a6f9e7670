package memguard

import (
	"fmt"
	"sort"
)

// AccessResult is the outcome of HandleAccess.
type AccessResult struct {
	// Handled says the address is protected and the access is done:
	// data holds what a read returns (zeros when refused).
	Handled bool
	// Violation says the access was refused.
	Violation bool
	// LayoutChanged says the access showed the owner gone: its region
	// was wiped and released, the access done on the now ordinary page,
	// and the VMM must apply Slots() before the vCPU runs again.
	LayoutChanged bool
	// InjectFault asks the VMM to inject #GP(0) into the vCPU instead of
	// resuming it as if the access had succeeded (Config.InjectFaults).
	InjectFault bool
}

// HandleAccess serves an MMIO exit at gpa (KVM_EXIT_MMIO: a read of a
// confidential page, or a write to any protected page). It returns
// Handled false for addresses that are not protected, which the VMM
// dispatches as before. The owner, in user mode, has its access completed
// on the backing page (writes marked dirty through Memory.WriteAt); anyone
// else reads zeros and has its writes dropped, and the violation is
// counted and logged. data is at most 8 bytes in practice (KVM splits
// larger accesses); any length is handled page by page.
func (g *Guard) HandleAccess(ctx VCPUContext, gpa uint64, data []byte, write bool) AccessResult {
	if len(data) == 0 || g.npages.Load() == 0 {
		return AccessResult{}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.anyProtectedLocked(gpa, uint64(len(data))) {
		return AccessResult{}
	}
	res := AccessResult{Handled: true}
	for off := 0; off < len(data); {
		a := gpa + uint64(off)
		if a < gpa {
			break // wrapped: the rest is not protected
		}
		page := a &^ (pageSize - 1)
		n := int(min(uint64(len(data)-off), page+pageSize-a))
		chunk := data[off : off+n]
		off += n
		r, ok := g.byPage[page]
		if !ok {
			// Ordinary RAM beside a protected page (KVM splits
			// accesses at page boundaries, so only a VMM caller
			// gets here).
			g.plainAccess(chunk, a, write)
			continue
		}
		if r.mode == Integrity && !write {
			// Anyone may read an integrity region; its read-only
			// slot normally keeps such reads in the guest.
			g.plainAccess(chunk, a, false)
			continue
		}
		owner := ctx.CPL == 3 && ctx.longMode() && ctx.owner() == r.owner
		if owner {
			var err error
			if write {
				err = g.cfg.Memory.WriteAt(chunk, a)
				r.writes++
			} else {
				err = g.cfg.Memory.ReadAt(chunk, a)
			}
			if err == nil {
				continue
			}
			g.log.Error("memguard: owner access failed", "id", r.id, "gpa", fmt.Sprintf("%#x", a), "err", err)
		}
		if !owner && !g.aliveAt(r, page) {
			// The kernel reuses the page of an owner that is gone:
			// wipe and release before its access, which then
			// proceeds on ordinary memory.
			g.log.Warn("memguard: owner gone", "id", r.id, "owner", fmt.Sprintf("%#x", r.owner), "gpa", fmt.Sprintf("%#x", a))
			g.release(r, "owner gone (found at an access)")
			res.LayoutChanged = true
			g.plainAccess(chunk, a, write)
			continue
		}
		if !write {
			clear(chunk)
		}
		r.violations++
		g.violations++
		res.Violation = true
		if r.violations <= 16 || r.violations%1024 == 0 {
			g.log.Warn("memguard: violation", "region", r.id, "mode", r.mode, "vcpu", ctx.VCPU,
				"gpa", fmt.Sprintf("%#x", a), "write", write, "len", n,
				"rip", fmt.Sprintf("%#x", ctx.RIP), "cr3", fmt.Sprintf("%#x", ctx.CR3), "cpl", ctx.CPL,
				"count", r.violations)
		}
	}
	if res.Violation {
		res.InjectFault = g.cfg.InjectFaults
	}
	return res
}

// plainAccess reads or writes unprotected guest memory; a failed read
// returns zeros.
func (g *Guard) plainAccess(b []byte, gpa uint64, write bool) {
	if write {
		_ = g.cfg.Memory.WriteAt(b, gpa)
		return
	}
	if g.cfg.Memory.ReadAt(b, gpa) != nil {
		clear(b)
	}
}

// anyProtectedLocked is Protected with g.mu held.
func (g *Guard) anyProtectedLocked(gpa, n uint64) bool {
	if n == 0 {
		return false
	}
	first := gpa &^ (pageSize - 1)
	last := gpa + n - 1
	if last < gpa {
		last = ^uint64(0)
	}
	i := sort.Search(len(g.sorted), func(i int) bool { return g.sorted[i] >= first })
	return i < len(g.sorted) && g.sorted[i] <= last
}
