package virtio

import (
	"encoding/binary"
	"fmt"
	"math"
)

// Segment is one validated guest buffer: [Addr, Addr+Len) lies inside guest
// RAM (checked when the chain was walked).
type Segment struct {
	Addr uint64
	Len  uint32
}

// Chain is one descriptor chain as the device sees it: the device-readable
// buffers, then the device-writable ones, each validated against guest RAM.
// Zero-length descriptors are dropped.
type Chain struct {
	Head     uint16
	Readable []Segment
	Writable []Segment
	// ReadableLen and WritableLen are the byte totals of each side.
	ReadableLen, WritableLen uint64

	mem GuestMemory
}

// desc mirrors struct virtq_desc; it is a copy, read once from guest RAM.
type desc struct {
	addr  uint64
	len   uint32
	flags uint16
	next  uint16
}

func readDesc(mem GuestMemory, table uint64, i uint32) (desc, error) {
	b, err := mem.Slice(table+descSize*uint64(i), descSize)
	if err != nil {
		return desc{}, fmt.Errorf("%w: descriptor %d: %w", ErrDescRange, i, err)
	}
	return desc{
		addr:  binary.LittleEndian.Uint64(b[0:]),
		len:   binary.LittleEndian.Uint32(b[8:]),
		flags: binary.LittleEndian.Uint16(b[12:]),
		next:  binary.LittleEndian.Uint16(b[14:]),
	}, nil
}

// walk fills c with the chain starting at descriptor head (§2.7.5, §2.7.5.3).
// Its work is bounded by the queue size, or by an indirect table's length.
func (q *Queue) walk(head uint16, c *Chain) error {
	c.Head = head
	c.Readable = c.Readable[:0]
	c.Writable = c.Writable[:0]
	c.ReadableLen, c.WritableLen = 0, 0
	c.mem = q.mem

	size := uint32(q.cfg.Size)
	if uint32(head) >= size {
		return fmt.Errorf("%w: head %d, queue size %d", ErrDescIndex, head, size)
	}
	d, err := readDesc(q.mem, q.cfg.Desc, uint32(head))
	if err != nil {
		return err
	}
	if d.flags&descFIndirect == 0 {
		return c.walkTable(q.mem, q.cfg.Desc, size, uint32(head), false)
	}
	// The device ignores VIRTQ_DESC_F_WRITE on the descriptor that points to
	// an indirect table (§2.7.5.3.2).
	if !q.indirect {
		return fmt.Errorf("%w: VIRTIO_F_INDIRECT_DESC not negotiated", ErrIndirect)
	}
	if d.flags&descFNext != 0 {
		return fmt.Errorf("%w: both INDIRECT and NEXT set", ErrIndirect)
	}
	limit := max(size, minIndirectLimit)
	if d.len == 0 || d.len%descSize != 0 || d.len/descSize > limit {
		return fmt.Errorf("%w: table length %d (at most %d entries of %d bytes)", ErrIndirect, d.len, limit, descSize)
	}
	if err := checkRange(q.mem, d.addr, uint64(d.len)); err != nil {
		return fmt.Errorf("indirect table: %w", err)
	}
	return c.walkTable(q.mem, d.addr, d.len/descSize, 0, true)
}

// walkTable follows NEXT links through a table of n descriptors from first.
// Visiting more than n descriptors means a loop, so the walk stops there.
func (c *Chain) walkTable(mem GuestMemory, table uint64, n, first uint32, indirect bool) error {
	i := first
	for visited := uint32(0); ; visited++ {
		if visited >= n {
			return fmt.Errorf("%w: more than %d descriptors", ErrChainLoop, n)
		}
		if i >= n {
			return fmt.Errorf("%w: next %d, table of %d", ErrDescIndex, i, n)
		}
		d, err := readDesc(mem, table, i)
		if err != nil {
			return err
		}
		if d.flags&descFIndirect != 0 {
			if indirect {
				return fmt.Errorf("%w: indirect descriptor %d inside an indirect table", ErrIndirect, i)
			}
			return fmt.Errorf("%w: indirect descriptor %d is not the chain's head", ErrIndirect, i)
		}
		if err := c.add(mem, d); err != nil {
			return fmt.Errorf("descriptor %d: %w", i, err)
		}
		if d.flags&descFNext == 0 {
			return nil
		}
		i = uint32(d.next)
	}
}

func checkRange(mem GuestMemory, addr, n uint64) error {
	if addr > math.MaxUint64-n {
		return fmt.Errorf("%w: [%#x, +%#x) overflows", ErrDescRange, addr, n)
	}
	if _, err := mem.Slice(addr, n); err != nil {
		return fmt.Errorf("%w: [%#x, +%#x): %w", ErrDescRange, addr, n, err)
	}
	return nil
}

func (c *Chain) add(mem GuestMemory, d desc) error {
	write := d.flags&descFWrite != 0
	if !write && len(c.Writable) > 0 {
		return ErrDirection
	}
	if d.len == 0 {
		return nil
	}
	if err := checkRange(mem, d.addr, uint64(d.len)); err != nil {
		return err
	}
	s := Segment{Addr: d.addr, Len: d.len}
	if write {
		c.Writable = append(c.Writable, s)
		c.WritableLen += uint64(d.len)
	} else {
		c.Readable = append(c.Readable, s)
		c.ReadableLen += uint64(d.len)
	}
	return nil
}

// ReadAt copies readable bytes of the chain, from offset off in their
// concatenation, into p. It returns how many it copied: fewer than len(p)
// only at the end of the readable buffers.
func (c *Chain) ReadAt(p []byte, off uint64) (int, error) {
	n := 0
	for _, s := range c.Readable {
		if len(p) == 0 {
			break
		}
		if off >= uint64(s.Len) {
			off -= uint64(s.Len)
			continue
		}
		b, err := c.mem.Slice(s.Addr+off, uint64(s.Len)-off)
		if err != nil {
			return n, fmt.Errorf("virtio: read chain: %w", err)
		}
		k := copy(p, b)
		n += k
		p = p[k:]
		off = 0
	}
	return n, nil
}

// WriteAt copies p into the writable bytes of the chain from offset off in
// their concatenation, marking them dirty. It returns how many it wrote:
// fewer than len(p) only at the end of the writable buffers.
func (c *Chain) WriteAt(p []byte, off uint64) (int, error) {
	n := 0
	for _, s := range c.Writable {
		if len(p) == 0 {
			break
		}
		if off >= uint64(s.Len) {
			off -= uint64(s.Len)
			continue
		}
		k := min(uint64(len(p)), uint64(s.Len)-off)
		if err := c.mem.WriteAt(p[:k], s.Addr+off); err != nil {
			return n, fmt.Errorf("virtio: write chain: %w", err)
		}
		n += int(k)
		p = p[k:]
		off = 0
	}
	return n, nil
}
