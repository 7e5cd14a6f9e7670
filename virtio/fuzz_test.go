package virtio_test

import (
	"encoding/binary"
	"testing"

	"github.com/gvmm/gvmm/virtio"
	"github.com/gvmm/gvmm/virtio/virtiotest"
)

// Fuzz layout: 8 KiB of RAM at 0x1000 holding a 16-entry queue and buffers.
const (
	fzBase  = 0x1000
	fzSize  = 0x2000
	fzQSize = 16
	fzDesc  = fzBase
	fzAvail = fzBase + 0x100
	fzUsed  = fzBase + 0x200
	fzUsedN = 6 + 8*fzQSize
)

func fuzzFeatures(b byte) uint64 {
	f := virtio.FVersion1
	if b&1 != 0 {
		f |= virtio.FIndirectDesc
	}
	if b&2 != 0 {
		f |= virtio.FEventIdx
	}
	return f
}

func fuzzQueue(t *testing.T, image []byte, features byte) (*virtiotest.Memory, *virtio.Queue) {
	mem := virtiotest.NewMemory(fzBase, fzSize)
	mem.GuestWrite(fzBase, image[:min(len(image), fzSize)])
	q, err := virtio.NewQueue(mem, virtio.QueueConfig{Size: fzQSize, Desc: fzDesc, Driver: fzAvail, Device: fzUsed}, fuzzFeatures(features))
	if err != nil {
		t.Fatal(err)
	}
	return mem, q
}

// checkChain checks what Pop promises about a chain it returned.
func checkChain(t *testing.T, mem *virtiotest.Memory, c *virtio.Chain) {
	if n := len(c.Readable) + len(c.Writable); n > 1024 {
		t.Fatalf("chain of %d segments", n)
	}
	var r, w uint64
	for _, s := range c.Readable {
		r += uint64(s.Len)
		if _, err := mem.Slice(s.Addr, uint64(s.Len)); err != nil || s.Len == 0 {
			t.Fatalf("readable segment %+v: %v", s, err)
		}
	}
	for _, s := range c.Writable {
		w += uint64(s.Len)
		if _, err := mem.Slice(s.Addr, uint64(s.Len)); err != nil || s.Len == 0 {
			t.Fatalf("writable segment %+v: %v", s, err)
		}
	}
	if r != c.ReadableLen || w != c.WritableLen {
		t.Fatalf("lengths %d/%d, segments sum to %d/%d", c.ReadableLen, c.WritableLen, r, w)
	}
}

// allowed reports whether the device may have written gpa: the used ring or
// a writable buffer of a chain it popped.
func allowed(gpa uint64, writable []virtio.Segment) bool {
	if gpa >= fzUsed && gpa < fzUsed+fzUsedN {
		return true
	}
	for _, s := range writable {
		if gpa >= s.Addr && gpa-s.Addr < uint64(s.Len) {
			return true
		}
	}
	return false
}

func checkWrites(t *testing.T, mem *virtiotest.Memory, before []byte, writable []virtio.Segment) {
	after := mem.GuestRead(fzBase, fzSize)
	for i := range after {
		if after[i] != before[i] && !allowed(fzBase+uint64(i), writable) {
			t.Fatalf("device wrote %#x outside the used ring and its buffers", fzBase+i)
		}
	}
	if bad, _ := mem.Undirtied(4); len(bad) > 0 {
		t.Fatalf("undirtied writes at %#x", bad)
	}
}

func putDesc(img []byte, off int, addr uint64, n uint32, flags, next uint16) {
	binary.LittleEndian.PutUint64(img[off:], addr)
	binary.LittleEndian.PutUint32(img[off+8:], n)
	binary.LittleEndian.PutUint16(img[off+12:], flags)
	binary.LittleEndian.PutUint16(img[off+14:], next)
}

