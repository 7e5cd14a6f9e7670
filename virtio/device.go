package virtio

import (
	"context"
	"log/slog"
	"sync"

	"github.com/gvmm/gvmm/internal/sched"
)

// Device is the type-specific half of a virtio device; the transport (PCI)
// owns status, features, queues and interrupts and calls these methods.
type Device interface {
	// Type is the virtio device ID.
	Type() DeviceType
	// Features are the device-type feature bits offered; the transport adds
	// VIRTIO_F_VERSION_1, VIRTIO_F_EVENT_IDX and VIRTIO_F_INDIRECT_DESC.
	Features() uint64
	// QueueSizes are the maximum sizes of the device's queues, one each.
	QueueSizes() []uint16
	// ReadConfig and WriteConfig access the device-specific configuration
	// (§4.1.4.6) at off; out-of-range bytes read as zero and are ignored.
	ReadConfig(off uint32, p []byte)
	WriteConfig(off uint32, p []byte)
	// Activate starts the device after DRIVER_OK. Workers it starts must
	// stop when ctx ends, and must not call the transport other than
	// through env.
	Activate(ctx context.Context, env *Env) error
	// Notify is the driver's notification for queue q (after Activate).
	Notify(q int)
	// Reset stops the device and waits until it no longer touches guest
	// memory or env; it may be called without Activate.
	Reset()
}

// Env is what an activated device gets from its transport.
type Env struct {
	Mem GuestMemory
	// Features are the negotiated features.
	Features uint64
	// Queues has one entry per queue in QueueSizes order; nil where the
	// driver did not enable the queue.
	Queues []*Queue
	// Doorbells has, where the VMM bound one, each queue's notification
	// eventfd (PCIOptions.Doorbells), in Queues order; nil or shorter when
	// there are none. A device waits on its queues through NewKick, which
	// uses them, and must not read them otherwise.
	Doorbells []*Doorbell
	// Signal raises queue q's interrupt; call it when q.NeedsInterrupt
	// reports true.
	Signal func(q int)
	// Fail marks the device broken (DEVICE_NEEDS_RESET and a configuration
	// interrupt); the device must stop using the queue that failed.
	Fail func(err error)
	// ConfigChanged bumps config_generation and raises the configuration
	// change interrupt, after the device changed its configuration.
	ConfigChanged func()
	Log           *slog.Logger
}

// Handler processes one chain of queue q and returns how many bytes it wrote
// into the chain's writable buffers. An error breaks the device; a request
// the device can answer with an error status is not an error.
type Handler func(ctx context.Context, q int, c *Chain) (written uint32, err error)

// Workers runs one goroutine per enabled queue that drains the queue with a
// Handler each time it is notified. It is how blk and rng process requests
// off the vCPU threads.
type Workers struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	kick   []*Kick
}

// StartWorkers starts a worker for each non-nil queue of env.
func StartWorkers(ctx context.Context, env *Env, h Handler) *Workers {
	ctx, cancel := context.WithCancel(ctx)
	w := &Workers{cancel: cancel, kick: make([]*Kick, len(env.Queues))}
	for i, q := range env.Queues {
		if q == nil {
			continue
		}
		w.kick[i] = NewKick(ctx, env, i)
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			runQueue(ctx, env, i, q, w.kick[i], h)
		}()
	}
	return w
}

// Notify wakes queue q's worker; it never blocks and ignores unknown queues.
func (w *Workers) Notify(q int) {
	if q < 0 || q >= len(w.kick) || w.kick[q] == nil {
		return
	}
	w.kick[q].Notify()
}

// Stop ends the workers and waits for them.
func (w *Workers) Stop() {
	w.cancel()
	w.wg.Wait()
}

// runQueue drains q at start (the driver may have queued buffers before
// DRIVER_OK, or notified before the worker existed) and after each kick.
func runQueue(ctx context.Context, env *Env, qi int, q *Queue, kick *Kick, h Handler) {
	var c Chain
	// A busy queue takes the worker from doorbell read to I/O system call
	// and back without the scheduler: pass through it now and then
	// (package sched).
	var yield sched.Yielder
	for {
		yield.Maybe()
		err := DrainQueue(ctx, env, qi, q, &c, h)
		if err == nil {
			err = kick.Wait(ctx)
		}
		if err != nil {
			if ctx.Err() == nil {
				env.Fail(err)
			}
			return
		}
	}
}

// DrainQueue processes queue qi's chains with h until the queue is empty
// with notifications re-enabled, signalling the driver after each batch
// as it asks. c is scratch space. Workers call it on each kick; a device
// with its own event loop may call it instead.
func DrainQueue(ctx context.Context, env *Env, qi int, q *Queue, c *Chain, h Handler) error {
	for ctx.Err() == nil {
		if err := q.DisableNotify(); err != nil {
			return err
		}
		for ctx.Err() == nil {
			ok, err := q.Pop(c)
			if err != nil {
				return err
			}
			if !ok {
				break
			}
			n, err := h(ctx, qi, c)
			if err != nil {
				return err
			}
			if err := q.Push(c.Head, n); err != nil {
				return err
			}
		}
		irq, err := q.NeedsInterrupt()
		if err != nil {
			return err
		}
		if irq {
			env.Signal(qi)
		}
		more, err := q.EnableNotify()
		if err != nil {
			return err
		}
		if !more {
			return nil
		}
	}
	return nil
}
