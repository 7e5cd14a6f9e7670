package virtiotest

import (
	"encoding/binary"
	"fmt"

	"github.com/gvmm/gvmm/virtio"
)

// Descriptor flags as a driver writes them.
const (
	DescNext     = 1
	DescWrite    = 2
	DescIndirect = 4
)

// Driver is the guest side of one split virtqueue in a Memory: it owns the
// rings, hands out descriptors in order and allocates buffers from a bump
// allocator above the rings. It is for tests: it never recycles.
type Driver struct {
	Mem                *Memory
	Size               uint16
	Desc, Avail, Used  uint64
	nextDesc, availIdx uint16
	lastUsed           uint16
	heap, heapEnd      uint64
}

// NewDriver lays out a queue of size descriptors at the start of mem.
func NewDriver(mem *Memory, size uint16) *Driver {
	n := uint64(size)
	d := &Driver{Mem: mem, Size: size, Desc: mem.Base}
	d.Avail = d.Desc + 16*n
	d.Used = align(d.Avail+6+2*n, 4096)
	d.heap = align(d.Used+6+8*n, 4096)
	d.heapEnd = mem.Base + mem.Size()
	return d
}

func align(v, a uint64) uint64 { return (v + a - 1) &^ (a - 1) }

// Config is the queue configuration a transport would receive.
func (d *Driver) Config() virtio.QueueConfig {
	return virtio.QueueConfig{Size: d.Size, Desc: d.Desc, Driver: d.Avail, Device: d.Used}
}

// Alloc returns n bytes of guest RAM (16-byte aligned) for buffers.
func (d *Driver) Alloc(n uint64) uint64 {
	a := align(d.heap, 16)
	if a+n > d.heapEnd {
		panic(fmt.Sprintf("virtiotest: out of guest memory allocating %d", n))
	}
	d.heap = a + n
	return a
}

// Buf is one buffer of a chain; Write means device-writable.
type Buf struct {
	Addr  uint64
	Len   uint32
	Write bool
}

// SetDesc writes descriptor i of the table at table verbatim.
func (d *Driver) SetDesc(table uint64, i uint16, addr uint64, length uint32, flags, next uint16) {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[0:], addr)
	binary.LittleEndian.PutUint32(b[8:], length)
	binary.LittleEndian.PutUint16(b[12:], flags)
	binary.LittleEndian.PutUint16(b[14:], next)
	d.Mem.GuestWrite(table+16*uint64(i), b[:])
}

// TakeDesc reserves n consecutive descriptors and returns the first.
func (d *Driver) TakeDesc(n uint16) uint16 {
	i := d.nextDesc
	if uint32(i)+uint32(n) > uint32(d.Size) {
		panic("virtiotest: out of descriptors")
	}
	d.nextDesc += n
	return i
}

func flagsOf(b Buf, last bool) uint16 {
	var f uint16
	if b.Write {
		f |= DescWrite
	}
	if !last {
		f |= DescNext
	}
	return f
}

// AddChain writes bufs as a direct chain and makes it available.
func (d *Driver) AddChain(bufs ...Buf) uint16 {
	head := d.TakeDesc(uint16(len(bufs)))
	for i, b := range bufs {
		idx := head + uint16(i)
		d.SetDesc(d.Desc, idx, b.Addr, b.Len, flagsOf(b, i == len(bufs)-1), idx+1)
	}
	d.Publish(head)
	return head
}

// AddIndirect writes bufs into a fresh indirect table, points one
// descriptor at it and makes that available.
func (d *Driver) AddIndirect(bufs ...Buf) uint16 {
	table := d.Alloc(16 * uint64(len(bufs)))
	for i, b := range bufs {
		d.SetDesc(table, uint16(i), b.Addr, b.Len, flagsOf(b, i == len(bufs)-1), uint16(i+1))
	}
	head := d.TakeDesc(1)
	d.SetDesc(d.Desc, head, table, uint32(16*len(bufs)), DescIndirect, 0)
	d.Publish(head)
	return head
}

// Publish puts head in the next available-ring slot and bumps avail idx.
func (d *Driver) Publish(head uint16) {
	var b [2]byte
	binary.LittleEndian.PutUint16(b[:], head)
	d.Mem.GuestWrite(d.Avail+4+2*uint64(d.availIdx%d.Size), b[:])
	d.availIdx++
	d.SetAvailIdx(d.availIdx)
}

// SetAvailIdx writes the available index verbatim.
func (d *Driver) SetAvailIdx(v uint16) { d.put16(d.Avail+2, v) }

// SetAvailFlags writes the available ring's flags.
func (d *Driver) SetAvailFlags(v uint16) { d.put16(d.Avail, v) }

// SetUsedEvent writes used_event (VIRTIO_F_EVENT_IDX).
func (d *Driver) SetUsedEvent(v uint16) { d.put16(d.Avail+4+2*uint64(d.Size), v) }

// AvailEvent reads avail_event (VIRTIO_F_EVENT_IDX).
func (d *Driver) AvailEvent() uint16 { return d.get16(d.Used + 4 + 8*uint64(d.Size)) }

// UsedFlags reads the used ring's flags.
func (d *Driver) UsedFlags() uint16 { return d.get16(d.Used) }

// UsedIdx reads the used index.
func (d *Driver) UsedIdx() uint16 { return d.get16(d.Used + 2) }

// Used is one used-ring element.
type Used struct {
	ID  uint32
	Len uint32
}

// TakeUsed returns the used elements published since the last call.
func (d *Driver) TakeUsed() []Used {
	var out []Used
	for idx := d.UsedIdx(); d.lastUsed != idx; d.lastUsed++ {
		b := d.Mem.GuestRead(d.Used+4+8*uint64(d.lastUsed%d.Size), 8)
		out = append(out, Used{binary.LittleEndian.Uint32(b), binary.LittleEndian.Uint32(b[4:])})
	}
	return out
}

func (d *Driver) put16(gpa uint64, v uint16) {
	var b [2]byte
	binary.LittleEndian.PutUint16(b[:], v)
	d.Mem.GuestWrite(gpa, b[:])
}

func (d *Driver) get16(gpa uint64) uint16 {
	return binary.LittleEndian.Uint16(d.Mem.GuestRead(gpa, 2))
}
