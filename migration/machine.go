package migration

import (
	"context"
	"errors"
	"fmt"
	"math/bits"
	"slices"
)

// PageSize is the granularity of dirty tracking and of every region's
// address and length.
const PageSize = 4096

// Region is one range of guest RAM: its guest-physical address and the host
// mapping of its bytes. GPA and len(Data) are multiples of PageSize; the
// regions of one machine do not overlap.
type Region struct {
	GPA  uint64
	Data []byte
}

// Component is one piece of saved machine state (a vCPU, a device, a VM-wide
// chip) under a stable id such as "vcpu/0" or "virtio-blk/1": letters,
// digits and / - _ . : only, at most 128 bytes, unique within a machine.
// Data is opaque to this package family.
type Component struct {
	ID   string
	Data []byte
}

// Source is a running machine being migrated out. Migrate calls its methods
// from one goroutine, in this order:
//
//	Regions                               (once, at the start)
//	StartDirtyLog
//	TakeDirty, Throttle ...               (while the guest runs: pre-copy)
//	Pause, TakeDirty, SaveState           (the blackout)
//	Throttle(0), StopDirtyLog             (always, once StartDirtyLog succeeded)
//	Resume                                (only on failure, and only if Pause was called)
//
// On success Migrate returns with the source still paused: the caller stops
// it (the destination runs the guest from then on).
type Source interface {
	// Regions returns guest RAM. The slice and the mappings must stay valid
	// and keep their layout for the whole migration; the guest keeps
	// writing through them while pre-copy reads them.
	Regions() []Region
	// StartDirtyLog begins tracking writes to guest RAM: the vCPUs' (KVM's
	// dirty log) and the VMM's own (virtio rings, disk reads into guest
	// memory), OR-ed together. A write the log misses is silent corruption
	// on the destination.
	StartDirtyLog() error
	// TakeDirty returns, for each region in the order of Regions, a bitmap
	// of the pages written since the previous call (or since
	// StartDirtyLog), and clears it. Bitmap i has exactly
	// ceil(len(Regions()[i].Data)/PageSize/64) words; bit b (least
	// significant first) of word w stands for the page at
	// Regions()[i].GPA + (64*w+b)*PageSize, the layout of
	// KVM_GET_DIRTY_LOG on amd64. Bits past the region's last page must be
	// zero. A write racing with the call must show up in this result or
	// in the next one, never in neither. Migrate does not keep the slices
	// past the next call.
	TakeDirty() ([][]uint64, error)
	// StopDirtyLog ends tracking.
	StopDirtyLog() error
	// Pause parks every vCPU and quiesces every device (no more writes to
	// guest RAM, no more I/O in flight) and returns when both are done.
	Pause(ctx context.Context) error
	// Resume undoes Pause: the guest runs again on the source. Migrate calls
	// it when the migration fails after Pause was called, also when Pause
	// itself returned an error: Resume must then undo whatever part of
	// Pause took effect, and be harmless on a machine already running
	// (a Pause that rolled itself back). Migrate gives it a context of its
	// own (30 s) even when the migration's context is what ended.
	Resume(ctx context.Context) error
	// SaveState returns the state of every vCPU and device. Called only
	// while paused.
	SaveState(ctx context.Context) ([]Component, error)
	// Throttle takes percent (0 to 99) of every vCPU's time away so that a
	// guest dirtying memory faster than the link can carry it converges
	// (auto-converge); 0 ends throttling.
	Throttle(percent int)
}

// Destination is a machine built to receive a migration: its RAM laid out
// as the source's, its vCPUs not yet run.
type Destination interface {
	// Regions returns the guest RAM the pages are written into; it must
	// have the source's layout exactly (same addresses and sizes).
	Regions() []Region
	// RestoreState loads the components the source saved. Receive calls it
	// only after the whole stream verified, and acknowledges the migration
	// to the source only after it succeeded. The vCPUs are started by the
	// caller after Receive returned success, never before.
	RestoreState(ctx context.Context, comps []Component) error
}

