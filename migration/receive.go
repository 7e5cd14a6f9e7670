package migration

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"sync/atomic"
	"time"

	"github.com/gvmm/gvmm/migration/stream"
)

// ReceiveOptions configure Receive; the zero value is usable.
type ReceiveOptions struct {
	// CheckCPU, when set, is given the source's Options.CPU before any
	// page is accepted; its error fails the migration (wrapped in
	// stream.ErrCPU) and the source keeps running.
	CheckCPU func(cpu []byte) error
	// Prepare, when set, builds the destination from the source's CPU
	// record (after CheckCPU, if any, accepted it), before any page is
	// accepted: a destination that learns the machine to build from the
	// source passes a nil dst to Receive and sets Prepare. Its error fails
	// the migration like CheckCPU's. A destination Prepare built is to be
	// discarded when Receive fails.
	Prepare func(cpu []byte) (Destination, error)
	// Limits bound what the stream may declare (zero: the stream's
	// defaults). Guest memory is bounded by the destination's own layout
	// in any case.
	Limits stream.Limits
	// Logger receives debug events; nil discards them.
	Logger *slog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Result is what a successful Receive delivered and how long it took.
type Result struct {
	// Components are the restored components, in the order they arrived.
	Components []Component
	// CPU is the source's CPU record (Options.CPU).
	CPU []byte
	// Stream holds the stream's counters (pages, zero pages, wire bytes).
	Stream stream.Stats
	// Transfer is from the first connection to the verified manifest.
	Transfer time.Duration
	// Restore is Destination.RestoreState's duration (part of the source's
	// Stats.AckWait, hence of its downtime).
	Restore time.Duration
	// Total is Receive's duration.
	Total time.Duration
}

// Receive accepts one migration's connections from ln, writes its pages
// into dst's regions, and, once the whole stream verified, restores the
// state and acknowledges the migration to the source. Only a nil error
// means dst holds the migrated machine: the caller may then start its
// vCPUs. On any error dst's memory and state are undefined and must be
// discarded; the source has not been acknowledged and keeps the guest.
// Receive closes the connections it accepted before it returns.
//
// dst is the machine to receive into; it is nil when opts.Prepare builds
// it from the source's CPU record instead.
func Receive(ctx context.Context, ln net.Listener, key []byte, dst Destination, opts ReceiveOptions) (Result, error) {
	start := now(opts.Now)
	if (dst == nil) == (opts.Prepare == nil) {
		return Result{}, errors.New("receive migration: give either a destination or ReceiveOptions.Prepare")
	}
	rm := &regionMemory{}
	if dst != nil {
		if err := rm.setDest(dst); err != nil {
			return Result{}, fmt.Errorf("receive migration: %w", err)
		}
	}
	r, conns, err := stream.Accept(ctx, ln, key, rm, rm.streamOptions(opts))
	if err != nil {
		return Result{}, fmt.Errorf("receive migration: %w", err)
	}
	defer closeAll(conns)
	return receive(ctx, r, conns[0], rm, opts, start)
}

func receive(ctx context.Context, r *stream.Receiver, ack net.Conn, rm *regionMemory, opts ReceiveOptions, start time.Time) (Result, error) {
	clock := opts.Now
	res, err := r.Run(ctx)
	if err != nil {
		return Result{}, fmt.Errorf("receive migration: %w", err)
	}
	t1 := now(clock)
	comps := make([]Component, len(res.States))
	for i, s := range res.States {
		comps[i] = Component{ID: s.ID, Data: s.Data}
	}
	if err := rm.dst.RestoreState(ctx, comps); err != nil {
		return Result{}, fmt.Errorf("receive migration: restore state: %w", err)
	}
	t2 := now(clock)
	if err := r.Acknowledge(ctx, ack); err != nil {
		return Result{}, fmt.Errorf("receive migration: %w", err)
	}
	if opts.Logger != nil {
		opts.Logger.Debug("receive timing", "transfer", t1.Sub(start), "restore", t2.Sub(t1), "ack", now(clock).Sub(t2))
	}
	return Result{
		Components: comps, CPU: rm.cpu, Stream: res.Stats,
		Transfer: t1.Sub(start), Restore: t2.Sub(t1), Total: now(clock).Sub(start),
	}, nil
}

func now(clock func() time.Time) time.Time {
	if clock == nil {
		return time.Now()
	}
	return clock()
}

func closeAll(conns []net.Conn) {
	for _, c := range conns {
		_ = c.Close()
	}
}

// regionMemory is the stream.Memory over a destination's regions. Its
// destination is set before the stream starts, or by the handshake check
// (with Prepare), which runs before any page is accepted on any connection.
type regionMemory struct {
	dst Destination
	lay layout
	cpu []byte // the caller's part of the handshake, once checked
	// written has a bit per page of each region (lay.regions' order)
	// that this stream wrote, when the destination's memory started
	// zero (ZeroedDestination): only those need zeroing. Nil otherwise.
	written [][]atomic.Uint64
}

func (m *regionMemory) setDest(dst Destination) error {
	if dst == nil {
		return errors.New("prepare returned no destination")
	}
	regs := dst.Regions()
	if len(regs) > maxRegions {
		return fmt.Errorf("%w: %d regions (limit %d)", ErrLayout, len(regs), maxRegions)
	}
	lay, err := checkRegions(regs)
	if err != nil {
		return err
	}
	m.dst, m.lay = dst, lay
	if z, ok := dst.(ZeroedDestination); ok && z.MemoryIsZero() {
		m.written = make([][]atomic.Uint64, len(lay.regions))
		for i, r := range lay.regions {
			m.written[i] = make([]atomic.Uint64, (len(r.Data)/PageSize+63)/64)
		}
	}
	return nil
}

func (m *regionMemory) streamOptions(opts ReceiveOptions) stream.ReceiverOptions {
	lim := opts.Limits
	if m.dst != nil && (lim.MaxGuestMemory == 0 || lim.MaxGuestMemory > m.lay.size) {
		lim.MaxGuestMemory = m.lay.size
	}
	return stream.ReceiverOptions{
		Limits: lim, Logger: opts.Logger, Now: opts.Now,
		// Always set: the handshake (the layout) is checked even when the
		// caller checks no CPU.
		CheckCPU: func(b []byte) error {
			spans, cpu, err := decodeHandshake(b)
			if err != nil {
				return err
			}
			if opts.CheckCPU != nil {
				if err := opts.CheckCPU(cpu); err != nil {
					return err
				}
			}
			if opts.Prepare != nil {
				d, err := opts.Prepare(cpu)
				if err != nil {
					return fmt.Errorf("prepare destination: %w", err)
				}
				if err := m.setDest(d); err != nil {
					return fmt.Errorf("prepare destination: %w", err)
				}
			}
			if err := checkLayout(spans, m.lay); err != nil {
				return err
			}
			m.cpu = append([]byte(nil), cpu...)
			return nil
		},
	}
}

// find returns the index of the region holding gpa and gpa's offset in it.
func (m *regionMemory) find(gpa uint64) (int, uint64, error) {
	rs := m.lay.regions
	i := sort.Search(len(rs), func(i int) bool { return rs[i].GPA+uint64(len(rs[i].Data)) > gpa })
	if i == len(rs) || gpa < rs[i].GPA {
		return 0, 0, fmt.Errorf("%w: page %#x is in no region", ErrLayout, gpa)
	}
	return i, gpa - rs[i].GPA, nil
}

// WritePage implements stream.Memory.
func (m *regionMemory) WritePage(gpa uint64, data []byte) error {
	i, off, err := m.find(gpa)
	if err != nil {
		return err
	}
	if m.written != nil {
		p := off / PageSize
		m.written[i][p/64].Or(1 << (p % 64))
	}
	copy(m.lay.regions[i].Data[off:off+PageSize], data)
	return nil
}

// zeroWritten zeroes the pages of region i's n pages from page p that
// this stream wrote: the others still read as zero.
func (m *regionMemory) zeroWritten(i int, p, n uint64) {
	data, bits := m.lay.regions[i].Data, m.written[i]
	for end := p + n; p < end; {
		w := bits[p/64].Load() >> (p % 64)
		if w == 0 {
			p += 64 - p%64 // no page written up to the word's end
			continue
		}
		if w&1 != 0 {
			clear(data[p*PageSize : (p+1)*PageSize])
		}
		p++
	}
}

// ZeroPages implements stream.PageZeroer; a run may span adjacent regions.
func (m *regionMemory) ZeroPages(gpa, pages uint64) error {
	for pages > 0 {
		i, off, err := m.find(gpa)
		if err != nil {
			return err
		}
		r := m.lay.regions[i]
		n := min(pages, (uint64(len(r.Data))-off)/PageSize)
		if m.written != nil {
			m.zeroWritten(i, off/PageSize, n)
		} else {
			clear(r.Data[off : off+n*PageSize])
		}
		gpa += n * PageSize
		pages -= n
	}
	return nil
}
