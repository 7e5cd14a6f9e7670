package console_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/gvmm/gvmm/virtio"
	"github.com/gvmm/gvmm/virtio/console"
	"github.com/gvmm/gvmm/virtio/virtiotest"
)

const (
	base     = 0x100000
	timeout  = 10 * time.Second
	features = virtio.FVersion1
	allFeat  = virtio.FVersion1 | virtio.FEventIdx | virtio.FIndirectDesc
)

// guestQ is the guest side of one queue: it recycles descriptors through a
// free list (virtiotest.Driver.AddChain never does), remembers each posted
// chain's buffers, and reads back what the device wrote.
type guestQ struct {
	d      *virtiotest.Driver
	alloc  func(uint64) uint64
	free   []uint16
	chains map[uint16][]virtiotest.Buf
	descs  map[uint16][]uint16
}

func newGuestQ(d *virtiotest.Driver, alloc func(uint64) uint64) *guestQ {
	g := &guestQ{d: d, alloc: alloc, chains: map[uint16][]virtiotest.Buf{}, descs: map[uint16][]uint16{}}
	for i := range d.Size {
		g.free = append(g.free, i)
	}
	return g
}

// post makes bufs available as one chain (through an indirect table if
// asked) and returns its head; it reports false when too few descriptors
// are free.
func (g *guestQ) post(indirect bool, bufs ...virtiotest.Buf) (uint16, bool) {
	need := len(bufs)
	if indirect {
		need = 1
	}
	if len(g.free) < need {
		return 0, false
	}
	ids := g.free[:need:need]
	g.free = g.free[need:]
	flags := func(b virtiotest.Buf, last bool) uint16 {
		var f uint16
		if b.Write {
			f |= virtiotest.DescWrite
		}
		if !last {
			f |= virtiotest.DescNext
		}
		return f
	}
	if indirect {
		table := g.alloc(16 * uint64(len(bufs)))
		for i, b := range bufs {
			g.d.SetDesc(table, uint16(i), b.Addr, b.Len, flags(b, i == len(bufs)-1), uint16(i+1))
		}
		g.d.SetDesc(g.d.Desc, ids[0], table, uint32(16*len(bufs)), virtiotest.DescIndirect, 0)
	} else {
		for i, b := range bufs {
			var next uint16
			if i+1 < len(ids) {
				next = ids[i+1]
			}
			g.d.SetDesc(g.d.Desc, ids[i], b.Addr, b.Len, flags(b, i == len(bufs)-1), next)
		}
	}
	g.chains[ids[0]] = bufs
	g.descs[ids[0]] = ids
	g.d.Publish(ids[0])
	return ids[0], true
}

// take returns used chains' data (the first Len writable bytes of each, in
// used order) and their used lengths, freeing their descriptors.
func (g *guestQ) take() (data []byte, lens []uint32) {
	for _, u := range g.d.TakeUsed() {
		head := uint16(u.ID)
		bufs, ok := g.chains[head]
		if !ok {
			panic("device used a chain that is not in flight")
		}
		left := u.Len
		for _, b := range bufs {
			if !b.Write || left == 0 {
				continue
			}
			n := min(left, b.Len)
			data = append(data, g.d.Mem.GuestRead(b.Addr, uint64(n))...)
			left -= n
		}
		lens = append(lens, u.Len)
		g.free = append(g.free, g.descs[head]...)
		delete(g.chains, head)
		delete(g.descs, head)
	}
	return data, lens
}

// rig is a device with both queues in one fake guest memory and a host side
// attached through net.Pipe.
type rig struct {
	mem    *virtiotest.Memory
	rx, tx *guestQ
	dev    *console.Device
	h      *virtiotest.Harness
	host   net.Conn // the host's end
	done   <-chan struct{}
}

