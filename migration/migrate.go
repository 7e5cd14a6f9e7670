package migration

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/bits"
	"net"
	"syscall"
	"time"

	"github.com/gvmm/gvmm/migration/stream"
)

// Options configure Migrate. The zero value is usable: every zero field
// takes the default named beside it.
type Options struct {
	// MaxDowntime is the blackout budget: Migrate pauses the source once
	// the dirty pages left, at the measured bandwidth, are estimated to
	// take no longer than this (default 300 ms).
	MaxDowntime time.Duration
	// Timeout bounds the whole migration, blackout and acknowledgement
	// included (default 10 minutes). When it passes, Migrate cancels the
	// stream, leaves the source running and returns ErrTimeout.
	Timeout time.Duration
	// MaxPasses bounds the dirty passes after the first full pass
	// (default 64); a guest still not within MaxDowntime after them fails
	// with ErrNoConvergence and keeps running on the source.
	MaxPasses int
	// Auto-converge: after two passes in a row that did not halve the
	// dirty set, Throttle(ThrottleStart) (default 20), then ThrottleStep
	// more (default 10) after each further such pass, up to ThrottleMax
	// (default 99). NoThrottle turns auto-converge off.
	ThrottleStart int
	ThrottleStep  int
	ThrottleMax   int
	NoThrottle    bool
	// CPU is the source's CPU compatibility record (the caller's encoding),
	// checked by the destination's ReceiveOptions.CheckCPU before it
	// accepts a page.
	CPU []byte
	// Workers, Compression and BatchPages tune the stream (see
	// stream.Options); zero values take the stream's defaults.
	Workers     int
	Compression stream.Compression
	BatchPages  int
	// Progress, when set, is called on Migrate's goroutine after every pass
	// and at switchover; it must return quickly.
	Progress func(Progress)
	// Logger receives one line per pass at debug level; nil discards.
	Logger *slog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
}

func (o *Options) defaults() {
	if o.MaxDowntime <= 0 {
		o.MaxDowntime = 300 * time.Millisecond
	}
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Minute
	}
	if o.MaxPasses <= 0 {
		o.MaxPasses = 64
	}
	if o.ThrottleStart <= 0 {
		o.ThrottleStart = 20
	}
	if o.ThrottleStep <= 0 {
		o.ThrottleStep = 10
	}
	if o.ThrottleMax <= 0 || o.ThrottleMax > 99 {
		o.ThrottleMax = 99
	}
	o.ThrottleStart = min(o.ThrottleStart, o.ThrottleMax)
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// Phase is where a migration is.
type Phase int

const (
	// PhaseFull: the first pass, every page.
	PhaseFull Phase = iota
	// PhaseDirty: a pass over the pages dirtied during the previous one.
	PhaseDirty
	// PhaseSwitchover: the source is paused; last pages, state, ack.
	PhaseSwitchover
	// PhaseDone: the destination acknowledged.
	PhaseDone
)

func (p Phase) String() string {
	switch p {
	case PhaseFull:
		return "full"
	case PhaseDirty:
		return "dirty"
	case PhaseSwitchover:
		return "switchover"
	case PhaseDone:
		return "done"
	}
	return fmt.Sprintf("phase-%d", int(p))
}

// Progress is one report to Options.Progress.
type Progress struct {
	Phase Phase
	// Pass is the pass just ended (0 is the full pass).
	Pass int
	// GuestPages is the number of pages of guest RAM.
	GuestPages uint64
	// PagesSent counts pages sent so far, zero pages included; a page
	// sent in several passes counts each time.
	PagesSent uint64
	// Dirty is the number of pages dirtied during the pass, still to send.
	Dirty uint64
	// Bandwidth is the measured wire bandwidth in bytes per second.
	Bandwidth float64
	// EstimatedDowntime is Dirty's estimated transfer time.
	EstimatedDowntime time.Duration
	// Throttle is the current auto-converge throttle in percent.
	Throttle int
	// WireBytes is the bytes written on all connections so far.
	WireBytes uint64
	// Elapsed is the time since Migrate started.
	Elapsed time.Duration
}

