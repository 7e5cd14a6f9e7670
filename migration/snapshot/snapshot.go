package snapshot

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"slices"
	"time"

	"github.com/gvmm/gvmm/migration"
)

const (
	// Magic opens every snapshot file.
	Magic = "GVMMSNAP"
	// Version is the format version this package writes and reads.
	Version uint16 = 1
	// PageSize is the page granularity of the memory section.
	PageSize = migration.PageSize

	headerSize  = 48
	trailerSize = sha256.Size
)

// Errors Read and Restore return, wrapped with the position. Any of them
// means: discard the destination.
var (
	ErrMagic     = errors.New("not a gvmm snapshot (bad magic)")
	ErrVersion   = errors.New("unsupported snapshot version")
	ErrFormat    = errors.New("malformed snapshot")
	ErrLimit     = errors.New("snapshot exceeds limit")
	ErrLayout    = migration.ErrLayout
	ErrTruncated = errors.New("snapshot truncated")
	ErrTrailing  = errors.New("bytes after the snapshot's end")
	ErrChecksum  = errors.New("snapshot checksum mismatch (corrupted)")
)

// Meta is the snapshot's metadata besides memory and components.
type Meta struct {
	// Created is when the snapshot was taken (zero: unknown); it keeps
	// nanoseconds, not the location.
	Created time.Time
	// CPU is the CPU compatibility record of the machine that was saved
	// (the caller's encoding, as migration.Options.CPU).
	CPU []byte
	// Machine describes the machine to build before restoring (vCPUs,
	// devices, memory size: the caller's encoding).
	Machine []byte
}

// RegionInfo is one region of the saved guest memory.
type RegionInfo struct {
	GPA  uint64
	Size uint64
}

// Limits bound what a Reader accepts. The zero value selects the
// defaults.
type Limits struct {
	MaxRegions       int    // default 64
	MaxMemory        uint64 // guest memory bytes; default 1 TiB
	MaxComponents    int    // default 4096
	MaxComponentID   int    // bytes; default 128
	MaxComponentSize uint64 // bytes in one component; default 64 MiB
	MaxStateBytes    uint64 // bytes in all components; default 1 GiB
	MaxRecord        int    // bytes in Meta.CPU, and in Meta.Machine; default 1 MiB
}

func orDefault[T int | uint64](v, d T) T {
	if v <= 0 {
		return d
	}
	return v
}

func (l Limits) withDefaults() Limits {
	l.MaxRegions = orDefault(l.MaxRegions, 64)
	l.MaxMemory = orDefault(l.MaxMemory, 1<<40)
	l.MaxComponents = orDefault(l.MaxComponents, 4096)
	l.MaxComponentID = orDefault(l.MaxComponentID, 128)
	l.MaxComponentSize = orDefault(l.MaxComponentSize, 64<<20)
	l.MaxStateBytes = orDefault(l.MaxStateBytes, 1<<30)
	l.MaxRecord = orDefault(l.MaxRecord, 1<<20)
	return l
}

// checkID allows the component ids of the migration stream: letters,
// digits and / - _ . :, not empty.
func checkID(id []byte, max int) error {
	if len(id) == 0 || len(id) > max {
		return fmt.Errorf("%w: component id of %d bytes (1 to %d)", ErrLimit, len(id), max)
	}
	for _, c := range id {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '/' || c == '-' || c == '_' || c == '.' || c == ':':
		default:
			return fmt.Errorf("%w: component id %q has character %q", ErrFormat, id, c)
		}
	}
	return nil
}

// checkRegions checks a region table: sorted, aligned, non-empty,
// non-overlapping.
func checkRegions(rs []RegionInfo, maxMem uint64) error {
	var end, total uint64
	for i, r := range rs {
		if r.GPA%PageSize != 0 || r.Size%PageSize != 0 || r.Size == 0 || r.GPA+r.Size < r.GPA {
			return fmt.Errorf("%w: region %d: %d bytes at %#x", ErrFormat, i, r.Size, r.GPA)
		}
		if i > 0 && r.GPA < end {
			return fmt.Errorf("%w: region %d at %#x is out of order or overlaps", ErrFormat, i, r.GPA)
		}
		end = r.GPA + r.Size
		total += r.Size
		if total > maxMem || total < r.Size {
			return fmt.Errorf("%w: more than %d bytes of guest memory", ErrLimit, maxMem)
		}
	}
	return nil
}