// seedImages are queue images: a direct chain, an indirect one, a loop, a
// chain out of RAM, and several chains for the pop path.
func seedImages() [][]byte {
	var seeds [][]byte
	mk := func(fill func(img []byte)) {
		img := make([]byte, 0x400)
		fill(img)
		seeds = append(seeds, img)
	}
	avail := func(img []byte, heads ...uint16) {
		binary.LittleEndian.PutUint16(img[0x102:], uint16(len(heads)))
		for i, h := range heads {
			binary.LittleEndian.PutUint16(img[0x104+2*i:], h)
		}
	}
	mk(func(img []byte) { // readable + writable direct chain
		putDesc(img, 0, 0x1400, 16, virtiotest.DescNext, 1)
		putDesc(img, 16, 0x1500, 64, virtiotest.DescWrite, 0)
		avail(img, 0)
	})
	mk(func(img []byte) { // indirect table at 0x1380
		putDesc(img, 0, 0x1380, 32, virtiotest.DescIndirect, 0)
		putDesc(img, 0x380, 0x1400, 16, virtiotest.DescNext, 1)
		putDesc(img, 0x390, 0x1500, 64, virtiotest.DescWrite, 0)
		avail(img, 0)
	})
	mk(func(img []byte) { // loop
		putDesc(img, 0, 0x1400, 16, virtiotest.DescNext, 1)
		putDesc(img, 16, 0x1400, 16, virtiotest.DescNext, 0)
		avail(img, 0)
	})
	mk(func(img []byte) { // outside RAM
		putDesc(img, 0, 0xffff_ffff_ffff_fff0, 32, virtiotest.DescWrite, 0)
		avail(img, 0)
	})
	mk(func(img []byte) { // several chains, event idx fields
		for i := range 4 {
			putDesc(img, 16*i, uint64(0x1400+0x40*i), 0x40, virtiotest.DescWrite, 0)
		}
		avail(img, 3, 2, 1, 0)
		binary.LittleEndian.PutUint16(img[0x104+2*fzQSize:], 2) // used_event
	})
	return seeds
}

// FuzzChain parses one descriptor chain from an arbitrary queue image.
func FuzzChain(f *testing.F) {
	for _, s := range seedImages() {
		f.Add(s, uint16(0), byte(3))
	}
	f.Add([]byte{}, uint16(0xffff), byte(0))
	f.Fuzz(func(t *testing.T, image []byte, head uint16, features byte) {
		mem, q := fuzzQueue(t, image, features)
		var b [4]byte
		binary.LittleEndian.PutUint16(b[0:], 1)    // avail idx
		binary.LittleEndian.PutUint16(b[2:], head) // ring[0]
		mem.GuestWrite(fzAvail+2, b[:])
		mem.Undirtied(0)
		before := mem.GuestRead(fzBase, fzSize)
		var c virtio.Chain
		ok, err := q.Pop(&c)
		if err != nil {
			if ok || q.Err() == nil {
				t.Fatalf("error %v without breaking the queue", err)
			}
			checkWrites(t, mem, before, nil)
			return
		}
		if !ok {
			t.Fatal("nothing popped with avail idx 1")
		}
		checkChain(t, mem, &c)
		fill := make([]byte, c.WritableLen)
		for i := range fill {
			fill[i] = 0xa5
		}
		if n, err := c.WriteAt(fill, 0); err != nil || uint64(n) != c.WritableLen {
			t.Fatalf("WriteAt = %d, %v", n, err)
		}
		if err := q.Push(c.Head, uint32(c.WritableLen)); err != nil {
			t.Fatal(err)
		}
		checkWrites(t, mem, before, c.Writable)
	})
}

// FuzzQueuePop runs the device's whole queue loop (pop, fill, push,
// interrupt decision, notification re-enable) over an arbitrary image.
func FuzzQueuePop(f *testing.F) {
	for _, s := range seedImages() {
		f.Add(s, byte(0))
		f.Add(s, byte(3))
	}
	f.Fuzz(func(t *testing.T, image []byte, features byte) {
		mem, q := fuzzQueue(t, image, features)
		mem.Undirtied(0)
		before := mem.GuestRead(fzBase, fzSize)
		var (
			c        virtio.Chain
			writable []virtio.Segment
		)
		for round := 0; ; round++ {
			if round > 2*fzQSize {
				t.Fatal("queue yielded more chains than the avail index allows")
			}
			ok, err := q.Pop(&c)
			if err != nil {
				break
			}
			if !ok {
				if _, err := q.NeedsInterrupt(); err != nil {
					t.Fatal(err)
				}
				if _, err := q.EnableNotify(); err != nil {
					t.Fatal(err)
				}
				break
			}
			checkChain(t, mem, &c)
			writable = append(writable, c.Writable...)
			if _, err := c.WriteAt([]byte{0x5a, 0x5a, 0x5a}, 0); err != nil {
				t.Fatal(err)
			}
			if err := q.Push(c.Head, 3); err != nil {
				t.Fatal(err)
			}
		}
		checkWrites(t, mem, before, writable)
	})
}