// Stats describe a migration, also a failed one (as far as it got).
type Stats struct {
	Total time.Duration // Migrate's duration
	// Downtime is the source-side blackout: from the call to Pause to the
	// verified acknowledgement. It is the sum of the parts below. The
	// guest runs again once the destination's caller starts its vCPUs,
	// after Receive returned (Result.Restore is part of AckWait).
	Downtime time.Duration
	Pause    time.Duration // Source.Pause
	// FinalPass is the last TakeDirty and the encoding of those pages,
	// after StateSave; bytes still in the connections' queues then are
	// counted in StateSend.
	FinalPass time.Duration
	StateSave time.Duration // Source.SaveState
	StateSend time.Duration // sending the components, draining the queues, manifest
	// AckWait is the wait for the acknowledgement: the destination's
	// verification of the manifest and its RestoreState (measured there
	// as Result.Restore), plus one trip across the link. The ack is read
	// as it arrives; a fast destination's restore can overlap the end of
	// StateSend.
	AckWait time.Duration
	// Resume is how long Source.Resume took after a failure (zero on
	// success: the source is not resumed).
	Resume time.Duration

	// CatchUp is the time pre-copy waited, the guest still running, for
	// the destination to apply what was sent (see migrator.catchUp).
	CatchUp time.Duration

	Passes          int    // passes, the full one included
	FinalDirty      uint64 // pages sent during the blackout
	Throttle        int    // highest throttle reached, percent
	Bandwidth       float64
	WireBytes       uint64 // every byte written on the connections
	Pages           uint64 // non-zero pages sent (each time)
	ZeroPages       uint64 // zero pages sent as runs
	CompressedPages uint64 // pages that travelled zstd-compressed
	Components      int
	StateBytes      uint64
}

// Migrate migrates src over conns (1 to stream.MaxConnections connections
// to one Receive) with the 32-byte key, and returns once the destination
// acknowledged a verified stream and restored the state: the caller then
// stops the source, which is left paused. On any error the migration is
// cancelled, throttling and dirty logging are stopped, the source is
// resumed if it had been paused, and the error says what failed
// (errors.Is works with ErrTimeout, ErrNoConvergence, ErrLayout,
// context.Canceled and the stream package's errors). Migrate closes conns
// before it returns, so the destination sees an aborted stream at once.
func Migrate(ctx context.Context, src Source, conns []net.Conn, key []byte, opts Options) (Stats, error) {
	opts.defaults()
	m := &migrator{src: src, conns: conns, opts: opts, log: opts.Logger, now: opts.Now, start: opts.Now(), perPage: PageSize}
	defer m.closeConns()
	ctx, cancel := context.WithTimeoutCause(ctx, opts.Timeout, ErrTimeout)
	defer cancel()
	err := m.run(ctx, key)
	if err != nil {
		if c := context.Cause(ctx); c != nil && !errors.Is(err, c) {
			err = fmt.Errorf("%w: %w", c, err)
		} else if c == nil && peerClosed(err) {
			err = fmt.Errorf("%w: %w", ErrDestinationClosed, err)
		}
		err = m.abort(ctx, err)
	}
	m.finishStats()
	if err != nil {
		return m.stats, fmt.Errorf("migrate: %w", err)
	}
	return m.stats, nil
}

// migrator is the state of one Migrate call, owned by its goroutine.
type migrator struct {
	src   Source
	conns []net.Conn
	opts  Options
	log   *slog.Logger
	now   func() time.Time
	start time.Time

	regs   []Region // in Regions() order
	lay    layout
	sender *stream.Sender

	logging  bool // StartDirtyLog succeeded
	paused   bool // Pause was called
	throttle int

	bandwidth float64 // wire bytes per second, last good measurement
	perPage   float64 // wire bytes per non-zero page, last good measurement
	pages     []stream.Page
	stats     Stats
}

