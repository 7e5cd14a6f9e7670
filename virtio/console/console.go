package console

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/gvmm/gvmm/virtio"
)

// Queue indices of port 0 (§5.3.2; no VIRTIO_CONSOLE_F_MULTIPORT, so there
// are no control queues).
const (
	ReceiveQ  = 0 // receiveq: host to guest
	TransmitQ = 1 // transmitq: guest to host
)

const (
	queueSize = 256
	// ChunkSize bounds what is held in host memory per direction: one read
	// from the host side (host to guest) and one piece of a transmit chain
	// (guest to host).
	ChunkSize = 64 << 10
)

// Options configure a device. The zero value is usable.
type Options struct {
	Log *slog.Logger
}

// Stats counts bytes through the device since New.
type Stats struct {
	// ToGuest is what the guest received (written into its receive buffers).
	ToGuest uint64
	// ToHost is what the host side accepted from the guest.
	ToHost uint64
	// Discarded is guest output that found no host side attached (or one
	// that failed while writing) and was dropped.
	Discarded uint64
}

// Device is a virtio-console device with one port bridged to a host-side
// byte stream. Use New; attach the host side with SetHost.
type Device struct {
	log *slog.Logger
	// in hands chunks read from the host side to the receive goroutine of
	// the active activation. Unbuffered: a reader that cannot hand over its
	// chunk stops reading, which is the backpressure to the host.
	in chan rxChunk

	toGuest, toHost, discarded atomic.Uint64

	mu sync.Mutex
	// act is the current activation; nil when the driver has not set
	// DRIVER_OK or after Reset. Guarded by mu.
	act *activation
	// host is the attached host side; nil when none. Guarded by mu.
	host *hostSide
	// pending is the rest of a host chunk that a Reset interrupted; the
	// next activation delivers it first. Guarded by mu.
	pending rxChunk
	// warned is set once a discard was logged since the last SetHost, so a
	// guest writing to nobody logs once rather than per chain. Guarded by mu.
	warned bool
	closed bool // guarded by mu
}

// rxChunk is bytes read from the host side that the guest has not yet
// received; done is closed once all of b was written into guest buffers,
// which lets the reader reuse its buffer and read again.
type rxChunk struct {
	b    []byte
	done chan struct{}
}

var _ virtio.Device = (*Device)(nil)

// New returns a console device with no host side attached.
func New(opts Options) *Device {
	d := &Device{log: opts.Log, in: make(chan rxChunk)}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	return d
}

// Stats returns the byte counters.
func (d *Device) Stats() Stats {
	return Stats{ToGuest: d.toGuest.Load(), ToHost: d.toHost.Load(), Discarded: d.discarded.Load()}
}

// Close stops the device and detaches (closing) the host side. SetHost
// after Close closes what it is given.
func (d *Device) Close() error {
	d.Reset()
	d.mu.Lock()
	d.closed = true
	h := d.host
	d.host = nil
	d.mu.Unlock()
	if h != nil {
		h.shut(errors.New("device closed"))
	}
	return nil
}

// Type implements virtio.Device.
func (*Device) Type() virtio.DeviceType { return virtio.TypeConsole }

// Features implements virtio.Device: none (no size, multiport or emergency
// write).
func (*Device) Features() uint64 { return 0 }

// QueueSizes implements virtio.Device: receiveq and transmitq of port 0.
func (*Device) QueueSizes() []uint16 { return []uint16{queueSize, queueSize} }

// ReadConfig implements virtio.Device (struct virtio_console_config). Without
// VIRTIO_CONSOLE_F_SIZE and VIRTIO_CONSOLE_F_MULTIPORT every field is
// meaningless to the driver, and all read as zero.
func (*Device) ReadConfig(_ uint32, p []byte) { clear(p) }

// WriteConfig implements virtio.Device: emerg_wr is ignored (no
// VIRTIO_CONSOLE_F_EMERG_WRITE).
func (*Device) WriteConfig(uint32, []byte) {}

// activation is the device between DRIVER_OK and reset.
type activation struct {
	d      *Device
	env    *virtio.Env
	cancel context.CancelFunc
	wg     sync.WaitGroup
	// rxKick wakes the receive goroutine when the driver posts buffers.
	rxKick  *virtio.Kick
	workers *virtio.Workers
}

// Activate implements virtio.Device.
func (d *Device) Activate(ctx context.Context, env *virtio.Env) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.act != nil {
		return errors.New("virtio-console: already active")
	}
	ctx, cancel := context.WithCancel(ctx)
	a := &activation{d: d, env: env, cancel: cancel, rxKick: virtio.NewKick(ctx, env, ReceiveQ)}
	if rxq := queueAt(env, ReceiveQ); rxq != nil {
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			a.receive(ctx, rxq)
		}()
	}
	if txq := queueAt(env, TransmitQ); txq != nil {
		// The workers drain only the transmit queue: receive buffers are
		// consumed when host data arrives, not when the driver notifies.
		txEnv := *env
		txEnv.Queues = []*virtio.Queue{ReceiveQ: nil, TransmitQ: txq}
		buf := make([]byte, ChunkSize) // one per activation: see sendHost
		a.workers = virtio.StartWorkers(ctx, &txEnv, func(ctx context.Context, _ int, c *virtio.Chain) (uint32, error) {
			return a.transmit(ctx, c, buf)
		})
	}
	d.act = a
	return nil
}

