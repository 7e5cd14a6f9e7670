package blk

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/gvmm/gvmm/virtio"
)

// Feature bits (§5.2.3).
const (
	FSegMax  uint64 = 1 << 2  // VIRTIO_BLK_F_SEG_MAX
	FRO      uint64 = 1 << 5  // VIRTIO_BLK_F_RO
	FBlkSize uint64 = 1 << 6  // VIRTIO_BLK_F_BLK_SIZE
	FFlush   uint64 = 1 << 9  // VIRTIO_BLK_F_FLUSH
	FDiscard uint64 = 1 << 13 // VIRTIO_BLK_F_DISCARD
)

// Request types and status values (§5.2.6).
const (
	TypeIn      = 0  // VIRTIO_BLK_T_IN
	TypeOut     = 1  // VIRTIO_BLK_T_OUT
	TypeFlush   = 4  // VIRTIO_BLK_T_FLUSH
	TypeGetID   = 8  // VIRTIO_BLK_T_GET_ID
	TypeDiscard = 11 // VIRTIO_BLK_T_DISCARD

	StatusOK     = 0 // VIRTIO_BLK_S_OK
	StatusIOErr  = 1 // VIRTIO_BLK_S_IOERR
	StatusUnsupp = 2 // VIRTIO_BLK_S_UNSUPP
)

const (
	// SectorSize is the unit of virtio-blk addresses, whatever blk_size is.
	SectorSize = 512
	// IDBytes is VIRTIO_BLK_ID_BYTES, the length of the serial.
	IDBytes = 20

	queueSize     = 256
	headerSize    = 16
	discardSize   = 16 // struct virtio_blk_discard_write_zeroes
	discardUnmap  = 1
	maxDiscardSeg = 32
	// maxDiscardSectors bounds one discard range (2 GiB).
	maxDiscardSectors = 1 << 22
	// discardAlign is discard_sector_alignment: 4 KiB, in sectors.
	discardAlign = 8
	configSize   = 60
)

// Options configure a device. The zero value is a writable disk with no
// serial.
type Options struct {
	ReadOnly bool
	// Serial is what VIRTIO_BLK_T_GET_ID returns, at most IDBytes bytes.
	Serial string
	Log    *slog.Logger
}

// Device is a virtio-blk device over one image file.
type Device struct {
	f        *os.File
	path     string
	sectors  uint64
	readOnly bool
	serial   [IDBytes]byte
	log      *slog.Logger

	mu      sync.Mutex
	workers *virtio.Workers
}

var _ virtio.Device = (*Device)(nil)

// Open opens the raw image at path. Its size, rounded down to whole
// sectors, is the disk's capacity.
func Open(path string, opts Options) (*Device, error) {
	if len(opts.Serial) > IDBytes {
		return nil, fmt.Errorf("virtio-blk: serial %q longer than %d bytes", opts.Serial, IDBytes)
	}
	flag := os.O_RDWR
	if opts.ReadOnly {
		flag = os.O_RDONLY
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return nil, fmt.Errorf("virtio-blk: %w", err)
	}
	// Seek rather than Stat: a block device's Stat size is 0.
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("virtio-blk: size of %s: %w", path, err)
	}
	d := &Device{f: f, path: path, sectors: uint64(size) / SectorSize, readOnly: opts.ReadOnly, log: opts.Log}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	d.log = d.log.With("disk", path)
	copy(d.serial[:], opts.Serial)
	return d, nil
}

// Close stops the device and closes the image.
func (d *Device) Close() error {
	d.Reset()
	if err := d.f.Close(); err != nil {
		return fmt.Errorf("virtio-blk: close %s: %w", d.path, err)
	}
	return nil
}

// Sectors is the capacity in 512-byte sectors.
func (d *Device) Sectors() uint64 { return d.sectors }

// Type implements virtio.Device.
func (*Device) Type() virtio.DeviceType { return virtio.TypeBlock }

// Features implements virtio.Device.
func (d *Device) Features() uint64 {
	f := FSegMax | FBlkSize | FFlush
	if d.readOnly {
		return f | FRO
	}
	return f | FDiscard
}

// QueueSizes implements virtio.Device: one request queue.
func (*Device) QueueSizes() []uint16 { return []uint16{queueSize} }