func (m *migrator) run(ctx context.Context, key []byte) error {
	m.regs = m.src.Regions()
	if len(m.regs) > maxRegions {
		return fmt.Errorf("%w: %d regions (limit %d)", ErrLayout, len(m.regs), maxRegions)
	}
	lay, err := checkRegions(m.regs)
	if err != nil {
		return err
	}
	m.lay = lay
	ws := make([]io.Writer, len(m.conns))
	for i, c := range m.conns {
		ws[i] = c
	}
	m.sender, err = stream.NewSender(ws, key, stream.Options{
		GuestMemSize: lay.size, CPU: encodeHandshake(lay, m.opts.CPU),
		Workers: m.opts.Workers, Compression: m.opts.Compression, BatchPages: m.opts.BatchPages,
		Logger: m.log, Now: m.now, Progress: m.conns[0],
	})
	if err != nil {
		return err
	}
	if err := m.src.StartDirtyLog(); err != nil {
		return fmt.Errorf("start dirty log: %w", err)
	}
	m.logging = true

	// Pass 0: every page.
	t0, s0 := m.now(), m.sender.Stats()
	for _, r := range m.lay.regions {
		if err := m.sender.SendRange(ctx, r.GPA, r.Data); err != nil {
			return fmt.Errorf("pass 0: %w", err)
		}
	}
	if err := m.endPass(ctx); err != nil {
		return fmt.Errorf("pass 0: %w", err)
	}
	m.measure(t0, s0)
	m.stats.Passes = 1

	lastSent := m.lay.pages
	strikes, refined, catchUps := 0, 0, 0
	for pass := 1; ; pass++ {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("pass %d: %w", pass, err)
		}
		maps, err := m.src.TakeDirty()
		if err != nil {
			return fmt.Errorf("take dirty log: %w", err)
		}
		dirty, err := countDirty(m.regs, maps)
		if err != nil {
			return fmt.Errorf("take dirty log: %w", err)
		}
		est := m.estimate(dirty)
		phase := PhaseDirty
		if pass == 1 {
			phase = PhaseFull
		}
		m.report(phase, pass-1, dirty, est)
		m.log.Debug("migration pass", "pass", pass-1, "dirty", dirty, "estimate", est,
			"bandwidth_MBps", m.bandwidth/1e6, "throttle", m.throttle)
		if est <= m.opts.MaxDowntime {
			// It fits the budget; one more pass makes the blackout
			// shorter still while passes keep halving the dirty set.
			if switchNow(dirty, lastSent, refined) {
				waited, err := m.catchUp(ctx)
				if err != nil {
					return fmt.Errorf("pass %d: %w", pass, err)
				}
				// A long wait let the guest dirty more pages: send them
				// in one more pass rather than in the blackout.
				if waited <= m.opts.MaxDowntime/4 || catchUps >= maxCatchUps {
					return m.switchover(ctx, maps)
				}
				catchUps++
			} else {
				refined++
			}
		}
		if pass > m.opts.MaxPasses {
			return fmt.Errorf("%w: %d pages (%v at %.0f MB/s) still dirty after %d passes, throttle %d%%",
				ErrNoConvergence, dirty, est, m.bandwidth/1e6, pass-1, m.throttle)
		}
		if !m.opts.NoThrottle && dirty*2 > lastSent {
			strikes++
			next := m.throttle
			switch {
			case m.throttle == 0 && strikes >= 2:
				next = m.opts.ThrottleStart
			case m.throttle > 0:
				next = min(m.throttle+m.opts.ThrottleStep, m.opts.ThrottleMax)
			}
			if next != m.throttle {
				m.throttle = next
				m.stats.Throttle = max(m.stats.Throttle, next)
				m.src.Throttle(next)
				m.log.Debug("migration auto-converge", "throttle", next)
			}
		} else {
			strikes = 0
		}
		t, s := m.now(), m.sender.Stats()
		m.pages = appendDirty(m.pages[:0], m.regs, maps)
		if err := m.sender.SendPages(ctx, m.pages); err != nil {
			return fmt.Errorf("pass %d: %w", pass, err)
		}
		if err := m.endPass(ctx); err != nil {
			return fmt.Errorf("pass %d: %w", pass, err)
		}
		m.measure(t, s)
		m.stats.Passes++
		lastSent = dirty
	}
}

// Once a pass's dirty set fits the downtime budget, up to refinePasses
// more passes run while each at least halves it and it is above
// smallDirtyPages: on a mostly idle guest the last pass before the
// blackout then carries a few pages instead of a budget's worth.
const (
	refinePasses    = 4
	smallDirtyPages = 64
)

// maxCatchUps bounds the extra passes sent because the wait for the
// destination to catch up was long.
const maxCatchUps = 2