func isZero(p []byte) bool { return bytes.Equal(p, zeroPage[:]) }

var zeroPage [PageSize]byte

// Write writes a snapshot of regions (any order; the file lists them by
// address) and comps (ids unique, in the order given) with meta to w. The
// machine must be paused: the memory is read twice (presence bitmap, then
// pages).
func Write(ctx context.Context, w io.Writer, regions []migration.Region, comps []migration.Component, meta Meta) error {
	if err := write(ctx, w, regions, comps, meta); err != nil {
		return fmt.Errorf("write snapshot: %w", err)
	}
	return nil
}

func write(ctx context.Context, w io.Writer, regions []migration.Region, comps []migration.Component, meta Meta) error {
	regs := slices.Clone(regions)
	slices.SortFunc(regs, func(a, b migration.Region) int {
		switch {
		case a.GPA < b.GPA:
			return -1
		case a.GPA > b.GPA:
			return 1
		}
		return 0
	})
	infos := make([]RegionInfo, len(regs))
	for i, r := range regs {
		infos[i] = RegionInfo{GPA: r.GPA, Size: uint64(len(r.Data))}
	}
	if len(regs) == 0 || len(regs) > int(^uint32(0)) {
		return fmt.Errorf("%w: %d regions", ErrLayout, len(regs))
	}
	if err := checkRegions(infos, ^uint64(0)); err != nil {
		return err
	}
	var state uint64
	seen := make(map[string]bool, len(comps))
	for _, c := range comps {
		if err := checkID([]byte(c.ID), 1<<16-1); err != nil {
			return err
		}
		if seen[c.ID] {
			return fmt.Errorf("%w: component %q twice", ErrFormat, c.ID)
		}
		seen[c.ID] = true
		state += uint64(len(c.Data))
	}
	if len(meta.CPU) > int(^uint32(0)) || len(meta.Machine) > int(^uint32(0)) || len(comps) > int(^uint32(0)) {
		return fmt.Errorf("%w: metadata or component count too large", ErrLimit)
	}
	h := sha256.New()
	bw := bufio.NewWriterSize(io.MultiWriter(w, h), 256<<10)

	hdr := make([]byte, headerSize)
	copy(hdr, Magic)
	binary.BigEndian.PutUint16(hdr[8:], Version)
	binary.BigEndian.PutUint32(hdr[12:], uint32(len(regs)))
	binary.BigEndian.PutUint32(hdr[16:], uint32(len(comps)))
	binary.BigEndian.PutUint32(hdr[20:], uint32(len(meta.CPU)))
	binary.BigEndian.PutUint32(hdr[24:], uint32(len(meta.Machine)))
	if !meta.Created.IsZero() {
		binary.BigEndian.PutUint64(hdr[32:], uint64(meta.Created.UnixNano()))
	}
	binary.BigEndian.PutUint64(hdr[40:], state)
	b := hdr
	for _, r := range infos {
		b = binary.BigEndian.AppendUint64(b, r.GPA)
		b = binary.BigEndian.AppendUint64(b, r.Size)
	}
	for _, c := range comps {
		b = binary.BigEndian.AppendUint16(b, uint16(len(c.ID)))
		b = append(b, c.ID...)
		b = binary.BigEndian.AppendUint64(b, uint64(len(c.Data)))
	}
	b = append(b, meta.CPU...)
	b = append(b, meta.Machine...)
	if _, err := bw.Write(b); err != nil {
		return err
	}
	for _, r := range regs {
		if err := ctx.Err(); err != nil {
			return err
		}
		pages := len(r.Data) / PageSize
		bitmap := make([]byte, (pages+7)/8)
		for p := range pages {
			if !isZero(r.Data[p*PageSize : (p+1)*PageSize]) {
				bitmap[p/8] |= 1 << (p % 8)
			}
		}
		if _, err := bw.Write(bitmap); err != nil {
			return err
		}
		// Write runs of present pages in one call each.
		for p := 0; p < pages; {
			if bitmap[p/8]&(1<<(p%8)) == 0 {
				p++
				continue
			}
			q := p + 1
			for q < pages && bitmap[q/8]&(1<<(q%8)) != 0 {
				q++
			}
			if _, err := bw.Write(r.Data[p*PageSize : q*PageSize]); err != nil {
				return err
			}
			p = q
			if err := ctx.Err(); err != nil {
				return err
			}
		}
	}
	for _, c := range comps {
		if _, err := bw.Write(c.Data); err != nil {
			return err
		}
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	if _, err := w.Write(h.Sum(nil)); err != nil {
		return err
	}
	return nil
}

// hashReader hashes every byte read through it.
type hashReader struct {
	r io.Reader
	h hash.Hash
}

func (h *hashReader) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	h.h.Write(p[:n])
	return n, err
}

