package virtio_test

import (
	"bytes"
	"errors"
	"math"
	"testing"

	"github.com/gvmm/gvmm/virtio"
	"github.com/gvmm/gvmm/virtio/virtiotest"
)

const (
	memBase = 0x10000
	memSize = 1 << 20
)

func newQueue(t testing.TB, size uint16, features uint64) (*virtiotest.Memory, *virtiotest.Driver, *virtio.Queue) {
	t.Helper()
	mem := virtiotest.NewMemory(memBase, memSize)
	d := virtiotest.NewDriver(mem, size)
	q, err := virtio.NewQueue(mem, d.Config(), features)
	if err != nil {
		t.Fatal(err)
	}
	return mem, d, q
}

func checkDirty(t *testing.T, mem *virtiotest.Memory) {
	t.Helper()
	if bad, _ := mem.Undirtied(8); len(bad) > 0 {
		t.Fatalf("VMM wrote guest bytes without marking them dirty: %#x", bad)
	}
}

func TestQueueRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name     string
		features uint64
		indirect bool
	}{
		{"direct", virtio.FVersion1, false},
		{"indirect", virtio.FVersion1 | virtio.FIndirectDesc, true},
		{"direct-event-idx", virtio.FVersion1 | virtio.FEventIdx, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mem, d, q := newQueue(t, 8, tc.features)
			in := d.Alloc(10)
			mem.GuestWrite(in, []byte("0123456789"))
			out1, out2 := d.Alloc(4), d.Alloc(100)
			bufs := []virtiotest.Buf{{Addr: in, Len: 10}, {Addr: out1, Len: 4, Write: true}, {Addr: out2, Len: 100, Write: true}}
			var head uint16
			if tc.indirect {
				head = d.AddIndirect(bufs...)
			} else {
				head = d.AddChain(bufs...)
			}
			var c virtio.Chain
			ok, err := q.Pop(&c)
			if err != nil || !ok {
				t.Fatalf("Pop = %v, %v", ok, err)
			}
			if c.Head != head || c.ReadableLen != 10 || c.WritableLen != 104 || len(c.Readable) != 1 || len(c.Writable) != 2 {
				t.Fatalf("chain %+v", c)
			}
			got := make([]byte, 20)
			n, err := c.ReadAt(got, 3)
			if err != nil || n != 7 || string(got[:n]) != "3456789" {
				t.Fatalf("ReadAt = %d %q %v", n, got[:n], err)
			}
			n, err = c.WriteAt([]byte("abcdefgh"), 1)
			if err != nil || n != 8 {
				t.Fatalf("WriteAt = %d, %v", n, err)
			}
			if got := mem.GuestRead(out1, 4); string(got) != "\x00abc" {
				t.Fatalf("out1 = %q", got)
			}
			if got := mem.GuestRead(out2, 5); string(got) != "defgh" {
				t.Fatalf("out2 = %q", got)
			}
			if ok, err := q.Pop(&c); ok || err != nil {
				t.Fatalf("second Pop = %v, %v", ok, err)
			}
			if err := q.Push(head, 9); err != nil {
				t.Fatal(err)
			}
			used := d.TakeUsed()
			if len(used) != 1 || used[0] != (virtiotest.Used{ID: uint32(head), Len: 9}) {
				t.Fatalf("used = %+v", used)
			}
			checkDirty(t, mem)
		})
	}
}

func TestQueueWrapsAround(t *testing.T) {
	mem, d, q := newQueue(t, 4, virtio.FVersion1)
	buf := d.Alloc(1)
	var c virtio.Chain
	for i := range 70000 { // past the 16-bit wrap of both indices
		head := uint16(i % 4)
		d.SetDesc(d.Desc, head, buf, 1, virtiotest.DescWrite, 0)
		d.Publish(head)
		ok, err := q.Pop(&c)
		if err != nil || !ok || c.Head != head {
			t.Fatalf("round %d: Pop = %v %v head %d", i, ok, err, c.Head)
		}
		if err := q.Push(head, 1); err != nil {
			t.Fatal(err)
		}
	}
	if got := d.UsedIdx(); got != uint16(70000%65536) {
		t.Fatalf("used idx %d", got)
	}
	checkDirty(t, mem)
}