// newRig lays out the queues (the transmit rings come from the receive
// driver's heap, as virtiotest.NewDriver puts every queue at the start of
// memory) without activating the device.
func newRig(t *testing.T, size uint16) *rig {
	t.Helper()
	mem := virtiotest.NewMemory(base, 1<<20)
	// Tests write rings as the guest while the device runs.
	mem.SnapshotReads = true
	rxd := virtiotest.NewDriver(mem, size)
	n := uint64(size)
	txd := &virtiotest.Driver{Mem: mem, Size: size, Desc: rxd.Alloc(16 * n), Avail: rxd.Alloc(6 + 2*n), Used: rxd.Alloc(6 + 8*n)}
	r := &rig{mem: mem, rx: newGuestQ(rxd, rxd.Alloc), tx: newGuestQ(txd, rxd.Alloc), dev: console.New(console.Options{})}
	t.Cleanup(func() { r.dev.Close() })
	return r
}

func (r *rig) attach(t *testing.T) {
	t.Helper()
	devEnd, hostEnd := net.Pipe()
	r.host = hostEnd
	r.done = r.dev.SetHost(devEnd)
	t.Cleanup(func() { hostEnd.Close() })
}

func (r *rig) activate(t *testing.T, feat uint64) {
	t.Helper()
	h, err := virtiotest.Activate(r.dev, r.mem, feat, r.rx.d, r.tx.d)
	if err != nil {
		t.Fatal(err)
	}
	r.h = h
}

// postRX posts one receive chain with writable buffers of the given sizes.
func (r *rig) postRX(t *testing.T, indirect bool, sizes ...uint32) {
	t.Helper()
	var bufs []virtiotest.Buf
	for _, n := range sizes {
		bufs = append(bufs, virtiotest.Buf{Addr: r.rx.alloc(uint64(n)), Len: n, Write: true})
	}
	if _, ok := r.rx.post(indirect, bufs...); !ok {
		t.Fatal("out of receive descriptors")
	}
	r.dev.Notify(console.ReceiveQ)
}

// postTX posts p as one transmit chain split into the given sizes (the
// last piece takes the rest).
func (r *rig) postTX(t *testing.T, indirect bool, p []byte, sizes ...int) {
	t.Helper()
	var bufs []virtiotest.Buf
	for i := 0; len(p) > 0; i++ {
		n := len(p)
		if i < len(sizes) && sizes[i] < n {
			n = sizes[i]
		}
		a := r.tx.alloc(uint64(n))
		r.mem.GuestWrite(a, p[:n])
		bufs = append(bufs, virtiotest.Buf{Addr: a, Len: uint32(n)})
		p = p[n:]
	}
	if _, ok := r.tx.post(indirect, bufs...); !ok {
		t.Fatal("out of transmit descriptors")
	}
	r.dev.Notify(console.TransmitQ)
}

// recv polls the receive queue until want bytes arrived and returns them
// with the used lengths.
func (r *rig) recv(t *testing.T, want int) ([]byte, []uint32) {
	t.Helper()
	var got []byte
	var lens []uint32
	deadline := time.Now().Add(timeout)
	for len(got) < want {
		b, l := r.rx.take()
		got, lens = append(got, b...), append(lens, l...)
		if r.h != nil && r.h.Failure() != nil {
			t.Fatalf("device failed: %v", r.h.Failure())
		}
		if time.Now().After(deadline) {
			t.Fatalf("guest received %d of %d bytes: %q", len(got), want, got)
		}
		time.Sleep(time.Millisecond)
	}
	return got, lens
}

// waitTX waits until n transmit chains were used, and checks each used
// length is zero.
func (r *rig) waitTX(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for n > 0 {
		_, lens := r.tx.take()
		for _, l := range lens {
			if l != 0 {
				t.Errorf("transmit chain used with length %d", l)
			}
		}
		n -= len(lens)
		if time.Now().After(deadline) {
			t.Fatalf("%d transmit chains not used", n)
		}
		time.Sleep(time.Millisecond)
	}
}

// readHost reads n bytes from the host end.
func readHost(t *testing.T, c net.Conn, n int) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(timeout))
	b := make([]byte, n)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatalf("host read %d bytes: %v", n, err)
	}
	return b
}

