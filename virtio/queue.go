package virtio

import (
	"encoding/binary"
	"fmt"
	"math"
	"sync/atomic"
)

// Split virtqueue layout (§2.7).
const (
	// MaxQueueSize is the largest split queue the spec allows.
	MaxQueueSize = 32768

	descSize = 16 // struct virtq_desc

	descFNext     = 1 // VIRTQ_DESC_F_NEXT
	descFWrite    = 2 // VIRTQ_DESC_F_WRITE
	descFIndirect = 4 // VIRTQ_DESC_F_INDIRECT

	availFNoInterrupt = 1 // VIRTQ_AVAIL_F_NO_INTERRUPT
	usedFNoNotify     = 1 // VIRTQ_USED_F_NO_NOTIFY

	// minIndirectLimit is the fewest descriptors an indirect table may hold
	// whatever the queue size (QEMU allows 1024 in all).
	minIndirectLimit = 1024
)

// QueueConfig is what the driver programmed for one queue.
type QueueConfig struct {
	Size   uint16 // number of descriptors, a power of two
	Desc   uint64 // descriptor table (16-byte aligned)
	Driver uint64 // available ring (2-byte aligned)
	Device uint64 // used ring (4-byte aligned)
}

// ringBytes returns the sizes of the three areas (§2.7, with the event
// fields that exist whether or not VIRTIO_F_EVENT_IDX was negotiated).
func (c QueueConfig) ringBytes() (desc, avail, used uint64) {
	n := uint64(c.Size)
	return descSize * n, 6 + 2*n, 6 + 8*n
}

// Validate checks the configuration against the spec and guest RAM.
func (c QueueConfig) Validate(mem GuestMemory) error {
	if c.Size == 0 || c.Size > MaxQueueSize || c.Size&(c.Size-1) != 0 {
		return fmt.Errorf("virtqueue: size %d is not a power of two up to %d", c.Size, MaxQueueSize)
	}
	if c.Desc%16 != 0 || c.Driver%2 != 0 || c.Device%4 != 0 {
		return fmt.Errorf("virtqueue: misaligned rings desc %#x avail %#x used %#x", c.Desc, c.Driver, c.Device)
	}
	d, a, u := c.ringBytes()
	for _, r := range [...]struct {
		name      string
		addr, len uint64
	}{{"descriptor table", c.Desc, d}, {"available ring", c.Driver, a}, {"used ring", c.Device, u}} {
		if _, err := mem.Slice(r.addr, r.len); err != nil {
			return fmt.Errorf("%w: %s [%#x, +%#x): %w", ErrRing, r.name, r.addr, r.len, err)
		}
	}
	return nil
}

// Queue is the device side of one split virtqueue. It is not safe for
// concurrent use: one worker goroutine owns it between DRIVER_OK and reset.
// Once any method returns an error wrapping ErrBroken, every later call
// returns that error.
type Queue struct {
	mem GuestMemory
	cfg QueueConfig
	// eventIdx and indirect are the negotiated VIRTIO_F_EVENT_IDX and
	// VIRTIO_F_INDIRECT_DESC.
	eventIdx, indirect bool

	// lastAvail is the next available-ring slot to consume (free-running).
	lastAvail uint16
	// usedIdx is the used index the device last published (free-running).
	usedIdx uint16
	// signalled is usedIdx as of the last NeedsInterrupt.
	signalled uint16
	// err is sticky: the first error that broke the queue.
	err error
	// barrier exists to be the operand of fence's atomic.
	barrier atomic.Uint32
}

// NewQueue validates cfg and returns a queue over it for the negotiated
// features. The device's indices start at zero, as after a reset.
func NewQueue(mem GuestMemory, cfg QueueConfig, features uint64) (*Queue, error) {
	if err := cfg.Validate(mem); err != nil {
		return nil, err
	}
	return &Queue{
		mem:      mem,
		cfg:      cfg,
		eventIdx: features&FEventIdx != 0,
		indirect: features&FIndirectDesc != 0,
	}, nil
}

// QueueIndices are a queue's device-side indices: what a snapshot or a
// migration carries so that a queue made anew continues where the old one
// stopped.
type QueueIndices struct {
	// NextAvail is the next available-ring slot the device consumes.
	NextAvail uint16
	// Used is the used index the device last published.
	Used uint16
}

