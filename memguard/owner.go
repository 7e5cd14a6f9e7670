package memguard

import (
	"errors"
	"fmt"
	"sort"
)

// CheckOwners re-walks every region's owner page tables and releases
// (wipes, then unprotects) each region whose owner is gone. It returns how
// many were released; when that is not zero the VMM must apply Slots().
// Call it periodically, and after violations and refusals.
//
// The owner counts as alive only if, for every page of the region, the
// walk from the recorded top-level table still reaches, through the same
// last-level table page, a present user page at the bound GPA. When a
// process exits, Linux frees its page tables and its pages: a freed table
// reused for anything else (another process's table included) no longer
// leads to the same table pages and frames unless every one of them was
// reused in the same place. A page-table read that leaves RAM also counts
// as death. Writable is not required: the kernel may write-protect a live
// owner's page for a while.
func (g *Guard) CheckOwners() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	released := 0
	for _, r := range g.regionsInOrder() {
		if err := g.alive(r); err != nil {
			g.log.Warn("memguard: owner gone", "id", r.id, "owner", fmt.Sprintf("%#x", r.owner), "err", err)
			g.release(r, "owner gone: "+err.Error())
			released++
		}
	}
	return released
}

var errMoved = errors.New("mapping changed")

// alive checks one region's binding.
func (g *Guard) alive(r *region) error {
	for i, p := range r.pages {
		va := r.va + uint64(i)*pageSize
		t, err := Walk(g.cfg.Memory, r.owner, r.la57, va)
		if err != nil {
			return err
		}
		if !t.User {
			return fmt.Errorf("page %#x: %w", va, ErrNotUser)
		}
		if t.GPA&^(pageSize-1) != p || t.Tables[t.Levels-1] != r.path[i] {
			return fmt.Errorf("page %#x: %w", va, errMoved)
		}
	}
	return nil
}

func (g *Guard) regionsInOrder() []*region {
	out := make([]*region, 0, len(g.regions))
	for _, r := range g.regions {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].id < out[j].id })
	return out
}

// aliveAt checks the binding of the one page of r at gpa: the cheap check
// made when someone other than the owner touches it.
func (g *Guard) aliveAt(r *region, gpa uint64) bool {
	for i, p := range r.pages {
		if p != gpa {
			continue
		}
		va := r.va + uint64(i)*pageSize
		t, err := Walk(g.cfg.Memory, r.owner, r.la57, va)
		return err == nil && t.User && t.GPA&^(pageSize-1) == p && t.Tables[t.Levels-1] == r.path[i]
	}
	return false
}