// compInfo is one entry of the component table.
type compInfo struct {
	id   string
	size uint64
}

// Reader reads one snapshot: NewReader reads and checks everything up to
// the memory, so that the caller can build a matching machine; Restore
// reads the rest into it.
type Reader struct {
	br      *bufio.Reader
	hr      *hashReader
	lim     Limits
	regions []RegionInfo
	comps   []compInfo
	meta    Meta
	done    bool
}

// NewReader reads and checks the header, the region and component tables
// and the metadata of the snapshot in r against lim.
func NewReader(r io.Reader, lim Limits) (*Reader, error) {
	br := bufio.NewReaderSize(r, 256<<10)
	sr := &Reader{br: br, hr: &hashReader{r: br, h: sha256.New()}, lim: lim.withDefaults()}
	if err := sr.readHead(); err != nil {
		return nil, fmt.Errorf("read snapshot: %w", err)
	}
	return sr, nil
}

// Regions returns the saved memory layout, by address.
func (r *Reader) Regions() []RegionInfo { return slices.Clone(r.regions) }

// Meta returns the snapshot's metadata.
func (r *Reader) Meta() Meta { return r.meta }

func (r *Reader) full(b []byte, what string) error {
	if _, err := io.ReadFull(r.hr, b); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("%w: in the %s", ErrTruncated, what)
		}
		return fmt.Errorf("read %s: %w", what, err)
	}
	return nil
}

// readN reads n bytes, growing its buffer only as the bytes arrive, so a
// large declared size in a short file allocates little.
func (r *Reader) readN(n uint64, what string) ([]byte, error) {
	var buf bytes.Buffer
	m, err := io.Copy(&buf, io.LimitReader(r.hr, int64(n)))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", what, err)
	}
	if uint64(m) != n {
		return nil, fmt.Errorf("%w: in the %s", ErrTruncated, what)
	}
	return buf.Bytes(), nil
}