func queueAt(env *virtio.Env, i int) *virtio.Queue {
	if i < len(env.Queues) {
		return env.Queues[i]
	}
	return nil
}

// Notify implements virtio.Device.
func (d *Device) Notify(q int) {
	d.mu.Lock()
	a := d.act
	d.mu.Unlock()
	if a == nil {
		return
	}
	switch q {
	case ReceiveQ:
		a.rxKick.Notify()
	case TransmitQ:
		if a.workers != nil {
			a.workers.Notify(q)
		}
	}
}

// Reset implements virtio.Device. Host bytes read but not yet received by
// the guest are kept and delivered after the next activation; the host
// side stays attached.
func (d *Device) Reset() {
	d.mu.Lock()
	a := d.act
	d.act = nil
	d.mu.Unlock()
	if a == nil {
		return
	}
	a.cancel()
	if a.workers != nil {
		a.workers.Stop()
	}
	a.wg.Wait()
}

// receive moves host chunks into the receive queue until ctx ends or the
// queue breaks. It owns rxq.
func (a *activation) receive(ctx context.Context, rxq *virtio.Queue) {
	d := a.d
	var c virtio.Chain
	for {
		chunk, ok := d.takeChunk(ctx)
		if !ok {
			return
		}
		rest, err := a.deliver(ctx, rxq, &c, chunk.b)
		if len(rest) > 0 {
			// Interrupted (reset or broken queue): keep the bytes for the
			// next activation rather than drop them.
			d.mu.Lock()
			d.pending = rxChunk{b: rest, done: chunk.done}
			d.mu.Unlock()
		} else {
			close(chunk.done)
		}
		if err != nil {
			if ctx.Err() == nil {
				a.env.Fail(fmt.Errorf("virtio-console: receiveq: %w", err))
			}
			return
		}
	}
}

// takeChunk returns the pending chunk, or waits for the host side's next.
func (d *Device) takeChunk(ctx context.Context) (rxChunk, bool) {
	d.mu.Lock()
	c := d.pending
	d.pending = rxChunk{}
	d.mu.Unlock()
	if c.done != nil {
		return c, true
	}
	select {
	case c := <-d.in:
		return c, true
	case <-ctx.Done():
		return rxChunk{}, false
	}
}

// deliver writes b into the driver's receive buffers, waiting for buffers
// when there are none, and returns what it could not deliver.
func (a *activation) deliver(ctx context.Context, q *virtio.Queue, c *virtio.Chain, b []byte) ([]byte, error) {
	defer a.signal(q)
	for len(b) > 0 {
		ok, err := q.Pop(c)
		if err != nil {
			return b, err
		}
		if !ok {
			// Out of buffers: interrupt for what was delivered, ask to be
			// notified, and sleep unless buffers arrived meanwhile.
			a.signal(q)
			more, err := q.EnableNotify()
			if err != nil {
				return b, err
			}
			if more {
				continue
			}
			if err := a.rxKick.Wait(ctx); err != nil {
				return b, err
			}
			continue
		}
		// Readable descriptors in a receive chain carry nothing for the
		// device and are ignored; a chain with no writable bytes is
		// returned empty.
		n, err := c.WriteAt(b, 0)
		if err != nil {
			return b, err
		}
		if err := q.Push(c.Head, uint32(n)); err != nil {
			return b[n:], err
		}
		a.d.toGuest.Add(uint64(n))
		b = b[n:]
	}
	return nil, nil
}

// signal raises the queue's interrupt if the driver wants one. A broken
// queue is reported by the next Pop.
func (a *activation) signal(q *virtio.Queue) {
	if irq, err := q.NeedsInterrupt(); err == nil && irq {
		a.env.Signal(ReceiveQ)
	}
}

// transmit sends one transmit chain's readable bytes to the host side in
// pieces of at most len(buf). The used length is zero: the device writes
// nothing into a transmit chain.
func (a *activation) transmit(ctx context.Context, c *virtio.Chain, buf []byte) (uint32, error) {
	for off := uint64(0); off < c.ReadableLen; {
		n := min(c.ReadableLen-off, uint64(len(buf)))
		k, err := c.ReadAt(buf[:n], off)
		if err != nil {
			return 0, fmt.Errorf("virtio-console: transmitq: %w", err)
		}
		if uint64(k) != n {
			return 0, fmt.Errorf("virtio-console: transmitq: read %d of %d bytes at %d", k, n, off)
		}
		if err := a.d.sendHost(ctx, buf[:n]); err != nil {
			return 0, err
		}
		off += n
	}
	return 0, nil
}

