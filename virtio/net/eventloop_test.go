package net_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"github.com/gvmm/gvmm/virtio"
	virtionet "github.com/gvmm/gvmm/virtio/net"
	"github.com/gvmm/gvmm/virtio/virtiotest"
	"golang.org/x/sys/unix"
)

// pollFake is a PollBackend over a SOCK_SEQPACKET socketpair, which keeps
// packet boundaries as a TAP does: the test writes packets for the guest
// into peer; packets the guest sends go to the fakeBackend's tx channel.
type pollFake struct {
	*fakeBackend
	fd, peer int
}

func newPollFake(t *testing.T) *pollFake {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fds[0]); unix.Close(fds[1]) })
	return &pollFake{fakeBackend: newFake(0), fd: fds[0], peer: fds[1]}
}

func (p *pollFake) PollFD() int { return p.fd }

func (p *pollFake) ReadPacket(b []byte) (int, error) {
	n, err := unix.Read(p.fd, b)
	if errors.Is(err, unix.EAGAIN) {
		return 0, virtionet.ErrWouldBlock
	}
	return n, err
}

func (p *pollFake) WaitPacket(ctx context.Context) error {
	panic("the event loop waits in epoll, not in WaitPacket")
}

func (p *pollFake) send(t *testing.T, pkt []byte) {
	t.Helper()
	if _, err := unix.Write(p.peer, pkt); err != nil {
		t.Fatal(err)
	}
}

// ring increments a doorbell's eventfd as KVM does for an ioeventfd.
func ring(t *testing.T, db *virtio.Doorbell) {
	t.Helper()
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	if _, err := unix.Write(db.FD(), one[:]); err != nil {
		t.Fatal(err)
	}
}

// TestEventLoop: with a pollable backend and doorbells, one loop serves
// both queues. Transmit keeps going while a received packet waits for
// buffers; the receive doorbell resumes that packet where it stopped,
// after more packets queued behind it; Reset ends the loop.
func TestEventLoop(t *testing.T) {
	for _, features := range []uint64{virtionet.FMrgRxbuf | virtio.FEventIdx, 0} {
		e := newEnv()
		be := newPollFake(t)
		dev, err := virtionet.New(be, virtionet.Options{})
		if err != nil {
			t.Fatal(err)
		}
		var bells []*virtio.Doorbell
		for range 2 {
			db, err := virtio.NewDoorbell()
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			bells = append(bells, db)
		}
		h, err := virtiotest.ActivateDoorbells(dev, e.mem, baseFeatures|features, bells, e.rx, e.tx)
		if err != nil {
			t.Fatal(err)
		}

		// A packet arrives with no receive buffer posted.
		in1 := append(header(0, 0, 0), frame(1514, 1)...)
		in2 := append(header(0, 0, 0), frame(60, 2)...)
		be.send(t, in1)
		be.send(t, in2)
		time.Sleep(20 * time.Millisecond)
		if e.rx.UsedIdx() != 0 || h.Failure() != nil {
			t.Fatalf("used %d with no buffers, failure %v", e.rx.UsedIdx(), h.Failure())
		}

		// Transmit is not held up by it.
		out := append(header(0, 0, 0), frame(1000, 3)...)
		e.tx.AddChain(put(e, out))
		ring(t, bells[virtionet.TxQueue])
		if err := h.WaitUsed(e.tx, 1, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		select {
		case got := <-be.tx:
			if !bytes.Equal(got, out) {
				t.Fatalf("backend got % x..., want % x...", got[:16], out[:16])
			}
		case <-time.After(5 * time.Second):
			t.Fatal("transmitted packet never reached the backend")
		}

		// Buffers for both packets, then the driver's notification.
		var addrs []uint64
		for range 2 {
			a := e.alloc(1526)
			addrs = append(addrs, a)
			e.rx.AddChain(virtiotest.Buf{Addr: a, Len: 1526, Write: true})
		}
		if features == 0 {
			dev.Notify(virtionet.RxQueue) // as after an MMIO exit
		} else {
			ring(t, bells[virtionet.RxQueue])
		}
		if err := h.WaitUsed(e.rx, 2, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { dev.Reset(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("Reset did not end the event loop")
		}
		used := e.rx.TakeUsed()
		for i, want := range [][]byte{in1, in2} {
			want = append([]byte(nil), want...)
			binary.LittleEndian.PutUint16(want[10:], 1)
			if used[i].Len != uint32(len(want)) {
				t.Fatalf("used[%d] = %+v, want length %d", i, used[i], len(want))
			}
			if got := e.mem.GuestRead(addrs[i], uint64(len(want))); !bytes.Equal(got, want) {
				t.Fatalf("packet %d arrived as % x..., want % x...", i, got[:16], want[:16])
			}
		}
		if st := dev.Stats(); st.RxPackets != 2 || st.TxPackets != 1 || h.Failure() != nil {
			t.Fatalf("stats %+v, failure %v", st, h.Failure())
		}
	}
}
