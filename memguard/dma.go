package memguard

import (
	"errors"
	"fmt"
)

// DeviceMemory is guest RAM as the VMM's emulated devices see it (the
// method set of virtio.GuestMemory, which *vmm.Memory satisfies).
type DeviceMemory interface {
	Slice(gpa, n uint64) ([]byte, error)
	WriteAt(p []byte, gpa uint64) error
	MarkDirty(gpa, n uint64)
}

// ErrProtectedDMA is returned to a device that reaches a protected page.
var ErrProtectedDMA = errors.New("device access to protected memory")

// DMA returns mem with every range that touches a protected page refused,
// for the VMM to hand its emulated devices instead of mem: without it a
// guest kernel can have a device read a confidential page (a disk write
// from it) or write any protected page (a disk read into it). A refusal
// counts as a violation. The check is made when the device takes its
// view; a region registered while a device holds a view of the same pages
// is not covered until the device's next access.
func (g *Guard) DMA(mem DeviceMemory) DeviceMemory { return &dmaGuard{g: g, mem: mem} }

type dmaGuard struct {
	g   *Guard
	mem DeviceMemory
}

func (d *dmaGuard) refuse(op string, gpa, n uint64) error {
	if !d.g.Protected(gpa, n) {
		return nil
	}
	d.g.mu.Lock()
	d.g.violations++
	v := d.g.violations
	d.g.mu.Unlock()
	if v <= 64 || v%1024 == 0 {
		d.g.log.Warn("memguard: violation: device access", "op", op, "gpa", fmt.Sprintf("%#x", gpa), "len", n)
	}
	return fmt.Errorf("memguard: device %s [%#x,+%#x): %w", op, gpa, n, ErrProtectedDMA)
}

func (d *dmaGuard) Slice(gpa, n uint64) ([]byte, error) {
	if err := d.refuse("access", gpa, n); err != nil {
		return nil, err
	}
	return d.mem.Slice(gpa, n)
}

func (d *dmaGuard) WriteAt(p []byte, gpa uint64) error {
	if err := d.refuse("write", gpa, uint64(len(p))); err != nil {
		return err
	}
	return d.mem.WriteAt(p, gpa)
}

func (d *dmaGuard) MarkDirty(gpa, n uint64) { d.mem.MarkDirty(gpa, n) }