// writeHost writes p from the host end in the background; the returned
// channel yields the write's error.
func writeHost(c net.Conn, ps ...[]byte) <-chan error {
	ch := make(chan error, 1)
	go func() {
		for _, p := range ps {
			if _, err := c.Write(p); err != nil {
				ch <- err
				return
			}
		}
		ch <- nil
	}()
	return ch
}

func wait(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// checkDirty stops the device and checks that every byte it changed in
// guest RAM was marked dirty.
func (r *rig) checkDirty(t *testing.T, wantChanged bool) {
	t.Helper()
	r.dev.Reset()
	bad, changed := r.mem.Undirtied(8)
	if len(bad) > 0 {
		t.Fatalf("bytes written without dirty marking: %#x", bad)
	}
	if wantChanged && changed == 0 {
		t.Fatal("device wrote nothing")
	}
}

func TestHostToGuest(t *testing.T) {
	msg := []byte("GET /status 42\n")
	for _, tc := range []struct {
		name     string
		feat     uint64
		chains   [][]uint32 // receive chains, each a list of buffer sizes
		indirect bool
		writes   [][]byte
		wantLens []uint32
	}{
		{name: "one buffer", feat: features, chains: [][]uint32{{256}}, writes: [][]byte{msg}, wantLens: []uint32{15}},
		{name: "small buffers", feat: features, chains: [][]uint32{{4}, {4}, {4}, {4}}, writes: [][]byte{msg}, wantLens: []uint32{4, 4, 4, 3}},
		{name: "1-byte buffers, event idx", feat: allFeat,
			chains: [][]uint32{{1}, {1}, {1}, {1}, {1}, {1}, {1}, {1}, {1}, {1}, {1}, {1}, {1}, {1}, {1}},
			writes: [][]byte{msg}, wantLens: []uint32{1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}},
		{name: "segmented chain", feat: features, chains: [][]uint32{{5, 1, 7}, {64}}, writes: [][]byte{msg}, wantLens: []uint32{13, 2}},
		{name: "indirect chains", feat: allFeat, indirect: true, chains: [][]uint32{{3, 3}, {100}}, writes: [][]byte{msg}, wantLens: []uint32{6, 9}},
		{name: "several host writes", feat: allFeat, chains: [][]uint32{{8}, {8}, {8}},
			writes: [][]byte{msg[:2], msg[2:9], msg[9:]}, wantLens: nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, 64)
			r.attach(t)
			for _, c := range tc.chains {
				r.postRX(t, tc.indirect, c...)
			}
			r.activate(t, tc.feat)
			var want []byte
			for _, w := range tc.writes {
				want = append(want, w...)
			}
			werr := writeHost(r.host, tc.writes...)
			got, lens := r.recv(t, len(want))
			if !bytes.Equal(got, want) {
				t.Fatalf("guest got %q, want %q", got, want)
			}
			if tc.wantLens != nil && !equal(lens, tc.wantLens) {
				t.Fatalf("used lengths %v, want %v", lens, tc.wantLens)
			}
			if err := <-werr; err != nil {
				t.Fatal(err)
			}
			if len(r.h.Signals()) == 0 {
				t.Fatal("no interrupt")
			}
			if s := r.dev.Stats(); s.ToGuest != uint64(len(want)) {
				t.Fatalf("stats %+v", s)
			}
			r.checkDirty(t, true)
		})
	}
}