// indices returns the queue's indices with every chain that was taken but
// not completed given back: the next device resumes at the first of them.
// This relies on the devices completing each queue's chains in the order
// they take them, which every gvmm device does (one worker per queue).
func (q *Queue) indices() QueueIndices {
	return QueueIndices{NextAvail: q.usedIdx, Used: q.usedIdx}
}

// setIndices starts a new queue at saved indices. Interrupt suppression
// restarts as if the device had just signalled, and the transport sends
// one interrupt after a restore so that nothing pending is missed.
func (q *Queue) setIndices(ix QueueIndices) {
	q.lastAvail, q.usedIdx, q.signalled = ix.NextAvail, ix.Used, ix.Used
}

// Size is the number of descriptors.
func (q *Queue) Size() uint16 { return q.cfg.Size }

// Err is the error that broke the queue, or nil.
func (q *Queue) Err() error { return q.err }

// fence is a full memory barrier on amd64: Go implements atomic adds with a
// LOCK-prefixed instruction, which orders every earlier load and store
// before every later one. x86-TSO already keeps stores in order and loads in
// order; fence is for a store that must be visible before a later load.
func (q *Queue) fence() { q.barrier.Add(1) }

func (q *Queue) fail(err error) error {
	if q.err == nil {
		q.err = err
	}
	return q.err
}

// Available-ring and used-ring field addresses.
func (q *Queue) availIdxAddr() uint64 { return q.cfg.Driver + 2 }
func (q *Queue) availRingAddr(i uint16) uint64 {
	return q.cfg.Driver + 4 + 2*uint64(i%q.cfg.Size)
}
func (q *Queue) usedEventAddr() uint64 { return q.cfg.Driver + 4 + 2*uint64(q.cfg.Size) }
func (q *Queue) usedIdxAddr() uint64   { return q.cfg.Device + 2 }
func (q *Queue) usedRingAddr(i uint16) uint64 {
	return q.cfg.Device + 4 + 8*uint64(i%q.cfg.Size)
}
func (q *Queue) availEventAddr() uint64 { return q.cfg.Device + 4 + 8*uint64(q.cfg.Size) }

func (q *Queue) read16(gpa uint64) (uint16, error) {
	v, err := readU16(q.mem, gpa)
	if err != nil {
		return 0, q.fail(fmt.Errorf("%w: read %#x: %w", ErrRing, gpa, err))
	}
	return v, nil
}

func (q *Queue) write16(gpa uint64, v uint16) error {
	if err := writeU16(q.mem, gpa, v); err != nil {
		return q.fail(fmt.Errorf("%w: write %#x: %w", ErrRing, gpa, err))
	}
	return nil
}

// Pop takes the next available descriptor chain into c, reusing c's slices.
// It reports false when the driver has made nothing new available.
func (q *Queue) Pop(c *Chain) (bool, error) {
	if q.err != nil {
		return false, q.err
	}
	idx, err := q.read16(q.availIdxAddr())
	if err != nil {
		return false, err
	}
	pending := idx - q.lastAvail
	if pending == 0 {
		return false, nil
	}
	if pending > q.cfg.Size {
		return false, q.fail(fmt.Errorf("%w: avail idx %d with %d consumed, queue size %d",
			ErrAvailIdx, idx, q.lastAvail, q.cfg.Size))
	}
	// The ring entry is read after idx: x86 does not reorder loads, and the
	// driver wrote the entry before idx (its own write barrier).
	head, err := q.read16(q.availRingAddr(q.lastAvail))
	if err != nil {
		return false, err
	}
	if err := q.walk(head, c); err != nil {
		return false, q.fail(fmt.Errorf("chain at avail slot %d head %d: %w", q.lastAvail, head, err))
	}
	q.lastAvail++
	return true, nil
}

// Push returns chain head to the driver with written bytes of its writable
// buffers filled, publishing the used element and then the used index.
func (q *Queue) Push(head uint16, written uint32) error {
	return q.PushBatch([]UsedElem{{Head: head, Len: written}})
}

// UsedElem is one chain returned to the driver: struct virtq_used_elem.
type UsedElem struct {
	Head uint16
	Len  uint32 // bytes written into the chain's writable buffers
}