// catchUp waits until the destination has applied every pass sent so far,
// while the guest still runs, and returns how long it waited. Without it
// the bytes still in the sockets' buffers (megabytes on a fast link, when
// the destination decodes more slowly than the source sends) would be
// drained during the blackout.
func (m *migrator) catchUp(ctx context.Context) (time.Duration, error) {
	if !m.sender.Reports() {
		return 0, nil
	}
	t := m.now()
	if err := m.sender.WaitApplied(ctx, uint32(m.stats.Passes)); err != nil {
		return 0, err
	}
	d := m.now().Sub(t)
	m.stats.CatchUp += d
	m.log.Debug("migration caught up", "passes", m.stats.Passes, "waited", d)
	return d, nil
}

// switchNow says whether a pass that left dirty pages (of lastSent sent),
// within the budget, ends pre-copy, after refined such extra passes.
func switchNow(dirty, lastSent uint64, refined int) bool {
	return dirty <= smallDirtyPages || dirty*2 > lastSent || refined >= refinePasses
}

// endPass ends a pre-copy pass once its bytes are written: the writers'
// queues hold megabytes, and a pass timed only to the end of queueing
// overstates the bandwidth and leaves a backlog that the blackout would
// have to drain.
func (m *migrator) endPass(ctx context.Context) error {
	if _, err := m.sender.EndPass(ctx); err != nil {
		return err
	}
	return m.sender.Drain(ctx)
}

// switchover pauses the source and sends the last dirty pages (those of
// maps and those dirtied since), the state and the manifest, then waits for
// the destination's acknowledgement.
func (m *migrator) switchover(ctx context.Context, maps [][]uint64) error {
	// The source may reuse its bitmaps on the next TakeDirty.
	own := make([][]uint64, len(maps))
	for i := range maps {
		own[i] = append([]uint64(nil), maps[i]...)
	}
	maps = own
	tp := m.now()
	m.paused = true
	if err := m.src.Pause(ctx); err != nil {
		return fmt.Errorf("pause source: %w", err)
	}
	t1 := m.now()
	m.stats.Pause = t1.Sub(tp)
	// The state is saved first, with the encryption workers idle: saving
	// runs on every vCPU's own thread, and while the workers sealed the
	// last pages beside it (as it once did), on two CPUs those threads
	// waited their turn: 2 to 58 ms for the same vCPU saves in the
	// migration bench. Saving reads vCPUs and devices and writes no guest
	// page, so the dirty log taken after it is still the last word.
	comps, err := m.src.SaveState(ctx)
	if err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	t2 := m.now()
	m.stats.StateSave = t2.Sub(t1)
	last, err := m.src.TakeDirty()
	if err != nil {
		return fmt.Errorf("take dirty log after pause: %w", err)
	}
	if _, err := countDirty(m.regs, last); err != nil {
		return fmt.Errorf("take dirty log after pause: %w", err)
	}
	for i := range maps {
		for w := range maps[i] {
			maps[i][w] |= last[i][w]
		}
	}
	m.pages = appendDirty(m.pages[:0], m.regs, maps)
	m.stats.FinalDirty = uint64(len(m.pages))
	if len(m.pages) > 0 {
		if err := m.sender.SendPages(ctx, m.pages); err != nil {
			return fmt.Errorf("final pass: %w", err)
		}
		if _, err := m.sender.EndPass(ctx); err != nil {
			return fmt.Errorf("final pass: %w", err)
		}
		m.stats.Passes++
	}
	t3 := m.now()
	m.stats.FinalPass = t3.Sub(t2)
	m.report(PhaseSwitchover, m.stats.Passes-1, 0, 0)
	seen := make(map[string]bool, len(comps))
	for _, c := range comps {
		if seen[c.ID] {
			return fmt.Errorf("save state: component %q twice", c.ID)
		}
		seen[c.ID] = true
		if err := m.sender.SendState(ctx, c.ID, c.Data); err != nil {
			return err
		}
		m.stats.Components++
		m.stats.StateBytes += uint64(len(c.Data))
	}
	if _, err := m.sender.Finish(ctx); err != nil {
		return err
	}
	t4 := m.now()
	m.stats.StateSend = t4.Sub(t3)
	if err := m.sender.AwaitAck(ctx, m.conns[0]); err != nil {
		return err
	}
	t5 := m.now()
	m.stats.AckWait = t5.Sub(t4)
	m.stats.Downtime = t5.Sub(tp)
	m.log.Debug("switchover timing", "pause", m.stats.Pause, "final_pass", m.stats.FinalPass,
		"final_pages", m.stats.FinalDirty, "state_save", m.stats.StateSave, "state_send", m.stats.StateSend,
		"ack_wait", m.stats.AckWait)
	// The migration succeeded: cleanup errors are only logged, and the
	// source stays paused for the caller to stop.
	m.src.Throttle(0)
	if err := m.src.StopDirtyLog(); err != nil {
		m.log.Warn("migration: stop dirty log after success", "err", err)
	}
	m.logging = false
	m.report(PhaseDone, m.stats.Passes-1, 0, 0)
	return nil
}

