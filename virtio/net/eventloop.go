package net

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/gvmm/gvmm/internal/sched"
	"github.com/gvmm/gvmm/virtio"
	"golang.org/x/sys/unix"
)

// PollBackend is a Backend whose received packets can be waited for on a
// file descriptor (readable when ReadPacket may succeed), so the device
// can wait for packets and for its queues' doorbells in one epoll set.
type PollBackend interface {
	Backend
	// PollFD is the descriptor; it stays valid until Close.
	PollFD() int
}

// Event tags in the loop's epoll set.
const (
	evBackend = iota
	evTx
	evRx
	evStop
)

// eventLoop serves both queues and the backend from one goroutine that
// waits in its own epoll set for the backend's descriptor, both queues'
// doorbells (the ioeventfds) and a stop eventfd. It is QEMU's, Cloud
// Hypervisor's and Firecracker's shape: transmit and receive take turns on
// one thread, and a guest kick or an arriving ACK wakes exactly that
// thread. With a goroutine per queue, each woken by the Go runtime's
// poller, every packet woke two goroutines and usually a second runtime
// thread, and they ran in parallel with the vCPU: on a small host (two
// CPUs in the nested benchmark) the vCPU that produces the packets lost
// its CPU to them.
type eventLoop struct {
	dev    *Device
	env    *virtio.Env
	txq    *virtio.Queue
	tx     *transmitter
	rx     *receiver
	fd     int // the backend's
	txBell *virtio.Doorbell
	rxBell *virtio.Doorbell
}

func (l *eventLoop) run(ctx context.Context) {
	if err := l.loop(ctx); err != nil && ctx.Err() == nil {
		l.env.Fail(err)
	}
}

// loop returns nil when ctx ends and an error when a queue broke or the
// epoll set could not be made.
func (l *eventLoop) loop(ctx context.Context) error {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return fmt.Errorf("virtio-net: epoll_create1: %w", err)
	}
	defer unix.Close(epfd)
	stopfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return fmt.Errorf("virtio-net: eventfd: %w", err)
	}
	// The AfterFunc writes stopfd: close it only once that cannot happen.
	stopped := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(stopped)
		var one [8]byte
		binary.NativeEndian.PutUint64(one[:], 1)
		unix.Write(stopfd, one[:])
	})
	defer func() {
		if !stop() {
			<-stopped
		}
		unix.Close(stopfd)
	}()
	for _, r := range []struct {
		fd, tag int
		events  uint32
	}{
		// Edge-triggered: the receiver reads until EAGAIN, except while
		// it waits for buffers, when new packets must not spin the loop.
		{l.fd, evBackend, unix.EPOLLIN | unix.EPOLLET},
		{l.txBell.FD(), evTx, unix.EPOLLIN},
		{l.rxBell.FD(), evRx, unix.EPOLLIN},
		{stopfd, evStop, unix.EPOLLIN},
	} {
		ev := unix.EpollEvent{Events: r.events, Fd: int32(r.tag)}
		if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, r.fd, &ev); err != nil {
			return fmt.Errorf("virtio-net: epoll_ctl: %w", err)
		}
	}
	if err := l.rx.q.DisableNotify(); err != nil {
		return err
	}
	var c virtio.Chain
	events := make([]unix.EpollEvent, 4)
	// Drain both at start: the driver may have queued buffers before
	// DRIVER_OK or notified before the loop existed.
	txKicked, rxKicked, rxReady := true, true, true
	rxWaiting := false // a packet waits for receive buffers
	// The loop goes from system call to system call without the
	// scheduler: pass through it now and then (package sched).
	var yield sched.Yielder
	for {
		yield.Maybe()
		if txKicked {
			if err := virtio.DrainQueue(ctx, l.env, TxQueue, l.txq, &c, l.tx.handle); err != nil {
				return err
			}
		}
		if rxKicked && rxWaiting {
			rxWaiting = false
			if err := l.rx.q.DisableNotify(); err != nil {
				return err
			}
		}
		timeout := -1
		if !rxWaiting && (rxReady || rxKicked) {
			st, err := l.rx.pump()
			if err != nil {
				return err
			}
			rxWaiting = st == pumpNeedBuffers
			switch st {
			case pumpBackendError:
				timeout = int(errBackoff.Milliseconds())
			case pumpMore:
				timeout = 0 // serve transmit, then receive again
			}
		}
		txKicked, rxKicked, rxReady = false, false, timeout >= 0
		n, err := unix.EpollWait(epfd, events, timeout)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("virtio-net: epoll_wait: %w", err)
		}
		for _, ev := range events[:n] {
			switch ev.Fd {
			case evBackend:
				rxReady = true
			case evTx:
				txKicked = true
				if err := l.txBell.Clear(); err != nil {
					return err
				}
			case evRx:
				rxKicked = true
				if err := l.rxBell.Clear(); err != nil {
					return err
				}
			case evStop:
				return nil
			}
		}
		if ctx.Err() != nil {
			return nil
		}
	}
}