func TestEventIdxSuppression(t *testing.T) {
	mem, d, q := newQueue(t, 8, virtio.FVersion1|virtio.FEventIdx)
	buf := d.Alloc(1)
	var heads []uint16
	for range 4 {
		heads = append(heads, d.AddChain(virtiotest.Buf{Addr: buf, Len: 1, Write: true}))
	}
	var c virtio.Chain
	pushOne := func() {
		t.Helper()
		if ok, err := q.Pop(&c); !ok || err != nil {
			t.Fatalf("Pop = %v %v", ok, err)
		}
		if err := q.Push(c.Head, 0); err != nil {
			t.Fatal(err)
		}
	}
	// The driver wants an interrupt once used idx passes 2 (used_event=2
	// means "after the entry with index 2", i.e. when idx becomes 3).
	d.SetUsedEvent(2)
	for i, want := range []bool{false, false, true, false} {
		pushOne()
		got, err := q.NeedsInterrupt()
		if err != nil || got != want {
			t.Fatalf("push %d: NeedsInterrupt = %v, %v; want %v", i, got, err, want)
		}
	}
	// Nothing pushed since: no interrupt whatever used_event says.
	d.SetUsedEvent(3)
	if got, _ := q.NeedsInterrupt(); got {
		t.Fatal("interrupt with nothing new")
	}
	// A batch crossing used_event signals once.
	for range 2 {
		d.AddChain(virtiotest.Buf{Addr: buf, Len: 1, Write: true})
	}
	d.SetUsedEvent(4)
	pushOne()
	pushOne()
	if got, _ := q.NeedsInterrupt(); !got {
		t.Fatal("no interrupt for a batch crossing used_event")
	}
	// EnableNotify publishes avail_event = next slot to consume and sees
	// buffers that arrived before it.
	more, err := q.EnableNotify()
	if err != nil || more {
		t.Fatalf("EnableNotify = %v, %v", more, err)
	}
	if got := d.AvailEvent(); got != 6 {
		t.Fatalf("avail_event = %d, want 6", got)
	}
	d.AddChain(virtiotest.Buf{Addr: buf, Len: 1, Write: true})
	if more, _ := q.EnableNotify(); !more {
		t.Fatal("EnableNotify missed a buffer")
	}
	checkDirty(t, mem)
}

func TestNoEventIdxFlags(t *testing.T) {
	mem, d, q := newQueue(t, 8, virtio.FVersion1)
	buf := d.Alloc(1)
	var c virtio.Chain
	for _, tc := range []struct {
		availFlags uint16
		want       bool
	}{{0, true}, {1, false}, {0, true}} {
		d.SetAvailFlags(tc.availFlags)
		d.AddChain(virtiotest.Buf{Addr: buf, Len: 1, Write: true})
		if ok, err := q.Pop(&c); !ok || err != nil {
			t.Fatal(ok, err)
		}
		if err := q.Push(c.Head, 1); err != nil {
			t.Fatal(err)
		}
		if got, _ := q.NeedsInterrupt(); got != tc.want {
			t.Fatalf("flags %d: NeedsInterrupt = %v", tc.availFlags, got)
		}
	}
	if err := q.DisableNotify(); err != nil || d.UsedFlags() != 1 {
		t.Fatalf("DisableNotify: %v flags %d", err, d.UsedFlags())
	}
	if more, err := q.EnableNotify(); err != nil || more || d.UsedFlags() != 0 {
		t.Fatalf("EnableNotify: %v %v flags %d", more, err, d.UsedFlags())
	}
	checkDirty(t, mem)
}

