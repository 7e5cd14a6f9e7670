package rng_test

import (
	"bytes"
	"errors"
	"testing"
	"testing/iotest"
	"time"

	"github.com/gvmm/gvmm/virtio"
	"github.com/gvmm/gvmm/virtio/rng"
	"github.com/gvmm/gvmm/virtio/virtiotest"
)

func TestFillsBuffers(t *testing.T) {
	for _, features := range []uint64{virtio.FVersion1, virtio.FVersion1 | virtio.FEventIdx | virtio.FIndirectDesc} {
		mem := virtiotest.NewMemory(0x1000, 1<<20)
		d := virtiotest.NewDriver(mem, 16)
		a, b, c := d.Alloc(64), d.Alloc(100), d.Alloc(rng.MaxPerRequest+10)
		d.AddChain(virtiotest.Buf{Addr: a, Len: 64, Write: true})
		if features&virtio.FIndirectDesc != 0 {
			d.AddIndirect(virtiotest.Buf{Addr: b, Len: 50, Write: true}, virtiotest.Buf{Addr: b + 50, Len: 50, Write: true})
		} else {
			d.AddChain(virtiotest.Buf{Addr: b, Len: 50, Write: true}, virtiotest.Buf{Addr: b + 50, Len: 50, Write: true})
		}
		d.AddChain(virtiotest.Buf{Addr: c, Len: rng.MaxPerRequest + 10, Write: true})
		dev := rng.New(nil)
		h, err := virtiotest.Activate(dev, mem, features, d)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.WaitUsed(d, 3, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		dev.Reset()
		used := d.TakeUsed()
		if len(used) != 3 || used[0].Len != 64 || used[1].Len != 100 || used[2].Len != rng.MaxPerRequest {
			t.Fatalf("used = %+v", used)
		}
		if bytes.Equal(mem.GuestRead(a, 64), make([]byte, 64)) || bytes.Equal(mem.GuestRead(b+50, 50), make([]byte, 50)) {
			t.Fatal("buffers not filled")
		}
		if tail := mem.GuestRead(c+rng.MaxPerRequest, 10); !bytes.Equal(tail, make([]byte, 10)) {
			t.Fatal("wrote past MaxPerRequest")
		}
		if len(h.Signals()) == 0 {
			t.Fatal("no interrupt")
		}
		if bad, changed := mem.Undirtied(8); len(bad) > 0 || changed == 0 {
			t.Fatalf("undirtied %#x of %d changed", bad, changed)
		}
	}
}

func TestEntropyFailureReturnsEmpty(t *testing.T) {
	mem := virtiotest.NewMemory(0x1000, 1<<16)
	d := virtiotest.NewDriver(mem, 4)
	a := d.Alloc(32)
	d.AddChain(virtiotest.Buf{Addr: a, Len: 32, Write: true})
	dev := rng.New(iotest.ErrReader(errors.New("no entropy")))
	h, err := virtiotest.Activate(dev, mem, virtio.FVersion1, d)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.WaitUsed(d, 1, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	dev.Reset()
	if used := d.TakeUsed(); used[0].Len != 0 {
		t.Fatalf("used = %+v", used)
	}
}

func TestHostileChainBreaksDevice(t *testing.T) {
	mem := virtiotest.NewMemory(0x1000, 1<<16)
	d := virtiotest.NewDriver(mem, 4)
	d.SetDesc(d.Desc, 0, 0x1000, 8, virtiotest.DescWrite|virtiotest.DescNext, 0) // loop
	d.Publish(0)
	dev := rng.New(nil)
	h, err := virtiotest.Activate(dev, mem, virtio.FVersion1, d)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for h.Failure() == nil && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	dev.Reset()
	if !errors.Is(h.Failure(), virtio.ErrChainLoop) {
		t.Fatalf("failure = %v", h.Failure())
	}
}