// peerClosed says whether err is the far end closing or resetting a
// connection.
func peerClosed(err error) bool {
	return errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed)
}

// abort cancels the stream and gives the source back its guest.
func (m *migrator) abort(ctx context.Context, err error) error {
	if m.sender != nil {
		_ = m.sender.Close()
	}
	m.closeConns()
	if m.throttle != 0 {
		m.src.Throttle(0)
		m.throttle = 0
	}
	if m.logging {
		if serr := m.src.StopDirtyLog(); serr != nil {
			err = errors.Join(err, fmt.Errorf("stop dirty log: %w", serr))
		}
		m.logging = false
	}
	if m.paused {
		// Resume even when ctx is what failed: the guest must run again.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		t := m.now()
		rerr := m.src.Resume(rctx)
		m.stats.Resume = m.now().Sub(t)
		if rerr != nil {
			err = errors.Join(err, fmt.Errorf("resume source: %w", rerr))
		}
		m.paused = false
	}
	m.log.Debug("migration aborted", "err", err)
	return err
}

func (m *migrator) closeConns() {
	for _, c := range m.conns {
		_ = c.Close()
	}
}

func (m *migrator) finishStats() {
	m.stats.Total = m.now().Sub(m.start)
	m.stats.Bandwidth = m.bandwidth
	if m.sender == nil {
		return
	}
	s := m.sender.Stats()
	m.stats.WireBytes = s.WireBytes
	m.stats.Pages = s.Pages
	m.stats.ZeroPages = s.ZeroPages
	m.stats.CompressedPages = s.CompressedPages
}

// measure updates the bandwidth and the wire cost of a page from the pass
// that began at t with the sender's counters at s. A pass too small to
// time keeps the previous figures.
func (m *migrator) measure(t time.Time, s stream.Stats) {
	dt := m.now().Sub(t).Seconds()
	now := m.sender.Stats()
	dw := now.WireBytes - s.WireBytes
	if dt > 0 && (dw >= 256<<10 || m.bandwidth == 0) {
		m.bandwidth = float64(dw) / dt
	}
	if dp := now.Pages - s.Pages; dp >= 64 {
		m.perPage = float64(now.PageWireBytes-s.PageWireBytes) / float64(dp)
	}
}

// estimate is the time dirty pages take at the measured bandwidth.
func (m *migrator) estimate(dirty uint64) time.Duration {
	if dirty == 0 {
		return 0
	}
	if m.bandwidth <= 0 {
		return time.Duration(math.MaxInt64)
	}
	sec := float64(dirty) * m.perPage / m.bandwidth
	if sec > (time.Duration(math.MaxInt64) / time.Second).Seconds() {
		return time.Duration(math.MaxInt64)
	}
	return time.Duration(sec * float64(time.Second))
}

func (m *migrator) report(phase Phase, pass int, dirty uint64, est time.Duration) {
	if m.opts.Progress == nil {
		return
	}
	s := m.sender.Stats()
	m.opts.Progress(Progress{
		Phase: phase, Pass: pass, GuestPages: m.lay.pages,
		PagesSent: s.Pages + s.ZeroPages, Dirty: dirty,
		Bandwidth: m.bandwidth, EstimatedDowntime: est, Throttle: m.throttle,
		WireBytes: s.WireBytes, Elapsed: m.now().Sub(m.start),
	})
}

// appendDirty appends the pages that maps (in regs' order) mark dirty.
func appendDirty(pages []stream.Page, regs []Region, maps [][]uint64) []stream.Page {
	for i, r := range regs {
		for w, word := range maps[i] {
			for word != 0 {
				b := bits.TrailingZeros64(word)
				word &= word - 1
				off := (w*64 + b) * PageSize
				pages = append(pages, stream.Page{GPA: r.GPA + uint64(off), Data: r.Data[off : off+PageSize]})
			}
		}
	}
	return pages
}