func (r *Reader) readHead() error {
	lim := &r.lim
	hdr := make([]byte, headerSize)
	if err := r.full(hdr, "header"); err != nil {
		return err
	}
	if string(hdr[:8]) != Magic {
		return ErrMagic
	}
	if v := binary.BigEndian.Uint16(hdr[8:]); v != Version {
		return fmt.Errorf("%w: file is version %d, this gvmm reads version %d", ErrVersion, v, Version)
	}
	if f := binary.BigEndian.Uint16(hdr[10:]); f != 0 {
		return fmt.Errorf("%w: flags %#x", ErrFormat, f)
	}
	if binary.BigEndian.Uint32(hdr[28:]) != 0 {
		return fmt.Errorf("%w: reserved field set", ErrFormat)
	}
	nreg := binary.BigEndian.Uint32(hdr[12:])
	ncomp := binary.BigEndian.Uint32(hdr[16:])
	cpuLen := binary.BigEndian.Uint32(hdr[20:])
	machLen := binary.BigEndian.Uint32(hdr[24:])
	created := int64(binary.BigEndian.Uint64(hdr[32:]))
	state := binary.BigEndian.Uint64(hdr[40:])
	if nreg == 0 || uint64(nreg) > uint64(lim.MaxRegions) {
		return fmt.Errorf("%w: %d regions (1 to %d)", ErrLimit, nreg, lim.MaxRegions)
	}
	if uint64(ncomp) > uint64(lim.MaxComponents) {
		return fmt.Errorf("%w: %d components (limit %d)", ErrLimit, ncomp, lim.MaxComponents)
	}
	if uint64(cpuLen) > uint64(lim.MaxRecord) || uint64(machLen) > uint64(lim.MaxRecord) {
		return fmt.Errorf("%w: CPU record of %d bytes, machine record of %d (limit %d)", ErrLimit, cpuLen, machLen, lim.MaxRecord)
	}
	if state > lim.MaxStateBytes {
		return fmt.Errorf("%w: %d state bytes (limit %d)", ErrLimit, state, lim.MaxStateBytes)
	}
	tbl := make([]byte, 16*int(nreg))
	if err := r.full(tbl, "region table"); err != nil {
		return err
	}
	r.regions = make([]RegionInfo, nreg)
	for i := range r.regions {
		r.regions[i] = RegionInfo{GPA: binary.BigEndian.Uint64(tbl[16*i:]), Size: binary.BigEndian.Uint64(tbl[16*i+8:])}
	}
	if err := checkRegions(r.regions, lim.MaxMemory); err != nil {
		return err
	}
	var sum uint64
	seen := make(map[string]bool)
	var b2 [2]byte
	var b8 [8]byte
	idBuf := make([]byte, lim.MaxComponentID)
	for i := range ncomp {
		if err := r.full(b2[:], "component table"); err != nil {
			return err
		}
		n := int(binary.BigEndian.Uint16(b2[:]))
		if n == 0 || n > lim.MaxComponentID {
			return fmt.Errorf("%w: component %d: id of %d bytes (1 to %d)", ErrLimit, i, n, lim.MaxComponentID)
		}
		id := idBuf[:n]
		if err := r.full(id, "component table"); err != nil {
			return err
		}
		if err := checkID(id, lim.MaxComponentID); err != nil {
			return fmt.Errorf("component %d: %w", i, err)
		}
		if seen[string(id)] {
			return fmt.Errorf("%w: component %q twice", ErrFormat, id)
		}
		seen[string(id)] = true
		if err := r.full(b8[:], "component table"); err != nil {
			return err
		}
		size := binary.BigEndian.Uint64(b8[:])
		if size > lim.MaxComponentSize {
			return fmt.Errorf("%w: component %q of %d bytes (limit %d)", ErrLimit, id, size, lim.MaxComponentSize)
		}
		sum += size
		if sum > state {
			return fmt.Errorf("%w: components add up to more than the declared %d bytes", ErrFormat, state)
		}
		r.comps = append(r.comps, compInfo{id: string(id), size: size})
	}
	if sum != state {
		return fmt.Errorf("%w: components add up to %d bytes, header says %d", ErrFormat, sum, state)
	}
	var err error
	if r.meta.CPU, err = r.readN(uint64(cpuLen), "CPU record"); err != nil {
		return err
	}
	if r.meta.Machine, err = r.readN(uint64(machLen), "machine record"); err != nil {
		return err
	}
	if created != 0 {
		r.meta.Created = time.Unix(0, created)
	}
	return nil
}

// Restore reads the memory into dst, whose regions (any order) must match
// the snapshot's exactly, then the components, the trailer and the end of
// the file. Only a nil error means dst holds the saved memory and the
// components are the saved ones; on any error dst holds arbitrary bytes.
// Restore may be called once.
func (r *Reader) Restore(ctx context.Context, dst []migration.Region) ([]migration.Component, error) {
	if r.done {
		return nil, errors.New("restore snapshot: already read")
	}
	r.done = true
	comps, err := r.restore(ctx, dst)
	if err != nil {
		return nil, fmt.Errorf("restore snapshot: %w", err)
	}
	return comps, nil
}