func equal(a, b []uint32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestGuestToHost(t *testing.T) {
	big := make([]byte, 3*console.ChunkSize+123) // one chain, streamed in pieces
	rand.Read(big)
	for _, tc := range []struct {
		name     string
		feat     uint64
		indirect bool
		msgs     [][]byte
		split    []int
	}{
		{name: "one chain", feat: features, msgs: [][]byte{[]byte("OK 42\n")}},
		{name: "in order", feat: features, msgs: [][]byte{[]byte("first "), []byte("second "), []byte("third\n")}},
		{name: "segmented", feat: allFeat, msgs: [][]byte{[]byte("a segmented reply\n")}, split: []int{1, 5, 3}},
		{name: "indirect", feat: allFeat, indirect: true, msgs: [][]byte{[]byte("indirect "), []byte("reply\n")}, split: []int{2, 2}},
		{name: "larger than a chunk", feat: features, msgs: [][]byte{big}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, 64)
			r.attach(t)
			var want []byte
			for _, m := range tc.msgs {
				r.postTX(t, tc.indirect, m, tc.split...)
				want = append(want, m...)
			}
			r.activate(t, tc.feat)
			if got := readHost(t, r.host, len(want)); !bytes.Equal(got, want) {
				t.Fatalf("host got %q, want %q", trunc(got), trunc(want))
			}
			r.waitTX(t, len(tc.msgs))
			if s := r.dev.Stats(); s.ToHost != uint64(len(want)) || s.Discarded != 0 {
				t.Fatalf("stats %+v", s)
			}
			// A transmit chain is only read: the device must not have
			// written guest RAM beyond the used ring.
			r.checkDirty(t, true)
		})
	}
}

func trunc(b []byte) []byte {
	if len(b) > 64 {
		return b[:64]
	}
	return b
}

// TestLargeTransfers moves 1 MiB each way at once through recycled
// buffers and compares checksums.
func TestLargeTransfers(t *testing.T) {
	const total = 1 << 20
	for _, feat := range []uint64{features, allFeat} {
		r := newRig(t, 64)
		r.attach(t)
		r.activate(t, feat)

		toGuest, toHost := make([]byte, total), make([]byte, total)
		rand.Read(toGuest)
		rand.Read(toHost)
		werr := writeHost(r.host, toGuest)
		hostSum := make(chan [32]byte, 1)
		go func() {
			h := sha256.New()
			io.CopyN(h, r.host, total)
			hostSum <- [32]byte(h.Sum(nil))
		}()

		// 32 receive buffers of 4 KiB, reposted as they come back.
		const rxBuf = 4096
		rxAddr := r.rx.alloc(32 * rxBuf)
		for i := range uint64(32) {
			r.rx.post(false, virtiotest.Buf{Addr: rxAddr + i*rxBuf, Len: rxBuf, Write: true})
		}
		r.dev.Notify(console.ReceiveQ)
		// Transmit chains of 16 KiB in 8 slots, each of two descriptors.
		const txBuf = 16 << 10
		txAddr := r.tx.alloc(8 * txBuf)
		slots := map[uint64]bool{}
		inFlight := map[uint16]uint64{}

		guestSum := sha256.New()
		received, sent := 0, 0
		deadline := time.Now().Add(30 * time.Second)
		for received < total || sent < total || len(inFlight) > 0 {
			if time.Now().After(deadline) {
				t.Fatalf("stalled: received %d, sent %d, %d in flight", received, sent, len(inFlight))
			}
			if f := r.h.Failure(); f != nil {
				t.Fatal(f)
			}
			progress := false
			// Receive: consume and repost each buffer at its address.
			for _, u := range r.rx.d.TakeUsed() {
				head := uint16(u.ID)
				b := r.rx.chains[head][0]
				guestSum.Write(r.mem.GuestRead(b.Addr, uint64(u.Len)))
				received += int(u.Len)
				r.rx.free = append(r.rx.free, r.rx.descs[head]...)
				delete(r.rx.chains, head)
				delete(r.rx.descs, head)
				r.rx.post(false, b)
				progress = true
			}
			if progress {
				r.dev.Notify(console.ReceiveQ)
			}
			// Transmit: free used slots, fill free ones.
			for _, u := range r.tx.d.TakeUsed() {
				head := uint16(u.ID)
				delete(slots, inFlight[head])
				delete(inFlight, head)
				r.tx.free = append(r.tx.free, r.tx.descs[head]...)
				delete(r.tx.chains, head)
				progress = true
			}
			for s := uint64(0); s < 8 && sent < total; s++ {
				if slots[s] {
					continue
				}
				n := min(txBuf, total-sent)
				a := txAddr + s*txBuf
				r.mem.GuestWrite(a, toHost[sent:sent+n])
				half := uint32(n / 3)
				head, ok := r.tx.post(false, virtiotest.Buf{Addr: a, Len: half}, virtiotest.Buf{Addr: a + uint64(half), Len: uint32(n) - half})
				if !ok {
					break
				}
				slots[s] = true
				inFlight[head] = s
				sent += n
				r.dev.Notify(console.TransmitQ)
				progress = true
			}
			if !progress {
				time.Sleep(100 * time.Microsecond)
			}
		}
		if err := <-werr; err != nil {
			t.Fatal(err)
		}
		if received != total || [32]byte(guestSum.Sum(nil)) != sha256.Sum256(toGuest) {
			t.Fatalf("host to guest: %d bytes, checksum mismatch", received)
		}
		select {
		case sum := <-hostSum:
			if sum != sha256.Sum256(toHost) {
				t.Fatal("guest to host: checksum mismatch")
			}
		case <-time.After(timeout):
			t.Fatal("host did not receive 1 MiB")
		}
		if s := r.dev.Stats(); s.ToGuest != total || s.ToHost != total || s.Discarded != 0 {
			t.Fatalf("stats %+v", s)
		}
		r.checkDirty(t, true)
	}
}

