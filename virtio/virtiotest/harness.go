package virtiotest

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/gvmm/gvmm/virtio"
)

// Harness activates a virtio.Device without a transport, with one queue per
// driver, and records the signals and failures the device reports.
type Harness struct {
	Dev virtio.Device
	Env *virtio.Env

	mu      sync.Mutex
	signals []int
	failure error
}

// Activate builds queues over the drivers' rings for features and activates
// dev. Publish requests before calling it; the workers drain their queues
// on start.
func Activate(dev virtio.Device, mem *Memory, features uint64, drivers ...*Driver) (*Harness, error) {
	return ActivateDoorbells(dev, mem, features, nil, drivers...)
}

// ActivateDoorbells is Activate with queue doorbells (Env.Doorbells), as a
// VMM that binds ioeventfds gives them.
func ActivateDoorbells(dev virtio.Device, mem *Memory, features uint64, doorbells []*virtio.Doorbell, drivers ...*Driver) (*Harness, error) {
	h := &Harness{Dev: dev}
	env := &virtio.Env{
		Mem:       mem,
		Features:  features,
		Queues:    make([]*virtio.Queue, len(drivers)),
		Doorbells: doorbells,
		Signal: func(q int) {
			h.mu.Lock()
			h.signals = append(h.signals, q)
			h.mu.Unlock()
		},
		Fail: func(err error) {
			h.mu.Lock()
			if h.failure == nil {
				h.failure = err
			}
			h.mu.Unlock()
		},
		ConfigChanged: func() {},
		Log:           slog.New(slog.DiscardHandler),
	}
	for i, d := range drivers {
		q, err := virtio.NewQueue(mem, d.Config(), features)
		if err != nil {
			return nil, err
		}
		env.Queues[i] = q
	}
	h.Env = env
	if err := dev.Activate(context.Background(), env); err != nil {
		return nil, err
	}
	return h, nil
}

// Failure is the first error the device reported through Env.Fail.
func (h *Harness) Failure() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.failure
}

// Signals returns the queues signalled so far, in order.
func (h *Harness) Signals() []int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]int(nil), h.signals...)
}

// WaitUsed waits until the driver's used index reaches idx, the device
// fails, or timeout passes.
func (h *Harness) WaitUsed(d *Driver, idx uint16, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if got := d.UsedIdx(); got == idx {
			return nil
		}
		if err := h.Failure(); err != nil {
			return fmt.Errorf("device failed: %w", err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("used idx %d after %v, want %d", d.UsedIdx(), timeout, idx)
		}
		time.Sleep(time.Millisecond)
	}
}
