package net_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	stdnet "net"
	"sync"
	"testing"
	"time"

	"github.com/gvmm/gvmm/virtio"
	virtionet "github.com/gvmm/gvmm/virtio/net"
	"github.com/gvmm/gvmm/virtio/virtiotest"
)

// fakeBackend is a pair of channels: rx carries packets to the guest, tx
// those the guest sent.
type fakeBackend struct {
	rx       chan []byte
	tx       chan []byte
	offloads uint64
	pending  []byte // taken from rx by WaitPacket; receive goroutine only

	mu       sync.Mutex
	set      []uint64
	closed   bool
	writeErr error
}

func newFake(offloads uint64) *fakeBackend {
	return &fakeBackend{rx: make(chan []byte, 64), tx: make(chan []byte, 64), offloads: offloads}
}

func (f *fakeBackend) ReadPacket(p []byte) (int, error) {
	if f.pending != nil {
		n := copy(p, f.pending)
		f.pending = nil
		return n, nil
	}
	select {
	case pkt := <-f.rx:
		return copy(p, pkt), nil
	default:
		return 0, virtionet.ErrWouldBlock
	}
}

func (f *fakeBackend) WaitPacket(ctx context.Context) error {
	select {
	case pkt := <-f.rx:
		f.pending = pkt
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (f *fakeBackend) WritePacket(bufs [][]byte) error {
	f.mu.Lock()
	err := f.writeErr
	f.mu.Unlock()
	if err != nil {
		return err
	}
	var pkt []byte
	for _, b := range bufs {
		pkt = append(pkt, b...)
	}
	f.tx <- pkt
	return nil
}

func (f *fakeBackend) Offloads() uint64 { return f.offloads }

func (f *fakeBackend) SetOffloads(v uint64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.set = append(f.set, v)
	return nil
}

func (f *fakeBackend) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	return nil
}

// header builds a virtio_net_hdr_v1 with flags and gso_type set and
// num_buffers 0, as a backend or driver writes it.
func header(flags, gsoType byte, numBuffers uint16) []byte {
	h := make([]byte, virtionet.HeaderLen)
	h[0], h[1] = flags, gsoType
	binary.LittleEndian.PutUint16(h[2:], 54)   // hdr_len
	binary.LittleEndian.PutUint16(h[4:], 1448) // gso_size
	binary.LittleEndian.PutUint16(h[6:], 34)   // csum_start
	binary.LittleEndian.PutUint16(h[8:], 16)   // csum_offset
	binary.LittleEndian.PutUint16(h[10:], numBuffers)
	return h
}

func frame(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*13) + seed
	}
	return b
}

const baseFeatures = virtio.FVersion1 | virtionet.FMac | virtionet.FStatus

// devFeatures are what every device offers, whatever its backend.
const devFeatures = virtionet.FMac | virtionet.FStatus | virtionet.FMrgRxbuf

type env struct {
	mem    *virtiotest.Memory
	rx, tx *virtiotest.Driver
}

func newEnv() *env {
	mem := virtiotest.NewMemory(0x100000, 512<<10)
	mem.SnapshotReads = true // the device writes only through WriteAt
	// Two queues in one RAM: the TX driver owns the buffer heap, and the
	// RX driver's rings are allocated from it.
	tx := virtiotest.NewDriver(mem, 64)
	return &env{mem: mem, rx: newDriverAt(mem, tx, 64), tx: tx}
}

// alloc returns n bytes of guest RAM for buffers.
func (e *env) alloc(n uint64) uint64 { return e.tx.Alloc(n) }

// newDriverAt lays out a second queue in buffers allocated from first.
func newDriverAt(mem *virtiotest.Memory, first *virtiotest.Driver, size uint16) *virtiotest.Driver {
	n := uint64(size)
	d := &virtiotest.Driver{Mem: mem, Size: size}
	d.Desc = first.Alloc(16 * n)
	d.Avail = first.Alloc(6 + 2*n)
	d.Used = first.Alloc(6 + 8*n) // 16-byte aligned
	return d
}