func TestDetachAttach(t *testing.T) {
	r := newRig(t, 64)
	r.attach(t)
	r.activate(t, allFeat)
	first, firstDone := r.host, r.done

	// Host A sends a last word and hangs up: the guest still gets it, the
	// device closes its end, and A's channel closes.
	r.postRX(t, false, 64)
	writeHost(first, []byte("bye from A"))
	if got, _ := r.recv(t, 10); string(got) != "bye from A" {
		t.Fatalf("guest got %q", got)
	}
	first.Close()
	select {
	case <-firstDone:
	case <-time.After(timeout):
		t.Fatal("EOF on the host side did not detach it")
	}

	// Nothing attached: guest output is used and discarded, and counted.
	r.postTX(t, false, []byte("nobody hears this"))
	r.waitTX(t, 1)
	if s := r.dev.Stats(); s.Discarded != 17 || s.ToHost != 0 {
		t.Fatalf("stats %+v", s)
	}

	// Host B attaches: both directions work again.
	r.attach(t)
	second, secondDone := r.host, r.done
	r.postRX(t, false, 64)
	writeHost(second, []byte("hello B"))
	if got, _ := r.recv(t, 7); string(got) != "hello B" {
		t.Fatalf("guest got %q", got)
	}
	r.postTX(t, false, []byte("reply to B"))
	if got := readHost(t, second, 10); string(got) != "reply to B" {
		t.Fatalf("host B got %q", got)
	}
	r.waitTX(t, 1)

	// Host C replaces B: B is closed (its reads see EOF) and C works.
	r.attach(t)
	select {
	case <-secondDone:
	case <-time.After(timeout):
		t.Fatal("SetHost did not detach the previous host side")
	}
	second.SetReadDeadline(time.Now().Add(timeout))
	if _, err := second.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("replaced host side read: %v", err)
	}
	r.postTX(t, false, []byte("to C"))
	if got := readHost(t, r.host, 4); string(got) != "to C" {
		t.Fatalf("host C got %q", got)
	}
	r.waitTX(t, 1)

	// SetHost(nil) detaches; Close after that is harmless.
	third := r.done
	if ch := r.dev.SetHost(nil); ch != nil {
		t.Fatal("SetHost(nil) returned a channel")
	}
	<-third
	if s := r.dev.Stats(); s.ToHost != 14 || s.ToGuest != 17 || s.Discarded != 17 {
		t.Fatalf("stats %+v", s)
	}
	r.checkDirty(t, true)
}