func (r *Reader) restore(ctx context.Context, dst []migration.Region) ([]migration.Component, error) {
	regs := slices.Clone(dst)
	slices.SortFunc(regs, func(a, b migration.Region) int {
		switch {
		case a.GPA < b.GPA:
			return -1
		case a.GPA > b.GPA:
			return 1
		}
		return 0
	})
	if len(regs) != len(r.regions) {
		return nil, fmt.Errorf("%w: snapshot has %d regions, destination %d", ErrLayout, len(r.regions), len(regs))
	}
	for i, s := range r.regions {
		if regs[i].GPA != s.GPA || uint64(len(regs[i].Data)) != s.Size {
			return nil, fmt.Errorf("%w: snapshot region %d is %d bytes at %#x, destination's %d bytes at %#x",
				ErrLayout, i, s.Size, s.GPA, len(regs[i].Data), regs[i].GPA)
		}
	}
	for i, reg := range regs {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if err := r.readRegion(ctx, i, reg); err != nil {
			return nil, err
		}
	}
	comps := make([]migration.Component, len(r.comps))
	for i, c := range r.comps {
		data, err := r.readN(c.size, "component "+c.id)
		if err != nil {
			return nil, err
		}
		comps[i] = migration.Component{ID: c.id, Data: data}
	}
	sum := r.hr.h.Sum(nil)
	var trailer [trailerSize]byte
	if _, err := io.ReadFull(r.br, trailer[:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("%w: in the trailer", ErrTruncated)
		}
		return nil, fmt.Errorf("read trailer: %w", err)
	}
	if !bytes.Equal(sum, trailer[:]) {
		return nil, ErrChecksum
	}
	var one [1]byte
	switch _, err := io.ReadFull(r.br, one[:]); {
	case err == nil:
		return nil, ErrTrailing
	case errors.Is(err, io.EOF):
	default:
		return nil, fmt.Errorf("read past the trailer: %w", err)
	}
	return comps, nil
}

func (r *Reader) readRegion(ctx context.Context, i int, reg migration.Region) error {
	pages := len(reg.Data) / PageSize
	bitmap := make([]byte, (pages+7)/8)
	what := fmt.Sprintf("bitmap of region %d", i)
	if err := r.full(bitmap, what); err != nil {
		return err
	}
	if rem := pages % 8; rem != 0 && bitmap[len(bitmap)-1]>>rem != 0 {
		return fmt.Errorf("%w: %s has bits past the last page", ErrFormat, what)
	}
	what = fmt.Sprintf("pages of region %d", i)
	for p := 0; p < pages; {
		if bitmap[p/8]&(1<<(p%8)) == 0 {
			clear(reg.Data[p*PageSize : (p+1)*PageSize])
			p++
			continue
		}
		q := p + 1
		for q < pages && q-p < 256 && bitmap[q/8]&(1<<(q%8)) != 0 {
			q++
		}
		run := reg.Data[p*PageSize : q*PageSize]
		if err := r.full(run, what); err != nil {
			return err
		}
		for k := 0; k < len(run); k += PageSize {
			if isZero(run[k : k+PageSize]) {
				return fmt.Errorf("%w: region %d stores zero page %d", ErrFormat, i, p+k/PageSize)
			}
		}
		p = q
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	return nil
}

// Read reads the snapshot in r into dst, whose regions must match the
// snapshot's exactly, and returns its components and metadata. On any
// error dst holds arbitrary bytes and must be discarded.
func Read(ctx context.Context, r io.Reader, dst []migration.Region, lim Limits) ([]migration.Component, Meta, error) {
	sr, err := NewReader(r, lim)
	if err != nil {
		return nil, Meta{}, err
	}
	comps, err := sr.Restore(ctx, dst)
	if err != nil {
		return nil, Meta{}, err
	}
	return comps, sr.Meta(), nil
}
