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
	FMrgRxbuf  uint64 = 1 << 15 // VIRTIO_NET_F_MRG_RXBUF
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
	// raises an interrupt, so a busy backend does not starve the guest,
	// and, in the event loop, before it serves transmit again.
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
	tx      *virtio.Workers // nil with the event loop
	txKick  *virtio.Kick    // the event loop's transmit kick, else nil
	rxKick  *virtio.Kick
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
	// MRG_RXBUF lets the driver post small receive buffers and the device
	// spread a large packet over several. Without it a driver that takes
	// TSO must post 64 KiB chains (Linux: 17 pages each, "big packets"),
	// and refills one for every ACK it receives.
	d.features = FMac | FStatus | FMrgRxbuf
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
	a := &activation{cancel: cancel, rxKick: virtio.NewKick(ctx, env, RxQueue), rxDone: make(chan struct{})}
	if l := d.eventLoop(env); l != nil {
		// Notifications that come as calls ring the doorbells the loop
		// waits on.
		a.txKick = virtio.NewKick(ctx, env, TxQueue)
		a.started = true
		go func() {
			defer close(a.rxDone)
			l.run(ctx)
		}()
		d.run = a
		return nil
	}
	if len(env.Queues) > TxQueue && env.Queues[TxQueue] != nil {
		txEnv := *env
		txEnv.Queues = make([]*virtio.Queue, len(env.Queues))
		txEnv.Queues[TxQueue] = env.Queues[TxQueue]
		t := &transmitter{dev: d, mem: env.Mem}
		a.tx = virtio.StartWorkers(ctx, &txEnv, t.handle)
	}
	if len(env.Queues) > RxQueue && env.Queues[RxQueue] != nil {
		r := d.newReceiver(env, a.rxKick)
		a.started = true
		go func() {
			defer close(a.rxDone)
			r.run(ctx)
		}()
	}
	d.run = a
	return nil
}

func (d *Device) newReceiver(env *virtio.Env, kick *virtio.Kick) *receiver {
	return &receiver{dev: d, env: env, q: env.Queues[RxQueue], kick: kick, buf: make([]byte, MaxPacket),
		mergeable: env.Features&FMrgRxbuf != 0}
}

// eventLoop returns the loop that serves both queues from one goroutine
// when the backend can be polled (PollBackend), the driver enabled both
// queues and the transport has their doorbells; nil otherwise.
func (d *Device) eventLoop(env *virtio.Env) *eventLoop {
	pb, ok := d.be.(PollBackend)
	if !ok || len(env.Queues) <= TxQueue || len(env.Doorbells) <= TxQueue {
		return nil
	}
	txq, rxq := env.Queues[TxQueue], env.Queues[RxQueue]
	txBell, rxBell := env.Doorbells[TxQueue], env.Doorbells[RxQueue]
	if txq == nil || rxq == nil || txBell == nil || rxBell == nil {
		return nil
	}
	return &eventLoop{
		dev: d, env: env, txq: txq, fd: pb.PollFD(), txBell: txBell, rxBell: rxBell,
		tx: &transmitter{dev: d, mem: env.Mem},
		rx: d.newReceiver(env, nil),
	}
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
		a.rxKick.Notify()
	case TxQueue:
		if a.txKick != nil {
			a.txKick.Notify()
		}
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

// receiver owns the receive queue of one activation. It moves packets
// from the backend into the driver's buffers in steps (pump) that never
// block, so that one goroutine can also serve the transmit queue
// (eventLoop); loop is the goroutine that only receives.
type receiver struct {
	dev  *Device
	env  *virtio.Env
	q    *virtio.Queue
	kick *virtio.Kick
	buf  []byte
	// mergeable is VIRTIO_NET_F_MRG_RXBUF: a packet may take several
	// chains, chains[:n] for one packet, returned with used in one batch.
	mergeable bool
	chains    []virtio.Chain
	used      []virtio.UsedElem
	// pkt is the packet being delivered (a prefix of buf), nil when none;
	// n chains are taken for it so far, holding room bytes.
	pkt  []byte
	n    int
	room uint64
	// unsignalled counts chains pushed since the last NeedsInterrupt.
	unsignalled int
}

// pumpState is why pump stopped.
type pumpState int

const (
	// pumpIdle: the backend has no packet waiting.
	pumpIdle pumpState = iota
	// pumpNeedBuffers: a packet waits for the driver's buffers, and the
	// driver was asked to notify when it posts some.
	pumpNeedBuffers
	// pumpBackendError: the backend failed (counted and logged); try
	// again after errBackoff.
	pumpBackendError
	// pumpMore: rxBatch packets were delivered and more may wait; call
	// pump again (after serving transmit, in the event loop).
	pumpMore
)

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
		st, err := r.pump()
		if err != nil {
			return err
		}
		switch st {
		case pumpIdle:
			if err := d.be.WaitPacket(ctx); err != nil && ctx.Err() == nil {
				d.stats.rxErrors.Add(1)
				d.log.Warn("virtio-net: backend wait", "err", err)
				sleep(ctx, errBackoff)
			}
		case pumpNeedBuffers:
			if err := r.kick.Wait(ctx); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
			if err := r.q.DisableNotify(); err != nil {
				return err
			}
		case pumpBackendError:
			sleep(ctx, errBackoff)
		case pumpMore:
		}
	}
	return nil
}