// TestBackpressureAndReset: with no receive buffers the device stops
// reading the host side instead of dropping or buffering; bytes a reset
// interrupts are delivered after the next activation.
func TestBackpressureAndReset(t *testing.T) {
	r := newRig(t, 16)
	r.attach(t)
	r.postRX(t, false, 4)
	r.activate(t, features)
	werr := writeHost(r.host, []byte("0123456789"), []byte("second write"))
	if got, _ := r.recv(t, 4); string(got) != "0123" {
		t.Fatalf("guest got %q", got)
	}
	select {
	case err := <-werr:
		t.Fatalf("host write completed (%v) though the guest has no buffers", err)
	case <-time.After(50 * time.Millisecond):
	}
	r.dev.Reset()

	// A new driver (a guest reboot): the same device, fresh rings.
	r2 := newRig(t, 16)
	r2.dev = r.dev
	r2.postRX(t, false, 64)
	r2.postRX(t, false, 64)
	r2.activate(t, allFeat)
	if got, _ := r2.recv(t, 18); string(got) != "456789second write" {
		t.Fatalf("after reset the guest got %q", got)
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	r2.checkDirty(t, true)
}

// TestResetWhileHostStalls: a host side that never reads must not hold up
// a reset or Close.
func TestResetWhileHostStalls(t *testing.T) {
	r := newRig(t, 16)
	r.attach(t)
	r.postTX(t, false, []byte("the host never reads this"))
	r.activate(t, features)
	time.Sleep(20 * time.Millisecond) // let the worker block in the write
	done := make(chan struct{})
	go func() {
		r.dev.Reset()
		r.dev.Close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(timeout):
		t.Fatal("Reset/Close blocked on a stalled host side")
	}
	select {
	case <-r.done:
	case <-time.After(timeout):
		t.Fatal("Close did not detach the host side")
	}
}

func TestHostileChainBreaksQueue(t *testing.T) {
	const outside = base + 64<<20
	for _, tc := range []struct {
		name string
		q    int
		// bad writes descriptors 0 and 1 of the queue's table.
		bad  func(d *virtiotest.Driver, buf uint64)
		want error
	}{
		{name: "rx loop", q: console.ReceiveQ, want: virtio.ErrChainLoop, bad: func(d *virtiotest.Driver, buf uint64) {
			d.SetDesc(d.Desc, 0, buf, 8, virtiotest.DescWrite|virtiotest.DescNext, 0)
		}},
		{name: "rx outside RAM", q: console.ReceiveQ, want: virtio.ErrDescRange, bad: func(d *virtiotest.Driver, buf uint64) {
			d.SetDesc(d.Desc, 0, outside, 8, virtiotest.DescWrite, 0)
		}},
		{name: "rx length overflow", q: console.ReceiveQ, want: virtio.ErrDescRange, bad: func(d *virtiotest.Driver, buf uint64) {
			d.SetDesc(d.Desc, 0, 1<<64-4, 8, virtiotest.DescWrite, 0)
		}},
		{name: "rx readable after writable", q: console.ReceiveQ, want: virtio.ErrDirection, bad: func(d *virtiotest.Driver, buf uint64) {
			d.SetDesc(d.Desc, 0, buf, 8, virtiotest.DescWrite|virtiotest.DescNext, 1)
			d.SetDesc(d.Desc, 1, buf+8, 8, 0, 0)
		}},
		{name: "tx loop", q: console.TransmitQ, want: virtio.ErrChainLoop, bad: func(d *virtiotest.Driver, buf uint64) {
			d.SetDesc(d.Desc, 0, buf, 8, virtiotest.DescNext, 1)
			d.SetDesc(d.Desc, 1, buf, 8, virtiotest.DescNext, 0)
		}},
		{name: "tx outside RAM", q: console.TransmitQ, want: virtio.ErrDescRange, bad: func(d *virtiotest.Driver, buf uint64) {
			d.SetDesc(d.Desc, 0, outside, 1<<20, 0, 0)
		}},
		{name: "tx indirect without the feature", q: console.TransmitQ, want: virtio.ErrIndirect, bad: func(d *virtiotest.Driver, buf uint64) {
			d.SetDesc(d.Desc, 0, buf, 16, virtiotest.DescIndirect, 0)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, 16)
			r.attach(t)
			g := r.rx
			if tc.q == console.TransmitQ {
				g = r.tx
			}
			buf := r.rx.alloc(64)
			tc.bad(g.d, buf)
			g.d.Publish(0)
			r.activate(t, features)
			if tc.q == console.ReceiveQ {
				writeHost(r.host, []byte("x")) // receive chains are popped for data
			}
			wait(t, "the queue to break", func() bool { return r.h.Failure() != nil })
			if f := r.h.Failure(); !errors.Is(f, tc.want) || !errors.Is(f, virtio.ErrBroken) {
				t.Fatalf("failure = %v, want %v", f, tc.want)
			}
			r.checkDirty(t, false)
		})
	}
}