// TestHostileChains: every malformed chain breaks the queue with its own
// error, writes nothing, and leaves the queue broken.
func TestHostileChains(t *testing.T) {
	const size = 8
	outside := uint64(memBase + memSize)
	for _, tc := range []struct {
		name     string
		features uint64
		setup    func(d *virtiotest.Driver, buf uint64)
		want     error
	}{
		{"self-loop", 0, func(d *virtiotest.Driver, buf uint64) {
			d.SetDesc(d.Desc, 0, buf, 1, virtiotest.DescNext, 0)
			d.Publish(0)
		}, virtio.ErrChainLoop},
		{"long-loop", 0, func(d *virtiotest.Driver, buf uint64) {
			for i := range uint16(size) {
				d.SetDesc(d.Desc, i, buf, 1, virtiotest.DescNext, (i+1)%size)
			}
			d.Publish(3)
		}, virtio.ErrChainLoop},
		{"head-out-of-table", 0, func(d *virtiotest.Driver, buf uint64) {
			d.Publish(size)
		}, virtio.ErrDescIndex},
		{"next-out-of-table", 0, func(d *virtiotest.Driver, buf uint64) {
			d.SetDesc(d.Desc, 0, buf, 1, virtiotest.DescNext, 0xffff)
			d.Publish(0)
		}, virtio.ErrDescIndex},
		{"addr-outside-ram", 0, func(d *virtiotest.Driver, buf uint64) {
			d.SetDesc(d.Desc, 0, outside, 16, virtiotest.DescWrite, 0)
			d.Publish(0)
		}, virtio.ErrDescRange},
		{"addr-below-ram", 0, func(d *virtiotest.Driver, buf uint64) {
			d.SetDesc(d.Desc, 0, 0, 16, virtiotest.DescWrite, 0)
			d.Publish(0)
		}, virtio.ErrDescRange},
		{"straddles-end", 0, func(d *virtiotest.Driver, buf uint64) {
			d.SetDesc(d.Desc, 0, outside-8, 16, virtiotest.DescWrite, 0)
			d.Publish(0)
		}, virtio.ErrDescRange},
		{"length-overflows", 0, func(d *virtiotest.Driver, buf uint64) {
			d.SetDesc(d.Desc, 0, math.MaxUint64-10, 0xffffffff, virtiotest.DescWrite, 0)
			d.Publish(0)
		}, virtio.ErrDescRange},
		{"readable-after-writable", 0, func(d *virtiotest.Driver, buf uint64) {
			d.SetDesc(d.Desc, 0, buf, 1, virtiotest.DescWrite|virtiotest.DescNext, 1)
			d.SetDesc(d.Desc, 1, buf, 1, 0, 0)
			d.Publish(0)
		}, virtio.ErrDirection},
		{"avail-idx-jump", 0, func(d *virtiotest.Driver, buf uint64) {
			d.SetAvailIdx(size + 1)
		}, virtio.ErrAvailIdx},
		{"avail-idx-backwards", 0, func(d *virtiotest.Driver, buf uint64) {
			d.SetAvailIdx(0xffff)
		}, virtio.ErrAvailIdx},
		{"indirect-not-negotiated", 0, func(d *virtiotest.Driver, buf uint64) {
			d.AddIndirect(virtiotest.Buf{Addr: buf, Len: 1})
		}, virtio.ErrIndirect},
		{"indirect-with-next", virtio.FIndirectDesc, func(d *virtiotest.Driver, buf uint64) {
			table := d.Alloc(16)
			d.SetDesc(table, 0, buf, 1, 0, 0)
			d.SetDesc(d.Desc, 0, table, 16, virtiotest.DescIndirect|virtiotest.DescNext, 1)
			d.SetDesc(d.Desc, 1, buf, 1, 0, 0)
			d.Publish(0)
		}, virtio.ErrIndirect},
		{"indirect-not-head", virtio.FIndirectDesc, func(d *virtiotest.Driver, buf uint64) {
			table := d.Alloc(16)
			d.SetDesc(table, 0, buf, 1, 0, 0)
			d.SetDesc(d.Desc, 0, buf, 1, virtiotest.DescNext, 1)
			d.SetDesc(d.Desc, 1, table, 16, virtiotest.DescIndirect, 0)
			d.Publish(0)
		}, virtio.ErrIndirect},
		{"indirect-zero-length", virtio.FIndirectDesc, func(d *virtiotest.Driver, buf uint64) {
			d.SetDesc(d.Desc, 0, buf, 0, virtiotest.DescIndirect, 0)
			d.Publish(0)
		}, virtio.ErrIndirect},
		{"indirect-odd-length", virtio.FIndirectDesc, func(d *virtiotest.Driver, buf uint64) {
			d.SetDesc(d.Desc, 0, d.Alloc(32), 17, virtiotest.DescIndirect, 0)
			d.Publish(0)
		}, virtio.ErrIndirect},
		{"indirect-huge", virtio.FIndirectDesc, func(d *virtiotest.Driver, buf uint64) {
			d.SetDesc(d.Desc, 0, memBase, 16*4096, virtiotest.DescIndirect, 0)
			d.Publish(0)
		}, virtio.ErrIndirect},
		{"indirect-table-outside-ram", virtio.FIndirectDesc, func(d *virtiotest.Driver, buf uint64) {
			d.SetDesc(d.Desc, 0, outside-16, 32, virtiotest.DescIndirect, 0)
			d.Publish(0)
		}, virtio.ErrDescRange},
		{"indirect-in-indirect", virtio.FIndirectDesc, func(d *virtiotest.Driver, buf uint64) {
			inner, table := d.Alloc(16), d.Alloc(16)
			d.SetDesc(inner, 0, buf, 1, 0, 0)
			d.SetDesc(table, 0, inner, 16, virtiotest.DescIndirect, 0)
			d.SetDesc(d.Desc, 0, table, 16, virtiotest.DescIndirect, 0)
			d.Publish(0)
		}, virtio.ErrIndirect},
		{"indirect-loop", virtio.FIndirectDesc, func(d *virtiotest.Driver, buf uint64) {
			table := d.Alloc(32)
			d.SetDesc(table, 0, buf, 1, virtiotest.DescNext, 1)
			d.SetDesc(table, 1, buf, 1, virtiotest.DescNext, 0)
			d.SetDesc(d.Desc, 0, table, 32, virtiotest.DescIndirect, 0)
			d.Publish(0)
		}, virtio.ErrChainLoop},
		{"indirect-next-past-table", virtio.FIndirectDesc, func(d *virtiotest.Driver, buf uint64) {
			table := d.Alloc(32)
			d.SetDesc(table, 0, buf, 1, virtiotest.DescNext, 2)
			d.SetDesc(d.Desc, 0, table, 32, virtiotest.DescIndirect, 0)
			d.Publish(0)
		}, virtio.ErrDescIndex},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mem, d, q := newQueue(t, size, virtio.FVersion1|tc.features)
			buf := d.Alloc(64)
			tc.setup(d, buf)
			before := mem.GuestRead(memBase, memSize)
			var c virtio.Chain
			ok, err := q.Pop(&c)
			if ok || !errors.Is(err, tc.want) || !errors.Is(err, virtio.ErrBroken) {
				t.Fatalf("Pop = %v, %v; want %v", ok, err, tc.want)
			}
			if _, err2 := q.Pop(&c); !errors.Is(err2, tc.want) {
				t.Fatalf("queue not broken for good: %v", err2)
			}
			if err2 := q.Push(0, 0); err2 == nil {
				t.Fatal("Push on a broken queue succeeded")
			}
			if !errors.Is(q.Err(), tc.want) {
				t.Fatalf("Err = %v", q.Err())
			}
			if after := mem.GuestRead(memBase, memSize); !bytes.Equal(before, after) {
				t.Fatal("a broken chain changed guest memory")
			}
		})
	}
}