// pump delivers packets until the backend has none, the driver's buffers
// run out or it delivered rxBatch packets, raising the interrupt before it
// stops. It never blocks and returns an error only when the queue broke.
func (r *receiver) pump() (pumpState, error) {
	d := r.dev
	for budget := rxBatch; ; budget-- {
		if budget == 0 {
			return pumpMore, r.flush()
		}
		if r.pkt == nil {
			n, err := d.be.ReadPacket(r.buf)
			switch {
			case errors.Is(err, ErrWouldBlock):
				return pumpIdle, r.flush()
			case err != nil:
				d.stats.rxErrors.Add(1)
				d.log.Warn("virtio-net: backend read", "err", err)
				return pumpBackendError, r.flush()
			case n < HeaderLen:
				d.stats.rxDropped.Add(1)
				continue
			}
			r.pkt = r.buf[:n]
		}
		ok, err := r.deliver()
		if err != nil {
			return 0, err
		}
		if !ok {
			return pumpNeedBuffers, nil
		}
	}
}

// deliver copies r.pkt into as many receive chains as it needs (one
// without VIRTIO_NET_F_MRG_RXBUF) and returns them to the driver
// together. When the driver has posted too few, it keeps the chains taken
// so far, raises the interrupt, asks to be notified and reports false; a
// later call goes on from there. A packet that does not fit in the most
// chains it may take is dropped and those chains returned empty.
func (r *receiver) deliver() (bool, error) {
	d := r.dev
	// At most one queue's worth of chains: the driver cannot have posted
	// more, and a driver that posts empty chains cannot keep us here.
	limit := 1
	if r.mergeable {
		limit = int(r.q.Size())
	}
	for r.room < uint64(len(r.pkt)) && r.n < limit {
		if r.n == len(r.chains) {
			r.chains = append(r.chains, virtio.Chain{})
		}
		ok, err := r.q.Pop(&r.chains[r.n])
		if err != nil {
			return false, err
		}
		if !ok {
			if err := r.flush(); err != nil {
				return false, err
			}
			more, err := r.q.EnableNotify()
			if err != nil || !more {
				return false, err
			}
			if err := r.q.DisableNotify(); err != nil {
				return false, err
			}
			continue
		}
		r.room += r.chains[r.n].WritableLen
		r.n++
	}
	pkt, n := r.pkt, r.n
	r.pkt, r.n, r.room = nil, 0, 0
	r.used = r.used[:0]
	if chainRoom(r.chains[:n]) < uint64(len(pkt)) {
		d.stats.rxDropped.Add(1)
		d.log.Debug("virtio-net: receive buffers too small", "packet", len(pkt), "chains", n)
		for _, c := range r.chains[:n] {
			r.used = append(r.used, virtio.UsedElem{Head: c.Head})
		}
	} else {
		// num_buffers: how many chains the packet took (§5.1.6.4).
		binary.LittleEndian.PutUint16(pkt[10:], uint16(n))
		rest := pkt
		for _, c := range r.chains[:n] {
			w, err := c.WriteAt(rest, 0)
			if err != nil {
				return false, fmt.Errorf("virtio-net: receive: %w", err)
			}
			rest = rest[w:]
			r.used = append(r.used, virtio.UsedElem{Head: c.Head, Len: uint32(w)})
		}
		d.stats.rxPackets.Add(1)
		d.stats.rxBytes.Add(uint64(len(pkt) - HeaderLen))
	}
	if err := r.q.PushBatch(r.used); err != nil {
		return false, err
	}
	r.unsignalled += n
	return true, nil
}

// chainRoom is the writable room of chains.
func chainRoom(chains []virtio.Chain) uint64 {
	var n uint64
	for _, c := range chains {
		n += c.WritableLen
	}
	return n
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
