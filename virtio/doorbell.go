package virtio

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// Doorbell is one queue's notification eventfd. The VMM binds it to the
// queue's notification register with KVM_IOEVENTFD, so a driver's
// notification increments it without leaving the kernel, and hands it to
// the transport (PCIOptions.Doorbells); the queue's worker then waits on it
// itself: in a blocking read (Wait), or in its own epoll set (FD, then
// Clear). A notification therefore wakes exactly the worker's thread, with
// no goroutine in between to read the eventfd and pass the notification
// on: on a loaded host every such hop is a thread wakeup, and in the
// networking path it is paid per packet. The eventfd is blocking, so it is
// not in the Go runtime's poller either, which would otherwise wake its
// polling thread on every kick for nothing.
type Doorbell struct {
	fd int             // the eventfd, for KVM_IOEVENTFD and epoll
	f  *os.File        // the same fd, blocking, not in the runtime's poller
	rc syscall.RawConn // f's, for Clear
}

// NewDoorbell makes a doorbell (eventfd(2), blocking, close-on-exec).
func NewDoorbell() (*Doorbell, error) {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("virtio: doorbell eventfd: %w", err)
	}
	f := os.NewFile(uintptr(fd), "virtio-doorbell")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("virtio: doorbell: %w", err)
	}
	return &Doorbell{fd: fd, f: f, rc: rc}, nil
}

// FD is the eventfd's descriptor, for KVM_IOEVENTFD. It stays valid until
// Close.
func (d *Doorbell) FD() int { return d.fd }

// Ring notifies whoever waits on the doorbell; rings before the wait
// coalesce into one wakeup. Ringing a closed doorbell does nothing.
func (d *Doorbell) Ring() {
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	d.f.Write(one[:]) // would block only at a count of 2^64-2
}

// Wait blocks until the doorbell has been rung since the previous Wait
// returned, and consumes the rings. It fails on a closed doorbell.
func (d *Doorbell) Wait() error {
	var b [8]byte
	if _, err := d.f.Read(b[:]); err != nil {
		return fmt.Errorf("virtio: doorbell: %w", err)
	}
	return nil
}

// Clear consumes the rings, for a caller that waits for the doorbell in
// its own epoll set (FD) rather than with Wait. Call it only when epoll
// reported the doorbell readable and nobody else reads it: it blocks when
// the doorbell was not rung.
func (d *Doorbell) Clear() error {
	var rerr error
	if err := d.rc.Read(func(fd uintptr) bool {
		var b [8]byte
		_, rerr = unix.Read(int(fd), b[:])
		return true
	}); err != nil {
		return fmt.Errorf("virtio: doorbell: %w", err)
	}
	if rerr != nil {
		return fmt.Errorf("virtio: doorbell: read: %w", rerr)
	}
	return nil
}

// Close releases the eventfd. A Wait in progress is not interrupted (the
// read blocks in the kernel): close a doorbell only once its workers have
// stopped, as the VMM does after PCI.Close. A Wait after Close fails.
func (d *Doorbell) Close() error {
	if err := d.f.Close(); err != nil {
		return fmt.Errorf("virtio: close doorbell: %w", err)
	}
	return nil
}

// Kick is how one queue's worker waits for the driver's notifications: on
// the queue's Doorbell when the transport has one (Env.Doorbells), or on a
// channel otherwise. The device's Notify calls Kick.Notify for the
// notifications that reach it as calls (an MMIO exit, a notification held
// while the device was quiesced); a doorbell bound to an ioeventfd gets
// the rest directly.
type Kick struct {
	db *Doorbell
	ch chan struct{}
}

// NewKick returns queue q's kick for one activation: ctx is the
// activation's context, and when it ends the kick is notified so that a
// Wait in progress returns.
func NewKick(ctx context.Context, env *Env, q int) *Kick {
	k := &Kick{}
	if q >= 0 && q < len(env.Doorbells) && env.Doorbells[q] != nil {
		k.db = env.Doorbells[q]
	} else {
		k.ch = make(chan struct{}, 1)
	}
	// A ring left over when the activation ends wakes the next one's
	// worker once for nothing, which is harmless.
	context.AfterFunc(ctx, k.Notify)
	return k
}

// Notify wakes the worker, now or at its next Wait; it never blocks.
func (k *Kick) Notify() {
	if k.db != nil {
		k.db.Ring()
		return
	}
	select {
	case k.ch <- struct{}{}:
	default:
	}
}

// Wait blocks until a notification or until ctx ends, when it returns
// ctx's error. It may return early with no notification: callers re-check
// their queue.
func (k *Kick) Wait(ctx context.Context) error {
	if k.db != nil {
		if err := ctx.Err(); err != nil {
			return err
		}
		err := k.db.Wait()
		if cerr := ctx.Err(); cerr != nil {
			return cerr
		}
		return err
	}
	select {
	case <-ctx.Done():
	case <-k.ch:
	}
	return ctx.Err() // nil for a notification, unless ctx also ended
}