func TestQueueConfigValidate(t *testing.T) {
	mem := virtiotest.NewMemory(memBase, memSize)
	good := virtiotest.NewDriver(mem, 8).Config()
	for _, tc := range []struct {
		name string
		mod  func(*virtio.QueueConfig)
		ok   bool
	}{
		{"good", func(*virtio.QueueConfig) {}, true},
		{"zero", func(c *virtio.QueueConfig) { c.Size = 0 }, false},
		{"not-power-of-two", func(c *virtio.QueueConfig) { c.Size = 6 }, false},
		{"too-big", func(c *virtio.QueueConfig) { c.Size = 0xffff }, false},
		{"misaligned-desc", func(c *virtio.QueueConfig) { c.Desc += 8 }, false},
		{"misaligned-used", func(c *virtio.QueueConfig) { c.Device += 2 }, false},
		{"used-outside", func(c *virtio.QueueConfig) { c.Device = memBase + memSize - 8 }, false},
		{"desc-overflow", func(c *virtio.QueueConfig) { c.Desc = math.MaxUint64 - 15 }, false},
	} {
		c := good
		tc.mod(&c)
		if err := c.Validate(mem); (err == nil) != tc.ok {
			t.Errorf("%s: Validate = %v", tc.name, err)
		}
	}
}

