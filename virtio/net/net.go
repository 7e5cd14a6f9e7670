package net

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	stdnet "net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gvmm/gvmm/virtio"
)

// Feature bits (§5.1.3).
const (
	FCsum      uint64 = 1 << 0  // VIRTIO_NET_F_CSUM
	FGuestCsum uint64 = 1 << 1  // VIRTIO_NET_F_GUEST_CSUM
	FMac       uint64 = 1 << 5  // VIRTIO_NET_F_MAC
	FGuestTSO4 uint64 = 1 << 7  // VIRTIO_NET_F_GUEST_TSO4
	FGuestTSO6 uint64 = 1 << 8  // VIRTIO_NET_F_GUEST_TSO6
	FGuestECN  uint64 = 1 << 9  // VIRTIO_NET_F_GUEST_ECN
	FHostTSO4  uint64 = 1 << 11 // VIRTIO_NET_F_HOST_TSO4
	FHostTSO6  uint64 = 1 << 12 // VIRTIO_NET_F_HOST_TSO6
	FHostECN   uint64 = 1 << 13 // VIRTIO_NET_F_HOST_ECN
	FMrgRxbuf  uint64 = 1 << 15 // VIRTIO_NET_F_MRG_RXBUF (not offered)
	FStatus    uint64 = 1 << 16 // VIRTIO_NET_F_STATUS

	// OffloadFeatures are the offloads a Backend may support.
	OffloadFeatures = FCsum | FGuestCsum | FGuestTSO4 | FGuestTSO6 | FGuestECN |
		FHostTSO4 | FHostTSO6 | FHostECN
	// GuestOffloads are the receive offloads SetOffloads is told about.
	GuestOffloads = FGuestCsum | FGuestTSO4 | FGuestTSO6 | FGuestECN
)

// StatusLinkUp is VIRTIO_NET_S_LINK_UP in the configuration's status.
const StatusLinkUp = 1

// Queue indices.
const (
	RxQueue = 0
	TxQueue = 1
)

const (
	queueSize = 256
	// configSize covers mac, status and max_virtqueue_pairs of struct
	// virtio_net_config.
	configSize = 10
	// rxBatch bounds how many packets the device receives before it
	// raises an interrupt, so a busy backend does not starve the guest.
	rxBatch = 64
	// maxIovecs is IOV_MAX; longer transmit chains are copied first.
	maxIovecs = 1024
	// errBackoff is how long receive waits after a backend error.
	errBackoff = 10 * time.Millisecond
)

// Options configure a device. The zero value offers the backend's offloads
// and a random MAC.
type Options struct {
	// MAC is the guest's address; nil picks a random locally administered
	// unicast one.
	MAC stdnet.HardwareAddr
	// NoOffloads offers no checksum or TSO offloads even where the backend
	// can carry them.
	NoOffloads bool
	Log        *slog.Logger
}

// Stats are the device's packet counters since it was made.
type Stats struct {
	TxPackets, TxBytes uint64
	// TxDropped counts chains too short for a header or longer than
	// MaxPacket; TxErrors packets the backend refused.
	TxDropped, TxErrors uint64
	RxPackets, RxBytes  uint64
	// RxDropped counts packets dropped because the receive chain was too
	// small or the packet shorter than a header; RxErrors backend read
	// errors.
	RxDropped, RxErrors uint64
}

type counters struct {
	txPackets, txBytes, txDropped, txErrors atomic.Uint64
	rxPackets, rxBytes, rxDropped, rxErrors atomic.Uint64
}

// Device is a virtio-net device over a Backend. Use New.
type Device struct {
	be       Backend
	mac      [6]byte
	features uint64
	log      *slog.Logger
	stats    counters

	mu sync.Mutex
	// run is the activation in progress; nil when not activated.
	run *activation
}

// activation is what one Activate started; Reset stops it.
type activation struct {
	cancel  context.CancelFunc
	tx      *virtio.Workers
	rxKick  chan struct{}
	rxDone  chan struct{} // closed when the receive goroutine ends
	started bool          // the receive goroutine was started
}

var _ virtio.Device = (*Device)(nil)

// New returns a device over be, which it owns from then on: Close closes
// it, and so does New when it fails.
func New(be Backend, opts Options) (*Device, error) {
	d := &Device{be: be, log: opts.Log}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	switch {
	case opts.MAC == nil:
		if _, err := rand.Read(d.mac[:]); err != nil {
			be.Close()
			return nil, fmt.Errorf("virtio-net: random MAC: %w", err)
		}
		d.mac[0] = d.mac[0]&^0x01 | 0x02 // unicast, locally administered
	case len(opts.MAC) != 6:
		be.Close()
		return nil, fmt.Errorf("virtio-net: MAC %v is not 6 bytes", opts.MAC)
	case opts.MAC[0]&0x01 != 0:
		be.Close()
		return nil, fmt.Errorf("virtio-net: MAC %v is a multicast address", opts.MAC)
	default:
		copy(d.mac[:], opts.MAC)
	}
	d.features = FMac | FStatus
	if !opts.NoOffloads {
		d.features |= be.Offloads() & OffloadFeatures
	}
	d.log = d.log.With("mac", d.MAC().String())
	return d, nil
}