func TestConfig(t *testing.T) {
	d := console.New(console.Options{})
	defer d.Close()
	if d.Type() != virtio.TypeConsole || d.Features() != 0 {
		t.Fatalf("type %d features %#x", d.Type(), d.Features())
	}
	if qs := d.QueueSizes(); len(qs) != 2 || qs[0] == 0 || qs[1] == 0 {
		t.Fatalf("queue sizes %v", qs)
	}
	for _, off := range []uint32{0, 2, 4, 8, 1000} {
		b := bytes.Repeat([]byte{0xff}, 4)
		d.ReadConfig(off, b)
		if !bytes.Equal(b, make([]byte, 4)) {
			t.Fatalf("config at %d = %x, want zero (cols, rows, max_nr_ports)", off, b)
		}
	}
	d.WriteConfig(8, []byte{'x', 0, 0, 0}) // emerg_wr without the feature: ignored
	d.Reset()                              // before any Activate
}

// TestReceiveIgnoresReadable: readable descriptors in a receive chain are
// skipped, and a chain with no writable byte is returned empty without
// losing data.
func TestReceiveIgnoresReadable(t *testing.T) {
	r := newRig(t, 16)
	r.attach(t)
	ro := r.rx.alloc(16)
	r.mem.GuestWrite(ro, bytes.Repeat([]byte{0xaa}, 16))
	r.rx.post(false, virtiotest.Buf{Addr: ro, Len: 8}, virtiotest.Buf{Addr: r.rx.alloc(8), Len: 8, Write: true})
	r.rx.post(false, virtiotest.Buf{Addr: ro + 8, Len: 8})
	r.postRX(t, false, 64)
	r.activate(t, features)
	msg := []byte("GET /status 42\n")
	writeHost(r.host, msg)
	got, lens := r.recv(t, len(msg))
	if !bytes.Equal(got, msg) || !equal(lens, []uint32{8, 0, 7}) {
		t.Fatalf("guest got %q with used lengths %v", got, lens)
	}
	if ro := r.mem.GuestRead(ro, 16); !bytes.Equal(ro, bytes.Repeat([]byte{0xaa}, 16)) {
		t.Fatalf("device wrote a readable buffer: %x", ro)
	}
	r.checkDirty(t, true)
}

// failingHost reads from a pipe that never yields and fails every write.
type failingHost struct {
	*io.PipeReader
	closed chan struct{}
}

func (failingHost) Write([]byte) (int, error) { return 0, errors.New("broken pipe") }
func (f failingHost) Close() error {
	close(f.closed)
	return f.PipeReader.Close()
}

// TestHostWriteErrorDetaches: a host side that fails a write is detached
// and closed, the guest's chain still completes, and the bytes count as
// discarded.
func TestHostWriteErrorDetaches(t *testing.T) {
	r := newRig(t, 16)
	pr, pw := io.Pipe()
	defer pw.Close()
	host := failingHost{PipeReader: pr, closed: make(chan struct{})}
	done := r.dev.SetHost(host)
	r.postTX(t, false, []byte("lost"))
	r.activate(t, features)
	r.waitTX(t, 1)
	select {
	case <-done:
	case <-time.After(timeout):
		t.Fatal("a failed write did not detach the host side")
	}
	<-host.closed
	r.postTX(t, false, []byte("also lost"))
	r.waitTX(t, 1)
	if s := r.dev.Stats(); s.Discarded != 13 || s.ToHost != 0 {
		t.Fatalf("stats %+v", s)
	}
	if f := r.h.Failure(); f != nil {
		t.Fatalf("host failure broke the device: %v", f)
	}
}