// PushBatch returns several chains at once: it writes every used element,
// then publishes the used index once, so the driver sees all of them or
// none (one packet's buffers with VIRTIO_NET_F_MRG_RXBUF need that). The
// chains must have been taken with Pop and not returned yet, so there are
// never more of them than the queue's size.
func (q *Queue) PushBatch(elems []UsedElem) error {
	if q.err != nil {
		return q.err
	}
	if len(elems) > int(q.cfg.Size) {
		return q.fail(fmt.Errorf("%w: %d used elements at once, queue size %d", ErrRing, len(elems), q.cfg.Size))
	}
	var elem [8]byte
	for i, e := range elems {
		binary.LittleEndian.PutUint32(elem[0:], uint32(e.Head))
		binary.LittleEndian.PutUint32(elem[4:], e.Len)
		if err := q.mem.WriteAt(elem[:], q.usedRingAddr(q.usedIdx+uint16(i))); err != nil {
			return q.fail(fmt.Errorf("%w: used element: %w", ErrRing, err))
		}
	}
	// The elements must be visible before the index that publishes them.
	// x86 keeps the stores in order; the atomic also stops the compiler
	// from moving them.
	q.fence()
	next := q.usedIdx + uint16(len(elems))
	if err := q.write16(q.usedIdxAddr(), next); err != nil {
		return err
	}
	q.usedIdx = next
	return nil
}

// NeedsInterrupt reports whether the driver wants an interrupt for what was
// pushed since the previous call: with VIRTIO_F_EVENT_IDX when the used
// index crossed used_event (§2.7.10), otherwise unless the driver set
// VIRTQ_AVAIL_F_NO_INTERRUPT.
func (q *Queue) NeedsInterrupt() (bool, error) {
	if q.err != nil {
		return false, q.err
	}
	// The used index store must be visible before reading the driver's
	// suppression field, or both sides can miss each other (store→load).
	q.fence()
	newIdx, old := q.usedIdx, q.signalled
	if newIdx == old {
		return false, nil
	}
	q.signalled = newIdx
	if q.eventIdx {
		ev, err := q.read16(q.usedEventAddr())
		if err != nil {
			return false, err
		}
		// vring_need_event: did newIdx pass ev since old?
		return newIdx-ev-1 < newIdx-old, nil
	}
	flags, err := q.read16(q.cfg.Driver)
	if err != nil {
		return false, err
	}
	return flags&availFNoInterrupt == 0, nil
}

// DisableNotify asks the driver not to notify while the device is already
// processing the queue. With VIRTIO_F_EVENT_IDX it does nothing: a stale
// avail_event suppresses notifications by itself.
func (q *Queue) DisableNotify() error {
	if q.err != nil {
		return q.err
	}
	if q.eventIdx {
		return nil
	}
	return q.write16(q.cfg.Device, usedFNoNotify)
}

// EnableNotify asks the driver to notify for the next buffer it makes
// available and reports whether buffers became available meanwhile, in
// which case the caller must keep processing rather than wait.
func (q *Queue) EnableNotify() (bool, error) {
	if q.err != nil {
		return false, q.err
	}
	var err error
	if q.eventIdx {
		err = q.write16(q.availEventAddr(), q.lastAvail)
	} else {
		err = q.write16(q.cfg.Device, 0)
	}
	if err != nil {
		return false, err
	}
	// Publish the request before re-reading the driver's index (store→load).
	q.fence()
	idx, err := q.read16(q.availIdxAddr())
	if err != nil {
		return false, err
	}
	return idx != q.lastAvail, nil
}

// QueueState is the device-side position of a queue, for save/restore.
type QueueState struct {
	LastAvail, UsedIdx, Signalled uint16
}

// State returns the queue's position.
func (q *Queue) State() QueueState {
	return QueueState{LastAvail: q.lastAvail, UsedIdx: q.usedIdx, Signalled: q.signalled}
}

// SetState restores a position returned by State.
func (q *Queue) SetState(s QueueState) {
	q.lastAvail, q.usedIdx, q.signalled = s.LastAvail, s.UsedIdx, s.Signalled
}

// clampU32 saturates a byte count for the used ring's 32-bit length.
func clampU32(n uint64) uint32 {
	if n > math.MaxUint32 {
		return math.MaxUint32
	}
	return uint32(n)
}