// ReadConfig implements virtio.Device (struct virtio_blk_config).
func (d *Device) ReadConfig(off uint32, p []byte) {
	clear(p)
	var b [configSize]byte
	binary.LittleEndian.PutUint64(b[0:], d.sectors)          // capacity
	binary.LittleEndian.PutUint32(b[12:], queueSize-2)       // seg_max
	binary.LittleEndian.PutUint32(b[20:], SectorSize)        // blk_size
	binary.LittleEndian.PutUint16(b[34:], 1)                 // num_queues
	binary.LittleEndian.PutUint32(b[36:], maxDiscardSectors) // max_discard_sectors
	binary.LittleEndian.PutUint32(b[40:], maxDiscardSeg)     // max_discard_seg
	binary.LittleEndian.PutUint32(b[44:], discardAlign)      // discard_sector_alignment
	if off < configSize {
		copy(p, b[off:])
	}
}

// WriteConfig implements virtio.Device: nothing is writable (no
// VIRTIO_BLK_F_CONFIG_WCE).
func (*Device) WriteConfig(uint32, []byte) {}

// Activate implements virtio.Device.
func (d *Device) Activate(ctx context.Context, env *virtio.Env) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.workers != nil {
		return errors.New("virtio-blk: already active")
	}
	r := &requests{dev: d, mem: env.Mem, writeThrough: env.Features&FFlush == 0}
	d.workers = virtio.StartWorkers(ctx, env, r.handle)
	return nil
}

// Notify implements virtio.Device.
func (d *Device) Notify(q int) {
	d.mu.Lock()
	w := d.workers
	d.mu.Unlock()
	if w != nil {
		w.Notify(q)
	}
}

// Reset implements virtio.Device: it waits for requests in flight.
func (d *Device) Reset() {
	d.mu.Lock()
	w := d.workers
	d.workers = nil
	d.mu.Unlock()
	if w != nil {
		w.Stop()
	}
}

// requests handles the chains of one activation.
type requests struct {
	dev *Device
	mem virtio.GuestMemory
	// writeThrough: the driver did not negotiate VIRTIO_BLK_F_FLUSH, so
	// every write is made durable before it completes (§5.2.6.2).
	writeThrough bool
}

// span is part of a chain's buffers: segs with the first skip bytes left
// out and n bytes in all.
type span struct {
	segs []virtio.Segment
	skip uint64
	n    uint64
}

// each calls fn for every piece of s as a guest address and length.
func (s span) each(fn func(gpa, n uint64) error) error {
	skip, left := s.skip, s.n
	for _, seg := range s.segs {
		if left == 0 {
			return nil
		}
		l := uint64(seg.Len)
		if skip >= l {
			skip -= l
			continue
		}
		n := min(l-skip, left)
		if err := fn(seg.Addr+skip, n); err != nil {
			return err
		}
		skip, left = 0, left-n
	}
	return nil
}

// iovMax is IOV_MAX on Linux: the most buffers one preadv/pwritev takes.
const iovMax = 1024