// sendHost writes p to the attached host side, or counts it as discarded
// when none is attached or the write fails. It returns only ctx's error.
// After a cancelled write p may still be in use by the host side's writer,
// so the caller must not reuse it (each activation has its own buffer).
func (d *Device) sendHost(ctx context.Context, p []byte) error {
	d.mu.Lock()
	h := d.host
	d.mu.Unlock()
	n := 0
	var err error
	if h != nil {
		n, err = h.write(ctx, p)
		d.toHost.Add(uint64(n))
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	if n < len(p) {
		d.discarded.Add(uint64(len(p) - n))
		d.mu.Lock()
		warn := !d.warned
		d.warned = true
		d.mu.Unlock()
		if warn {
			if err == nil {
				err = errNoHost
			}
			d.log.Warn("virtio-console: discarding guest output", "err", err)
		}
	}
	return nil
}

var errNoHost = errors.New("no host side attached")

// ErrDetached is the cause a host side's Done reports when SetHost replaced
// it or Close detached it.
var ErrDetached = errors.New("virtio-console: host side detached")

// hostSide is one attached io.ReadWriteCloser with a reader goroutine
// feeding Device.in and a writer goroutine serving write.
type hostSide struct {
	rw  io.ReadWriteCloser
	log *slog.Logger
	// out carries write requests to the writer goroutine.
	out chan writeReq
	// stop is closed by shut; the goroutines then end.
	stop chan struct{}
	// done is closed once rw is closed.
	done chan struct{}
	once sync.Once
}

type writeReq struct {
	p   []byte
	res chan writeRes // buffered 1, so the writer never blocks on it
}

type writeRes struct {
	n   int
	err error
}

// SetHost attaches rw as the host side of the port, detaching (and
// closing) the previous one; nil only detaches. The device owns rw from
// here and closes it when it is detached: by EOF or an error on rw, by a
// later SetHost, or by Close. The returned channel is closed then (it is
// nil for SetHost(nil)); the VMM waits on it to accept the next connection.
//
// Bytes read from rw go to the guest in order; when the guest posts no
// receive buffers the device stops reading rw (backpressure, no loss, no
// unbounded buffering). Guest output goes to rw in order; while no host
// side is attached it is discarded and counted in Stats.Discarded.
func (d *Device) SetHost(rw io.ReadWriteCloser) <-chan struct{} {
	var h *hostSide
	if rw != nil {
		h = &hostSide{rw: rw, log: d.log, out: make(chan writeReq), stop: make(chan struct{}), done: make(chan struct{})}
	}
	d.mu.Lock()
	if d.closed && h != nil {
		d.mu.Unlock()
		h.shut(ErrDetached)
		return h.done
	}
	old := d.host
	d.host = h
	d.warned = false
	d.mu.Unlock()
	if old != nil {
		old.shut(ErrDetached)
	}
	if h == nil {
		return nil
	}
	go h.readLoop(d)
	go h.writeLoop(d)
	return h.done
}

// detach drops h if it is still the attached host side, and closes it.
func (d *Device) detach(h *hostSide, cause error) {
	d.mu.Lock()
	if d.host == h {
		d.host = nil
		d.warned = false
	}
	d.mu.Unlock()
	h.shut(cause)
}

// shut closes the host side once; closing rw unblocks its reader and
// writer goroutines.
func (h *hostSide) shut(cause error) {
	h.once.Do(func() {
		close(h.stop)
		if err := h.rw.Close(); err != nil {
			h.log.Debug("virtio-console: close host side", "err", err)
		}
		if errors.Is(cause, io.EOF) || errors.Is(cause, ErrDetached) {
			h.log.Info("virtio-console: host side detached", "cause", cause)
		} else {
			h.log.Warn("virtio-console: host side detached", "err", cause)
		}
		close(h.done)
	})
}

func (h *hostSide) readLoop(d *Device) {
	buf := make([]byte, ChunkSize)
	for {
		n, err := h.rw.Read(buf)
		if n > 0 {
			done := make(chan struct{})
			select {
			case d.in <- rxChunk{b: buf[:n], done: done}:
			case <-h.stop:
				return
			}
			// Wait until the guest has it all before reusing buf. If h is
			// detached first, the receive side still delivers the chunk,
			// and buf is no longer ours.
			select {
			case <-done:
			case <-h.stop:
				return
			}
		}
		if err != nil {
			d.detach(h, fmt.Errorf("virtio-console: read host side: %w", err))
			return
		}
	}
}

func (h *hostSide) writeLoop(d *Device) {
	for {
		select {
		case r := <-h.out:
			n, err := h.rw.Write(r.p)
			if err != nil {
				err = fmt.Errorf("virtio-console: write host side: %w", err)
			}
			r.res <- writeRes{n, err}
			if err != nil {
				d.detach(h, err)
				return
			}
		case <-h.stop:
			return
		}
	}
}

// write hands p to the writer goroutine and waits for the result, or for
// ctx or the host side to end.
func (h *hostSide) write(ctx context.Context, p []byte) (int, error) {
	r := writeReq{p: p, res: make(chan writeRes, 1)}
	select {
	case h.out <- r:
	case <-h.stop:
		return 0, ErrDetached
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	select {
	case res := <-r.res:
		return res.n, res.err
	case <-h.stop:
		// The write may have completed concurrently with the detach.
		select {
		case res := <-r.res:
			return res.n, res.err
		default:
			return 0, ErrDetached
		}
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}
