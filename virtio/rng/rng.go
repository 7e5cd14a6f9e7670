package rng

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"sync"

	"github.com/gvmm/gvmm/virtio"
)

// MaxPerRequest bounds the entropy written for one request.
const MaxPerRequest = 64 << 10

const queueSize = 256

// Device is a virtio-rng device. The zero value is not usable; use New.
type Device struct {
	src io.Reader

	mu      sync.Mutex
	workers *virtio.Workers // nil when not activated
}

// New returns a device reading entropy from src, or crypto/rand when nil.
func New(src io.Reader) *Device {
	if src == nil {
		src = rand.Reader
	}
	return &Device{src: src}
}

var _ virtio.Device = (*Device)(nil)

// Type implements virtio.Device.
func (*Device) Type() virtio.DeviceType { return virtio.TypeEntropy }

// Features implements virtio.Device: virtio-rng has none of its own.
func (*Device) Features() uint64 { return 0 }

// QueueSizes implements virtio.Device: one request queue.
func (*Device) QueueSizes() []uint16 { return []uint16{queueSize} }

// ReadConfig implements virtio.Device: there is no device configuration.
func (*Device) ReadConfig(_ uint32, p []byte) { clear(p) }

// WriteConfig implements virtio.Device.
func (*Device) WriteConfig(uint32, []byte) {}

// Activate implements virtio.Device.
func (d *Device) Activate(ctx context.Context, env *virtio.Env) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.workers != nil {
		return fmt.Errorf("virtio-rng: already active")
	}
	log := env.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d.workers = virtio.StartWorkers(ctx, env, func(ctx context.Context, q int, c *virtio.Chain) (uint32, error) {
		return d.handle(ctx, log, c)
	})
	return nil
}

// Notify implements virtio.Device.
func (d *Device) Notify(q int) {
	d.mu.Lock()
	w := d.workers
	d.mu.Unlock()
	if w != nil {
		w.Notify(q)
	}
}

// Reset implements virtio.Device.
func (d *Device) Reset() {
	d.mu.Lock()
	w := d.workers
	d.workers = nil
	d.mu.Unlock()
	if w != nil {
		w.Stop()
	}
}

func (d *Device) handle(_ context.Context, log *slog.Logger, c *virtio.Chain) (uint32, error) {
	n := min(c.WritableLen, MaxPerRequest)
	if n == 0 {
		return 0, nil
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(d.src, buf); err != nil {
		// No entropy is not the guest's fault; hand the buffer back empty.
		log.Warn("virtio-rng: entropy source", "err", err)
		return 0, nil
	}
	w, err := c.WriteAt(buf, 0)
	if err != nil {
		return 0, fmt.Errorf("virtio-rng: %w", err)
	}
	return uint32(w), nil
}