// ZeroedDestination is a Destination whose regions read as zero until
// Receive writes them (fresh anonymous memory that nothing else wrote).
// Receive then skips zeroing the pages it has not written, so an idle
// guest's zero pages are never touched, hence never allocated, on the
// destination host.
type ZeroedDestination interface {
	Destination
	MemoryIsZero() bool
}

// Errors that name a broken contract of this package's interfaces or a
// migration that could not finish.
var (
	// ErrLayout: the regions are malformed or the source's and the
	// destination's differ.
	ErrLayout = errors.New("guest memory layout")
	// ErrDirtyBitmap: TakeDirty returned a bitmap of the wrong shape.
	ErrDirtyBitmap = errors.New("dirty bitmap does not match the regions")
	// ErrNoConvergence: the guest kept dirtying memory faster than the
	// link carried it, up to Options.MaxPasses passes.
	ErrNoConvergence = errors.New("migration does not converge")
	// ErrTimeout: Options.Timeout passed before the destination
	// acknowledged.
	ErrTimeout = errors.New("migration timed out")
	// ErrDestinationClosed: the destination closed or reset a connection
	// before it acknowledged. It says no more than that (a source cannot
	// authenticate a destination that refused its stream): the reason, a
	// different key, an incompatible CPU or a failure there, is in the
	// destination's error.
	ErrDestinationClosed = errors.New("the destination closed the connection (its own error says why: a different key, an incompatible CPU, or a failure there)")
)

// layout is a checked copy of a machine's regions, sorted by address.
type layout struct {
	regions []Region
	size    uint64 // end of the highest region
	pages   uint64 // pages in all regions
}

// checkRegions validates regs and returns them sorted by address.
func checkRegions(regs []Region) (layout, error) {
	if len(regs) == 0 {
		return layout{}, fmt.Errorf("%w: no regions", ErrLayout)
	}
	l := layout{regions: slices.Clone(regs)}
	slices.SortFunc(l.regions, func(a, b Region) int {
		switch {
		case a.GPA < b.GPA:
			return -1
		case a.GPA > b.GPA:
			return 1
		}
		return 0
	})
	var end uint64
	for i, r := range l.regions {
		n := uint64(len(r.Data))
		if r.GPA%PageSize != 0 || n%PageSize != 0 || n == 0 {
			return layout{}, fmt.Errorf("%w: region at %#x of %d bytes is not page-aligned or empty", ErrLayout, r.GPA, n)
		}
		if r.GPA+n < r.GPA {
			return layout{}, fmt.Errorf("%w: region at %#x of %d bytes wraps", ErrLayout, r.GPA, n)
		}
		if i > 0 && r.GPA < end {
			return layout{}, fmt.Errorf("%w: region at %#x overlaps the one before", ErrLayout, r.GPA)
		}
		end = r.GPA + n
		l.pages += n / PageSize
	}
	l.size = end
	return l, nil
}

// bitmapWords is the number of words in a region's dirty bitmap.
func bitmapWords(r Region) int { return (len(r.Data)/PageSize + 63) / 64 }

// countDirty checks the shape of maps against regs (in Regions() order) and
// returns the number of dirty pages.
func countDirty(regs []Region, maps [][]uint64) (uint64, error) {
	if len(maps) != len(regs) {
		return 0, fmt.Errorf("%w: %d bitmaps for %d regions", ErrDirtyBitmap, len(maps), len(regs))
	}
	var n uint64
	for i, r := range regs {
		m := maps[i]
		if len(m) != bitmapWords(r) {
			return 0, fmt.Errorf("%w: region %d (%#x) has a bitmap of %d words, want %d", ErrDirtyBitmap, i, r.GPA, len(m), bitmapWords(r))
		}
		if rem := (len(r.Data) / PageSize) % 64; rem != 0 && m[len(m)-1]>>rem != 0 {
			return 0, fmt.Errorf("%w: region %d (%#x) has bits past its last page", ErrDirtyBitmap, i, r.GPA)
		}
		for _, w := range m {
			n += uint64(bits.OnesCount64(w))
		}
	}
	return n, nil
}