func activate(t *testing.T, dev *virtionet.Device, e *env, features uint64) *virtiotest.Harness {
	t.Helper()
	h, err := virtiotest.Activate(dev, e.mem, features, e.rx, e.tx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(dev.Reset)
	return h
}

// receiveUsed activates dev with features, waits for the receive queue's
// used elements, one per wanted length, stops the device and returns them
// once their count is checked, with the harness.
func receiveUsed(t *testing.T, dev *virtionet.Device, e *env, features uint64, wantLens []uint32) (*virtiotest.Harness, []virtiotest.Used) {
	t.Helper()
	h := activate(t, dev, e, features)
	if err := h.WaitUsed(e.rx, uint16(len(wantLens)), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	dev.Reset()
	used := e.rx.TakeUsed()
	if len(used) != len(wantLens) {
		t.Fatalf("used %+v, want lengths %v", used, wantLens)
	}
	return h, used
}

func TestTransmit(t *testing.T) {
	hdr := header(1, 1, 0) // NEEDS_CSUM, GSO_TCPV4: passed through as is
	pkt := append(append([]byte(nil), hdr...), frame(1514, 3)...)
	tests := []struct {
		name     string
		bufs     func(e *env) []virtiotest.Buf
		indirect bool
		want     []byte // nil: dropped
	}{
		{"one descriptor", func(e *env) []virtiotest.Buf {
			return []virtiotest.Buf{put(e, pkt)}
		}, false, pkt},
		{"header apart", func(e *env) []virtiotest.Buf {
			return []virtiotest.Buf{put(e, pkt[:12]), put(e, pkt[12:100]), put(e, pkt[100:])}
		}, false, pkt},
		{"indirect", func(e *env) []virtiotest.Buf {
			return []virtiotest.Buf{put(e, pkt[:12]), put(e, pkt[12:])}
		}, true, pkt},
		{"writable buffer ignored", func(e *env) []virtiotest.Buf {
			return []virtiotest.Buf{put(e, pkt), {Addr: e.alloc(64), Len: 64, Write: true}}
		}, false, pkt},
		{"shorter than a header", func(e *env) []virtiotest.Buf {
			return []virtiotest.Buf{put(e, pkt[:11])}
		}, false, nil},
		{"longer than MaxPacket", func(e *env) []virtiotest.Buf {
			return []virtiotest.Buf{put(e, make([]byte, virtionet.MaxPacket+1))}
		}, false, nil},
		{"only writable", func(e *env) []virtiotest.Buf {
			return []virtiotest.Buf{{Addr: e.alloc(64), Len: 64, Write: true}}
		}, false, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv()
			be := newFake(0)
			dev, err := virtionet.New(be, virtionet.Options{})
			if err != nil {
				t.Fatal(err)
			}
			bufs := tc.bufs(e)
			if tc.indirect {
				e.tx.AddIndirect(bufs...)
			} else {
				e.tx.AddChain(bufs...)
			}
			e.mem.Undirtied(0)
			h := activate(t, dev, e, baseFeatures|virtio.FIndirectDesc|virtio.FEventIdx)
			if err := h.WaitUsed(e.tx, 1, 5*time.Second); err != nil {
				t.Fatal(err)
			}
			dev.Reset()
			if used := e.tx.TakeUsed(); len(used) != 1 || used[0].Len != 0 {
				t.Fatalf("used = %+v, want one of length 0", used)
			}
			st := dev.Stats()
			if tc.want == nil {
				if len(be.tx) != 0 || st.TxDropped != 1 || st.TxPackets != 0 {
					t.Fatalf("sent %d packets, stats %+v; want a drop", len(be.tx), st)
				}
			} else {
				if len(be.tx) != 1 {
					t.Fatalf("backend got %d packets", len(be.tx))
				}
				if got := <-be.tx; !bytes.Equal(got, tc.want) {
					t.Fatalf("backend got %d bytes % x..., want %d bytes % x...", len(got), got[:12], len(tc.want), tc.want[:12])
				}
				if st.TxPackets != 1 || st.TxBytes != uint64(len(tc.want)-12) {
					t.Fatalf("stats %+v", st)
				}
			}
			if len(h.Signals()) == 0 || h.Signals()[0] != virtionet.TxQueue {
				t.Fatalf("signals %v, want the TX queue's", h.Signals())
			}
			if bad, _ := e.mem.Undirtied(8); len(bad) > 0 {
				t.Fatalf("undirtied writes at %#x", bad)
			}
		})
	}
}

func TestTransmitBackendError(t *testing.T) {
	e := newEnv()
	be := newFake(0)
	be.writeErr = errors.New("EINVAL")
	dev, err := virtionet.New(be, virtionet.Options{})
	if err != nil {
		t.Fatal(err)
	}
	e.tx.AddChain(put(e, frame(100, 1)))
	h := activate(t, dev, e, baseFeatures)
	if err := h.WaitUsed(e.tx, 1, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	dev.Reset()
	if st := dev.Stats(); st.TxErrors != 1 || h.Failure() != nil {
		t.Fatalf("stats %+v, failure %v", st, h.Failure())
	}
}

// put copies p into fresh guest memory as a device-readable buffer.
func put(e *env, p []byte) virtiotest.Buf {
	a := e.alloc(uint64(len(p)))
	e.mem.GuestWrite(a, p)
	return virtiotest.Buf{Addr: a, Len: uint32(len(p))}
}

func TestReceive(t *testing.T) {
	type buf struct {
		lens []uint32 // one chain's writable descriptors
	}
	tests := []struct {
		name     string
		features uint64
		usedEvt  int // -1: leave alone
		chains   []buf
		pkts     []int // frame lengths
		wantLens []uint32
		dropped  uint64
		signal   bool
	}{
		{"fits", 0, -1, []buf{{[]uint32{1526}}}, []int{1514}, []uint32{1526}, 0, true},
		{"exact", 0, -1, []buf{{[]uint32{72}}}, []int{60}, []uint32{72}, 0, true},
		{"header apart", 0, -1, []buf{{[]uint32{12, 1514}}}, []int{1514}, []uint32{1526}, 0, true},
		{"big packet chain", 0, -1, []buf{{[]uint32{12, 4096, 4096, 4096, 4096, 4096, 4096, 4096, 4096, 4096, 4096, 4096, 4096, 4096, 4096, 4096, 4096, 4096}}},
			[]int{65535 + 14}, []uint32{12 + 65535 + 14}, 0, true},
		{"too small then fits", 0, -1, []buf{{[]uint32{100}}, {[]uint32{1526}}},
			[]int{1514, 1514}, []uint32{0, 1526}, 1, true},
		{"several", 0, -1, []buf{{[]uint32{1526}}, {[]uint32{1526}}, {[]uint32{1526}}},
			[]int{60, 1000, 1514}, []uint32{72, 1012, 1526}, 0, true},
		{"event idx wants one", virtio.FEventIdx, 0, []buf{{[]uint32{1526}}}, []int{60}, []uint32{72}, 0, true},
		{"event idx suppresses", virtio.FEventIdx, 100, []buf{{[]uint32{1526}}}, []int{60}, []uint32{72}, 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv()
			be := newFake(0)
			dev, err := virtionet.New(be, virtionet.Options{})
			if err != nil {
				t.Fatal(err)
			}
			var addrs [][]virtiotest.Buf
			for _, c := range tc.chains {
				var bufs []virtiotest.Buf
				for _, l := range c.lens {
					a := e.alloc(uint64(l))
					e.mem.GuestWrite(a, bytes.Repeat([]byte{0xee}, int(l)))
					bufs = append(bufs, virtiotest.Buf{Addr: a, Len: l, Write: true})
				}
				e.rx.AddChain(bufs...)
				addrs = append(addrs, bufs)
			}
			if tc.usedEvt >= 0 {
				e.rx.SetUsedEvent(uint16(tc.usedEvt))
			}
			e.mem.Undirtied(0)
			var sent [][]byte
			for i, n := range tc.pkts {
				// The backend's num_buffers is garbage: the device sets it.
				p := append(header(0, 0, 0xbeef), frame(n, byte(i))...)
				sent = append(sent, p)
				be.rx <- p
			}
			h, used := receiveUsed(t, dev, e, baseFeatures|tc.features, tc.wantLens)
			for i, u := range used {
				if u.Len != tc.wantLens[i] {
					t.Fatalf("used[%d] = %+v, want length %d", i, u, tc.wantLens[i])
				}
				if u.Len == 0 {
					continue
				}
				var got []byte
				for _, b := range addrs[i] {
					got = append(got, e.mem.GuestRead(b.Addr, uint64(b.Len))...)
				}
				got = got[:u.Len]
				want := append([]byte(nil), sent[len(sent)-len(used)+i]...)
				if tc.dropped > 0 {
					want = append([]byte(nil), sent[i]...)
				}
				binary.LittleEndian.PutUint16(want[10:], 1)
				if !bytes.Equal(got, want) {
					t.Fatalf("chain %d holds % x..., want % x...", i, got[:16], want[:16])
				}
			}
			if st := dev.Stats(); st.RxDropped != tc.dropped || st.RxPackets != uint64(len(tc.pkts))-tc.dropped {
				t.Fatalf("stats %+v", st)
			}
			if got := len(h.Signals()) > 0; got != tc.signal {
				t.Fatalf("signals %v, want some: %v", h.Signals(), tc.signal)
			}
			for _, q := range h.Signals() {
				if q != virtionet.RxQueue {
					t.Fatalf("signalled queue %d", q)
				}
			}
			bad, changed := e.mem.Undirtied(8)
			if len(bad) > 0 || changed == 0 {
				t.Fatalf("undirtied writes at %#x of %d changed", bad, changed)
			}
		})
	}
}

// TestReceiveMergeable: with VIRTIO_NET_F_MRG_RXBUF a packet takes as
// many chains as it needs, in order, num_buffers says how many, and they
// are returned together; one that all the queue's chains cannot hold is
// dropped and its chains returned empty.
func TestReceiveMergeable(t *testing.T) {
	tests := []struct {
		name     string
		chains   []uint32 // one writable descriptor each
		pkt      int      // frame length
		wantLens []uint32
		wantNum  uint16 // num_buffers in the first chain; 0: dropped
	}{
		{"fits one", []uint32{1526, 1526}, 60, []uint32{72}, 1},
		{"exact two", []uint32{1000, 526}, 1514, []uint32{1000, 526}, 2},
		{"GSO over many", []uint32{4096, 4096, 4096, 4096, 4096, 4096, 4096, 4096, 4096, 4096, 4096, 4096, 4096, 4096, 4096, 4096, 4096},
			65535 + 14, []uint32{4096, 4096, 4096, 4096, 4096, 4096, 4096, 4096, 4096, 4096, 4096, 4096, 4096, 4096, 4096, 4096, 65561 - 16*4096}, 17},
		{"header split", []uint32{4, 8, 100}, 60, []uint32{4, 8, 60}, 3},
		{"empty chain taken", []uint32{0, 1526}, 60, []uint32{0, 72}, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv()
			be := newFake(0)
			dev, err := virtionet.New(be, virtionet.Options{})
			if err != nil {
				t.Fatal(err)
			}
			var addrs []uint64
			for _, l := range tc.chains {
				a := e.alloc(uint64(max(l, 1)))
				e.rx.AddChain(virtiotest.Buf{Addr: a, Len: l, Write: true})
				addrs = append(addrs, a)
			}
			e.mem.Undirtied(0)
			pkt := append(header(0, 0, 0xbeef), frame(tc.pkt, 7)...)
			be.rx <- append([]byte(nil), pkt...)
			_, used := receiveUsed(t, dev, e, baseFeatures|virtionet.FMrgRxbuf, tc.wantLens)
			var got []byte
			for i, u := range used {
				if u.Len != tc.wantLens[i] || u.ID != uint32(i) {
					t.Fatalf("used[%d] = %+v, want chain %d length %d", i, u, i, tc.wantLens[i])
				}
				got = append(got, e.mem.GuestRead(addrs[i], uint64(u.Len))...)
			}
			binary.LittleEndian.PutUint16(pkt[10:], tc.wantNum)
			if !bytes.Equal(got, pkt) {
				t.Fatalf("buffers hold % x..., want % x...", got[:12], pkt[:12])
			}
			if st := dev.Stats(); st.RxPackets != 1 || st.RxDropped != 0 {
				t.Fatalf("stats %+v", st)
			}
			if bad, _ := e.mem.Undirtied(8); len(bad) > 0 {
				t.Fatalf("undirtied writes at %#x", bad)
			}
		})
	}
	t.Run("too big for the queue", func(t *testing.T) {
		e := newEnv()
		be := newFake(0)
		dev, err := virtionet.New(be, virtionet.Options{})
		if err != nil {
			t.Fatal(err)
		}
		a := e.alloc(16)
		for range e.rx.Size {
			e.rx.AddChain(virtiotest.Buf{Addr: a, Len: 16, Write: true})
		}
		be.rx <- append(header(0, 0, 0), frame(1514, 1)...)
		h := activate(t, dev, e, baseFeatures|virtionet.FMrgRxbuf)
		if err := h.WaitUsed(e.rx, e.rx.Size, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		dev.Reset()
		for _, u := range e.rx.TakeUsed() {
			if u.Len != 0 {
				t.Fatalf("dropped packet's chain %+v has a length", u)
			}
		}
		if st := dev.Stats(); st.RxDropped != 1 || st.RxPackets != 0 || h.Failure() != nil {
			t.Fatalf("stats %+v, failure %v", st, h.Failure())
		}
	})
	t.Run("waits for more buffers", func(t *testing.T) {
		e := newEnv()
		be := newFake(0)
		dev, err := virtionet.New(be, virtionet.Options{})
		if err != nil {
			t.Fatal(err)
		}
		a := e.alloc(1000)
		e.rx.AddChain(virtiotest.Buf{Addr: a, Len: 1000, Write: true})
		be.rx <- append(header(0, 0, 0), frame(1514, 2)...)
		h := activate(t, dev, e, baseFeatures|virtionet.FMrgRxbuf)
		time.Sleep(20 * time.Millisecond)
		if e.rx.UsedIdx() != 0 {
			t.Fatalf("used %d before the packet's second buffer", e.rx.UsedIdx())
		}
		b := e.alloc(1000)
		e.rx.AddChain(virtiotest.Buf{Addr: b, Len: 1000, Write: true})
		dev.Notify(virtionet.RxQueue)
		if err := h.WaitUsed(e.rx, 2, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		dev.Reset()
		if got := e.rx.TakeUsed(); len(got) != 2 || got[0].Len != 1000 || got[1].Len != 526 {
			t.Fatalf("used %+v", got)
		}
	})
}

// TestReceiveWaitsForBuffers: a packet that finds no buffer waits for the
// driver to post one and notify.
func TestReceiveWaitsForBuffers(t *testing.T) {
	for _, features := range []uint64{0, virtio.FEventIdx} {
		e := newEnv()
		be := newFake(0)
		dev, err := virtionet.New(be, virtionet.Options{})
		if err != nil {
			t.Fatal(err)
		}
		h := activate(t, dev, e, baseFeatures|features)
		be.rx <- append(header(0, 0, 0), frame(60, 9)...)
		time.Sleep(20 * time.Millisecond)
		if e.rx.UsedIdx() != 0 || h.Failure() != nil {
			t.Fatalf("used %d with no buffers, failure %v", e.rx.UsedIdx(), h.Failure())
		}
		a := e.alloc(1526)
		e.rx.AddChain(virtiotest.Buf{Addr: a, Len: 1526, Write: true})
		dev.Notify(virtionet.RxQueue)
		if err := h.WaitUsed(e.rx, 1, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		dev.Reset()
		if got := e.rx.TakeUsed(); got[0].Len != 72 {
			t.Fatalf("used %+v", got)
		}
	}
}

func TestHostileChainBreaksQueue(t *testing.T) {
	for _, q := range []int{virtionet.RxQueue, virtionet.TxQueue} {
		e := newEnv()
		be := newFake(0)
		dev, err := virtionet.New(be, virtionet.Options{})
		if err != nil {
			t.Fatal(err)
		}
		d := []*virtiotest.Driver{e.rx, e.tx}[q]
		d.SetDesc(d.Desc, 0, 0x100000, 8, virtiotest.DescWrite|virtiotest.DescNext, 0) // loop
		d.Publish(0)
		be.rx <- append(header(0, 0, 0), frame(60, 9)...)
		h := activate(t, dev, e, baseFeatures)
		deadline := time.Now().Add(5 * time.Second)
		for h.Failure() == nil && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		dev.Reset()
		if !errors.Is(h.Failure(), virtio.ErrChainLoop) {
			t.Fatalf("queue %d: failure = %v", q, h.Failure())
		}
	}
}

func TestConfigAndFeatures(t *testing.T) {
	mac, _ := stdnet.ParseMAC("52:54:00:12:34:56")
	tests := []struct {
		name      string
		opts      virtionet.Options
		offloads  uint64
		negotiate uint64
		wantFeat  uint64
		wantSet   uint64
		wantErr   bool
	}{
		{"given MAC, no offloads", virtionet.Options{MAC: mac}, 0, 0, devFeatures, 0, false},
		{"offloads offered and set", virtionet.Options{MAC: mac}, virtionet.OffloadFeatures,
			virtionet.FGuestCsum | virtionet.FGuestTSO4 | virtionet.FHostTSO4 | virtionet.FCsum,
			devFeatures | virtionet.OffloadFeatures, virtionet.FGuestCsum | virtionet.FGuestTSO4, false},
		{"TSO without GUEST_CSUM sets none", virtionet.Options{MAC: mac}, virtionet.OffloadFeatures,
			virtionet.FGuestTSO4, devFeatures | virtionet.OffloadFeatures, 0, false},
		{"NoOffloads", virtionet.Options{MAC: mac, NoOffloads: true}, virtionet.OffloadFeatures, 0, devFeatures, 0, false},
		{"multicast MAC", virtionet.Options{MAC: stdnet.HardwareAddr{1, 2, 3, 4, 5, 6}}, 0, 0, 0, 0, true},
		{"short MAC", virtionet.Options{MAC: stdnet.HardwareAddr{2, 2, 3}}, 0, 0, 0, 0, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			be := newFake(tc.offloads)
			dev, err := virtionet.New(be, tc.opts)
			if tc.wantErr {
				if err == nil || !be.closed {
					t.Fatalf("New = %v, backend closed %v; want an error and a closed backend", err, be.closed)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := dev.Features(); got != tc.wantFeat {
				t.Fatalf("features %#x, want %#x", got, tc.wantFeat)
			}
			cfg := make([]byte, 12)
			dev.ReadConfig(0, cfg)
			want := append(append([]byte(nil), mac...), 1, 0, 1, 0, 0, 0)
			if !bytes.Equal(cfg, want) {
				t.Fatalf("config % x, want % x", cfg, want)
			}
			e := newEnv()
			activate(t, dev, e, baseFeatures|tc.negotiate)
			dev.Reset()
			if len(be.set) != 1 || be.set[0] != tc.wantSet {
				t.Fatalf("SetOffloads calls %#x, want [%#x]", be.set, tc.wantSet)
			}
			if err := dev.Close(); err != nil || !be.closed {
				t.Fatalf("Close = %v, backend closed %v", err, be.closed)
			}
		})
	}
}

func TestRandomMAC(t *testing.T) {
	a, err := virtionet.New(newFake(0), virtionet.Options{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := virtionet.New(newFake(0), virtionet.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []stdnet.HardwareAddr{a.MAC(), b.MAC()} {
		if m[0]&1 != 0 || m[0]&2 == 0 {
			t.Fatalf("MAC %v is not locally administered unicast", m)
		}
	}
	if bytes.Equal(a.MAC(), b.MAC()) {
		t.Fatalf("two random MACs are both %v", a.MAC())
	}
}