// MAC is the guest's MAC address.
func (d *Device) MAC() stdnet.HardwareAddr { return append(stdnet.HardwareAddr(nil), d.mac[:]...) }

// Stats returns the packet counters.
func (d *Device) Stats() Stats {
	s := &d.stats
	return Stats{
		TxPackets: s.txPackets.Load(), TxBytes: s.txBytes.Load(),
		TxDropped: s.txDropped.Load(), TxErrors: s.txErrors.Load(),
		RxPackets: s.rxPackets.Load(), RxBytes: s.rxBytes.Load(),
		RxDropped: s.rxDropped.Load(), RxErrors: s.rxErrors.Load(),
	}
}

// Close stops the device and closes its backend.
func (d *Device) Close() error {
	d.Reset()
	if err := d.be.Close(); err != nil {
		return fmt.Errorf("virtio-net: close backend: %w", err)
	}
	return nil
}

// Type implements virtio.Device.
func (*Device) Type() virtio.DeviceType { return virtio.TypeNet }

// Features implements virtio.Device.
func (d *Device) Features() uint64 { return d.features }

// QueueSizes implements virtio.Device: receive and transmit, no control
// queue.
func (*Device) QueueSizes() []uint16 { return []uint16{queueSize, queueSize} }

// ReadConfig implements virtio.Device (struct virtio_net_config).
func (d *Device) ReadConfig(off uint32, p []byte) {
	clear(p)
	var b [configSize]byte
	copy(b[0:6], d.mac[:])
	binary.LittleEndian.PutUint16(b[6:], StatusLinkUp)
	binary.LittleEndian.PutUint16(b[8:], 1) // max_virtqueue_pairs
	if off < configSize {
		copy(p, b[off:])
	}
}

// WriteConfig implements virtio.Device: the MAC is read-only for a
// VERSION_1 driver (§5.1.4.2), and nothing else is writable.
func (*Device) WriteConfig(uint32, []byte) {}