// TestPushBatch: a batch's elements land in order from the used index,
// wrapping the ring, and the index moves once by the batch's length; a
// batch longer than the queue breaks it.
func TestPushBatch(t *testing.T) {
	tests := []struct {
		name      string
		before    int // single pushes first, to move the used index
		batch     []virtio.UsedElem
		wantIdx   uint16
		wantErr   bool
		wantElems []virtiotest.Used
	}{
		{"empty", 0, nil, 0, false, nil},
		{"one", 0, []virtio.UsedElem{{Head: 3, Len: 1500}}, 1, false,
			[]virtiotest.Used{{ID: 3, Len: 1500}}},
		{"three", 0, []virtio.UsedElem{{Head: 1, Len: 1536}, {Head: 5, Len: 1536}, {Head: 2, Len: 12}}, 3, false,
			[]virtiotest.Used{{ID: 1, Len: 1536}, {ID: 5, Len: 1536}, {ID: 2, Len: 12}}},
		{"wraps the ring", 6, []virtio.UsedElem{{Head: 0, Len: 1}, {Head: 1, Len: 2}, {Head: 2, Len: 3}}, 9, false,
			[]virtiotest.Used{{ID: 0, Len: 1}, {ID: 1, Len: 2}, {ID: 2, Len: 3}}},
		{"whole queue", 0, make([]virtio.UsedElem, 8), 8, false, make([]virtiotest.Used, 8)},
		{"longer than the queue", 0, make([]virtio.UsedElem, 9), 0, true, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mem, d, q := newQueue(t, 8, virtio.FVersion1)
			for range tc.before {
				if err := q.Push(7, 0); err != nil {
					t.Fatal(err)
				}
			}
			d.TakeUsed()
			err := q.PushBatch(tc.batch)
			if (err != nil) != tc.wantErr {
				t.Fatalf("PushBatch = %v, want error %v", err, tc.wantErr)
			}
			if tc.wantErr {
				if !errors.Is(err, virtio.ErrRing) || q.Err() == nil {
					t.Fatalf("error %v does not break the queue (Err %v)", err, q.Err())
				}
				if got := d.UsedIdx(); got != uint16(tc.before) {
					t.Fatalf("used idx %d after a refused batch", got)
				}
				return
			}
			if got := d.UsedIdx(); got != tc.wantIdx {
				t.Fatalf("used idx %d, want %d", got, tc.wantIdx)
			}
			if got := d.TakeUsed(); len(got) != len(tc.wantElems) || (len(got) > 0 && !equalUsed(got, tc.wantElems)) {
				t.Fatalf("used %+v, want %+v", got, tc.wantElems)
			}
			checkDirty(t, mem)
		})
	}
}

func equalUsed(a, b []virtiotest.Used) bool {
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