// vectored reads the image at off into the guest buffers of s, or writes
// them there, with one preadv/pwritev per up to iovMax buffers (a 1 MiB
// request can have hundreds of segments: one system call each cost more
// than the copy). Guest pages a read filled are marked dirty, also when
// it fails part way.
func (r *requests) vectored(s span, off int64, read bool) error {
	var views [][]byte
	var gpas []uint64
	if err := s.each(func(gpa, n uint64) error {
		b, err := r.mem.Slice(gpa, n)
		if err != nil {
			return err
		}
		views, gpas = append(views, b), append(gpas, gpa)
		return nil
	}); err != nil {
		return err
	}
	fd := int(r.dev.f.Fd())
	for i := 0; i < len(views); {
		batch := views[i:min(len(views), i+iovMax)]
		var n int
		var err error
		if read {
			n, err = unix.Preadv(fd, batch, off)
		} else {
			n, err = unix.Pwritev(fd, batch, off)
		}
		if n < 0 {
			n = 0
		}
		if n == 0 && err == nil {
			// Nothing moved: past the end of the image.
			return io.ErrUnexpectedEOF
		}
		off += int64(n)
		// Consume n bytes: whole views, then part of one.
		for n > 0 && i < len(views) {
			k := min(n, len(views[i]))
			if read {
				r.mem.MarkDirty(gpas[i], uint64(k))
			}
			n -= k
			if k == len(views[i]) {
				i++
			} else {
				views[i], gpas[i] = views[i][k:], gpas[i]+uint64(k)
			}
		}
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (r *requests) handle(_ context.Context, _ int, c *virtio.Chain) (uint32, error) {
	if c.WritableLen == 0 {
		r.dev.log.Warn("virtio-blk: request without a status byte", "head", c.Head)
		return 0, nil
	}
	in := span{segs: c.Writable, n: c.WritableLen - 1}
	status, written := r.do(c, in)
	if _, err := c.WriteAt([]byte{status}, in.n); err != nil {
		return 0, fmt.Errorf("virtio-blk: status: %w", err)
	}
	return clampLen(written + 1), nil
}

func clampLen(n uint64) uint32 {
	if n > 0xffffffff {
		return 0xffffffff
	}
	return uint32(n)
}

// do carries out one request and returns its status and the number of
// data bytes written into the guest's buffers.
func (r *requests) do(c *virtio.Chain, in span) (status byte, written uint64) {
	var hdr [headerSize]byte
	if n, err := c.ReadAt(hdr[:], 0); err != nil || n < headerSize {
		return StatusIOErr, 0
	}
	typ := binary.LittleEndian.Uint32(hdr[0:])
	sector := binary.LittleEndian.Uint64(hdr[8:])
	out := span{segs: c.Readable, skip: headerSize, n: c.ReadableLen - headerSize}
	d := r.dev
	switch typ {
	case TypeIn:
		if !d.inRange(sector, in.n) {
			return StatusIOErr, 0
		}
		err := r.vectored(in, int64(sector*SectorSize), true)
		if err != nil {
			d.log.Warn("virtio-blk: read", "sector", sector, "err", err)
			return StatusIOErr, 0
		}
		return StatusOK, in.n
	case TypeOut:
		if d.readOnly || !d.inRange(sector, out.n) {
			return StatusIOErr, 0
		}
		err := r.vectored(out, int64(sector*SectorSize), false)
		if err == nil && r.writeThrough {
			err = unix.Fdatasync(int(d.f.Fd()))
		}
		if err != nil {
			d.log.Warn("virtio-blk: write", "sector", sector, "err", err)
			return StatusIOErr, 0
		}
		return StatusOK, 0
	case TypeFlush:
		if d.readOnly {
			return StatusOK, 0
		}
		if err := unix.Fdatasync(int(d.f.Fd())); err != nil {
			d.log.Warn("virtio-blk: flush", "err", err)
			return StatusIOErr, 0
		}
		return StatusOK, 0
	case TypeGetID:
		n := min(in.n, IDBytes)
		if _, err := c.WriteAt(d.serial[:n], 0); err != nil {
			return StatusIOErr, 0
		}
		return StatusOK, n
	case TypeDiscard:
		if d.readOnly {
			return StatusUnsupp, 0 // not offered on a read-only disk
		}
		return r.discard(c, out), 0
	default:
		return StatusUnsupp, 0
	}
}

// inRange reports whether n bytes from sector are whole sectors inside the
// disk, without overflow.
func (d *Device) inRange(sector, n uint64) bool {
	return n%SectorSize == 0 && sector <= d.sectors && n/SectorSize <= d.sectors-sector
}

func (r *requests) discard(c *virtio.Chain, out span) byte {
	if out.n == 0 || out.n%discardSize != 0 || out.n/discardSize > maxDiscardSeg {
		return StatusIOErr
	}
	segs := make([]byte, out.n)
	if n, err := c.ReadAt(segs, out.skip); err != nil || uint64(n) != out.n {
		return StatusIOErr
	}
	d := r.dev
	// Check every range before punching any.
	for b := segs; len(b) > 0; b = b[discardSize:] {
		sector := binary.LittleEndian.Uint64(b[0:])
		num := uint64(binary.LittleEndian.Uint32(b[8:]))
		flags := binary.LittleEndian.Uint32(b[12:])
		if flags != 0 { // unmap is for write-zeroes only; the rest reserved
			return StatusUnsupp
		}
		if num > maxDiscardSectors || !d.inRange(sector, num*SectorSize) {
			return StatusIOErr
		}
	}
	for b := segs; len(b) > 0; b = b[discardSize:] {
		sector := binary.LittleEndian.Uint64(b[0:])
		num := uint64(binary.LittleEndian.Uint32(b[8:]))
		if num == 0 {
			continue
		}
		err := unix.Fallocate(int(d.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE,
			int64(sector*SectorSize), int64(num*SectorSize))
		if err != nil {
			d.log.Warn("virtio-blk: discard", "sector", sector, "sectors", num, "err", fmt.Errorf("fallocate: %w", err))
			return StatusIOErr
		}
	}
	return StatusOK
}