// Activate implements virtio.Device.
func (d *Device) Activate(ctx context.Context, env *virtio.Env) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.run != nil {
		return errors.New("virtio-net: already active")
	}
	offloads := env.Features & GuestOffloads
	if env.Features&FGuestCsum == 0 {
		offloads = 0 // TSO needs GUEST_CSUM (§5.1.3.1)
	}
	if err := d.be.SetOffloads(offloads); err != nil {
		return fmt.Errorf("virtio-net: set backend offloads: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	a := &activation{cancel: cancel, rxKick: make(chan struct{}, 1), rxDone: make(chan struct{})}
	if len(env.Queues) > TxQueue && env.Queues[TxQueue] != nil {
		txEnv := *env
		txEnv.Queues = make([]*virtio.Queue, len(env.Queues))
		txEnv.Queues[TxQueue] = env.Queues[TxQueue]
		t := &transmitter{dev: d, mem: env.Mem}
		a.tx = virtio.StartWorkers(ctx, &txEnv, t.handle)
	}
	if len(env.Queues) > RxQueue && env.Queues[RxQueue] != nil {
		r := &receiver{dev: d, env: env, q: env.Queues[RxQueue], kick: a.rxKick, buf: make([]byte, MaxPacket)}
		a.started = true
		go func() {
			defer close(a.rxDone)
			r.run(ctx)
		}()
	}
	d.run = a
	return nil
}

// Notify implements virtio.Device.
func (d *Device) Notify(q int) {
	d.mu.Lock()
	a := d.run
	d.mu.Unlock()
	if a == nil {
		return
	}
	switch q {
	case RxQueue:
		select {
		case a.rxKick <- struct{}{}:
		default:
		}
	case TxQueue:
		if a.tx != nil {
			a.tx.Notify(q)
		}
	}
}

// Reset implements virtio.Device: it waits until neither queue's
// goroutine touches guest memory.
func (d *Device) Reset() {
	d.mu.Lock()
	a := d.run
	d.run = nil
	d.mu.Unlock()
	if a == nil {
		return
	}
	a.cancel()
	if a.tx != nil {
		a.tx.Stop()
	}
	if a.started {
		<-a.rxDone
	}
}

// transmitter handles the transmit chains of one activation.
type transmitter struct {
	dev     *Device
	mem     virtio.GuestMemory
	bufs    [][]byte
	scratch []byte
}

func (t *transmitter) handle(_ context.Context, _ int, c *virtio.Chain) (uint32, error) {
	d := t.dev
	if c.ReadableLen < HeaderLen || c.ReadableLen > MaxPacket {
		d.stats.txDropped.Add(1)
		d.log.Debug("virtio-net: transmit chain dropped", "len", c.ReadableLen)
		return 0, nil
	}
	t.bufs = t.bufs[:0]
	for _, s := range c.Readable {
		b, err := t.mem.Slice(s.Addr, uint64(s.Len))
		if err != nil {
			return 0, fmt.Errorf("virtio-net: transmit buffer: %w", err)
		}
		t.bufs = append(t.bufs, b)
	}
	bufs := t.bufs
	if len(bufs) > maxIovecs {
		t.scratch = t.scratch[:0]
		for _, b := range bufs {
			t.scratch = append(t.scratch, b...)
		}
		bufs = [][]byte{t.scratch}
	}
	if err := d.be.WritePacket(bufs); err != nil {
		d.stats.txErrors.Add(1)
		d.log.Debug("virtio-net: backend write", "err", err)
		return 0, nil
	}
	d.stats.txPackets.Add(1)
	d.stats.txBytes.Add(c.ReadableLen - HeaderLen)
	// Transmit buffers are device-readable only: nothing written.
	return 0, nil
}

// receiver owns the receive queue of one activation.
type receiver struct {
	dev  *Device
	env  *virtio.Env
	q    *virtio.Queue
	kick <-chan struct{}
	buf  []byte
	c    virtio.Chain
	// unsignalled counts chains pushed since the last NeedsInterrupt.
	unsignalled int
}

func (r *receiver) run(ctx context.Context) {
	if err := r.loop(ctx); err != nil && ctx.Err() == nil {
		r.env.Fail(err)
	}
}

// loop returns nil when ctx ends and an error when the queue broke.
func (r *receiver) loop(ctx context.Context) error {
	d := r.dev
	// Receive wants notifications only while it waits for buffers.
	if err := r.q.DisableNotify(); err != nil {
		return err
	}
	for ctx.Err() == nil {
		n, err := d.be.ReadPacket(r.buf)
		switch {
		case errors.Is(err, ErrWouldBlock):
			if err := r.flush(); err != nil {
				return err
			}
			if err := d.be.WaitPacket(ctx); err != nil && ctx.Err() == nil {
				d.stats.rxErrors.Add(1)
				d.log.Warn("virtio-net: backend wait", "err", err)
				sleep(ctx, errBackoff)
			}
			continue
		case err != nil:
			d.stats.rxErrors.Add(1)
			d.log.Warn("virtio-net: backend read", "err", err)
			sleep(ctx, errBackoff)
			continue
		}
		if n < HeaderLen {
			d.stats.rxDropped.Add(1)
			continue
		}
		ok, err := r.nextChain(ctx)
		if err != nil || !ok {
			return err
		}
		if err := r.deliver(r.buf[:n]); err != nil {
			return err
		}
		if r.unsignalled >= rxBatch {
			if err := r.flush(); err != nil {
				return err
			}
		}
	}
	return nil
}

// deliver copies pkt into the popped chain r.c and returns the chain.
func (r *receiver) deliver(pkt []byte) error {
	d := r.dev
	var written uint32
	if uint64(len(pkt)) > r.c.WritableLen {
		d.stats.rxDropped.Add(1)
		d.log.Debug("virtio-net: receive buffer too small", "packet", len(pkt), "buffer", r.c.WritableLen)
	} else {
		// num_buffers is 1 without VIRTIO_NET_F_MRG_RXBUF (§5.1.6.4).
		binary.LittleEndian.PutUint16(pkt[10:], 1)
		w, err := r.c.WriteAt(pkt, 0)
		if err != nil {
			return fmt.Errorf("virtio-net: receive: %w", err)
		}
		written = uint32(w)
		d.stats.rxPackets.Add(1)
		d.stats.rxBytes.Add(uint64(len(pkt) - HeaderLen))
	}
	if err := r.q.Push(r.c.Head, written); err != nil {
		return err
	}
	r.unsignalled++
	return nil
}

// nextChain pops a receive chain into r.c, waiting for the driver to post
// one. It reports false when ctx ends first.
func (r *receiver) nextChain(ctx context.Context) (bool, error) {
	for {
		ok, err := r.q.Pop(&r.c)
		if err != nil || ok {
			return ok, err
		}
		if err := r.flush(); err != nil {
			return false, err
		}
		more, err := r.q.EnableNotify()
		if err != nil {
			return false, err
		}
		if !more {
			select {
			case <-ctx.Done():
				return false, nil
			case <-r.kick:
			}
		}
		if err := r.q.DisableNotify(); err != nil {
			return false, err
		}
	}
}

// flush raises the receive interrupt for chains pushed since the last
// flush, if the driver wants one.
func (r *receiver) flush() error {
	if r.unsignalled == 0 {
		return nil
	}
	r.unsignalled = 0
	irq, err := r.q.NeedsInterrupt()
	if err != nil {
		return err
	}
	if irq {
		r.env.Signal(RxQueue)
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
