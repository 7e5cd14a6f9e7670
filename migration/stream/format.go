package stream

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// Wire constants. Changing any of them changes the format version.
const (
	// Magic opens every connection.
	Magic = "GVMMSTRM"
	// Version is the format version this package writes and reads.
	Version uint16 = 1
	// PageSize is the guest page size carried by the stream.
	PageSize = 4096

	// headerSize is the size of the connection header on the wire.
	headerSize = 64
	// headerBodyLen is the header length field for Version 1: the bytes
	// after magic, version and the length field itself.
	headerBodyLen = headerSize - 12

	// recordHeaderSize is the size of the plaintext record header that is
	// bound to the record as additional authenticated data.
	recordHeaderSize = 16
	// tagSize is the AES-GCM authentication tag size.
	tagSize = 16

	// suiteAES256GCM names the only cipher suite of Version 1.
	suiteAES256GCM uint16 = 1
)

// Feature bits, offered by the sender in the header. A receiver refuses a
// stream that uses a feature it does not know.
const (
	// FeatureZstd: page batches may carry zstd frames.
	FeatureZstd uint64 = 1 << 0
	// FeatureProgress: the destination reports each pass it has applied
	// on the reverse direction of connection 0, before the ack.
	FeatureProgress uint64 = 1 << 1

	knownFeatures = FeatureZstd | FeatureProgress
)

// Hard bounds that no Limits value can exceed.
const (
	// MaxConnections is the largest connection count of one stream.
	MaxConnections = 64
	// MaxBatchPagesLimit is the largest number of pages in one batch.
	MaxBatchPagesLimit = 1024
	// MaxRecordSizeLimit is the largest plaintext record body.
	MaxRecordSizeLimit = 16 << 20
)

// RecordType is the stable type id of a record. Ids are never reused.
type RecordType uint8

// Record types. The numbers are part of the wire format.
const (
	RecordCPU       RecordType = 1 // CPU compatibility record (opaque bytes), conn 0, first
	RecordPages     RecordType = 2 // batch of non-zero pages
	RecordZeroRuns  RecordType = 3 // runs of zero pages
	RecordState     RecordType = 4 // device/vCPU state blob keyed by component id, conn 0
	RecordEndPass   RecordType = 5 // end-of-pass marker, on every connection
	RecordConnEnd   RecordType = 6 // last record of connections 1..N-1
	RecordManifest  RecordType = 7 // final manifest, last record of conn 0
	RecordAck       RecordType = 8 // destination's acknowledgement, reverse direction
	RecordProgress  RecordType = 9 // destination applied a pass, reverse direction (FeatureProgress)
	maxRecordTypeID            = RecordProgress
)

func (t RecordType) String() string {
	switch t {
	case RecordCPU:
		return "cpu"
	case RecordPages:
		return "pages"
	case RecordZeroRuns:
		return "zero-runs"
	case RecordState:
		return "state"
	case RecordEndPass:
		return "end-of-pass"
	case RecordConnEnd:
		return "connection-end"
	case RecordManifest:
		return "manifest"
	case RecordAck:
		return "ack"
	case RecordProgress:
		return "progress"
	}
	return fmt.Sprintf("record-type-%d", uint8(t))
}

// Errors a receiver (or the sender's acknowledgement check) returns, wrapped
// with the operation and position. Any of them means: discard everything
// received on this stream.
var (
	ErrMagic     = errors.New("not a gvmm migration stream (bad magic)")
	ErrVersion   = errors.New("unsupported stream format version")
	ErrHeader    = errors.New("invalid stream header")
	ErrStreamID  = errors.New("stream id does not match the expected migration")
	ErrLimit     = errors.New("length exceeds limit")
	ErrFormat    = errors.New("malformed record")
	ErrAuth      = errors.New("record authentication failed (tampered, wrong key or wrong stream)")
	ErrSequence  = errors.New("record out of sequence (dropped, reordered, duplicated or replayed)")
	ErrTruncated = errors.New("stream truncated")
	ErrOrder     = errors.New("record not allowed here")
	ErrAddress   = errors.New("page address unaligned or outside guest memory")
	ErrManifest  = errors.New("manifest does not match what was received")
	ErrCPU       = errors.New("CPU not compatible")
	ErrKey       = errors.New("key must be 32 bytes")
)

// Header is the plaintext connection header. Every connection of a stream
// carries the same header except ConnIndex. The header bytes are bound into
// each connection's key derivation, so a changed header fails the first
// record's authentication.
type Header struct {
	Version       uint16
	Features      uint64
	StreamID      [16]byte
	ConnIndex     uint16
	ConnCount     uint16
	PageSize      uint32
	GuestMemSize  uint64 // bytes; every page address is below it
	MaxRecordSize uint32 // largest plaintext record body the sender writes
	MaxBatchPages uint32 // most pages in one page batch
	Suite         uint16
}

func (h *Header) marshal() []byte {
	b := make([]byte, headerSize)
	copy(b, Magic)
	binary.BigEndian.PutUint16(b[8:], h.Version)
	binary.BigEndian.PutUint16(b[10:], headerBodyLen)
	binary.BigEndian.PutUint64(b[12:], h.Features)
	copy(b[20:36], h.StreamID[:])
	binary.BigEndian.PutUint16(b[36:], h.ConnIndex)
	binary.BigEndian.PutUint16(b[38:], h.ConnCount)
	binary.BigEndian.PutUint32(b[40:], h.PageSize)
	binary.BigEndian.PutUint64(b[44:], h.GuestMemSize)
	binary.BigEndian.PutUint32(b[52:], h.MaxRecordSize)
	binary.BigEndian.PutUint32(b[56:], h.MaxBatchPages)
	binary.BigEndian.PutUint16(b[60:], h.Suite)
	// b[62:64] reserved, zero.
	return b
}

// parseHeader decodes and checks a connection header against lim. b must be
// headerSize bytes.
func parseHeader(b []byte, lim *Limits) (Header, error) {
	var h Header
	if len(b) != headerSize {
		return h, fmt.Errorf("%w: %d bytes", ErrHeader, len(b))
	}
	if string(b[:8]) != Magic {
		return h, ErrMagic
	}
	h.Version = binary.BigEndian.Uint16(b[8:])
	if h.Version != Version {
		return h, fmt.Errorf("%w: stream is version %d, this gvmm reads version %d", ErrVersion, h.Version, Version)
	}
	if n := binary.BigEndian.Uint16(b[10:]); n != headerBodyLen {
		return h, fmt.Errorf("%w: header length %d, want %d", ErrHeader, n, headerBodyLen)
	}
	h.Features = binary.BigEndian.Uint64(b[12:])
	copy(h.StreamID[:], b[20:36])
	h.ConnIndex = binary.BigEndian.Uint16(b[36:])
	h.ConnCount = binary.BigEndian.Uint16(b[38:])
	h.PageSize = binary.BigEndian.Uint32(b[40:])
	h.GuestMemSize = binary.BigEndian.Uint64(b[44:])
	h.MaxRecordSize = binary.BigEndian.Uint32(b[52:])
	h.MaxBatchPages = binary.BigEndian.Uint32(b[56:])
	h.Suite = binary.BigEndian.Uint16(b[60:])
	if binary.BigEndian.Uint16(b[62:]) != 0 {
		return h, fmt.Errorf("%w: reserved bits set", ErrHeader)
	}
	if h.Features&^knownFeatures != 0 {
		return h, fmt.Errorf("%w: unknown features %#x", ErrHeader, h.Features&^knownFeatures)
	}
	if h.Suite != suiteAES256GCM {
		return h, fmt.Errorf("%w: unknown cipher suite %d", ErrHeader, h.Suite)
	}
	if h.PageSize != PageSize {
		return h, fmt.Errorf("%w: page size %d, want %d", ErrHeader, h.PageSize, PageSize)
	}
	if h.ConnCount == 0 || int(h.ConnCount) > lim.maxConns() || h.ConnIndex >= h.ConnCount {
		return h, fmt.Errorf("%w: connection %d of %d (limit %d)", ErrLimit, h.ConnIndex, h.ConnCount, lim.maxConns())
	}
	if h.GuestMemSize == 0 || h.GuestMemSize%PageSize != 0 || h.GuestMemSize > lim.maxGuestMemory() {
		return h, fmt.Errorf("%w: guest memory size %d (limit %d, must be page-aligned)", ErrLimit, h.GuestMemSize, lim.maxGuestMemory())
	}
	if h.MaxRecordSize == 0 || h.MaxRecordSize > lim.maxRecordSize() {
		return h, fmt.Errorf("%w: declared record size %d (limit %d)", ErrLimit, h.MaxRecordSize, lim.maxRecordSize())
	}
	if h.MaxBatchPages == 0 || h.MaxBatchPages > lim.maxBatchPages() {
		return h, fmt.Errorf("%w: declared batch of %d pages (limit %d)", ErrLimit, h.MaxBatchPages, lim.maxBatchPages())
	}
	return h, nil
}

// Limits bounds what a receiver accepts. The zero value selects the
// defaults; a field larger than the hard bound is clamped to it.
type Limits struct {
	MaxRecordSize  uint32 // plaintext body bytes; default 2 MiB
	MaxBatchPages  uint32 // default 256
	MaxComponentID int    // bytes in a component id; default 128
	MaxGuestMemory uint64 // default 4 TiB
	MaxConns       int    // default 16
	MaxStates      int    // state records per stream; default 65536
	MaxStateBytes  uint64 // total state bytes; default 1 GiB
}

func (l *Limits) maxRecordSize() uint32 {
	if l == nil || l.MaxRecordSize == 0 {
		return 2 << 20
	}
	return min(l.MaxRecordSize, MaxRecordSizeLimit)
}

func (l *Limits) maxBatchPages() uint32 {
	if l == nil || l.MaxBatchPages == 0 {
		return 256
	}
	return min(l.MaxBatchPages, MaxBatchPagesLimit)
}

func (l *Limits) maxComponentID() int {
	if l == nil || l.MaxComponentID <= 0 {
		return 128
	}
	return min(l.MaxComponentID, 1024)
}

func (l *Limits) maxGuestMemory() uint64 {
	if l == nil || l.MaxGuestMemory == 0 {
		return 4 << 40
	}
	return l.MaxGuestMemory
}

func (l *Limits) maxConns() int {
	if l == nil || l.MaxConns <= 0 {
		return 16
	}
	return min(l.MaxConns, MaxConnections)
}

func (l *Limits) maxStates() int {
	if l == nil || l.MaxStates <= 0 {
		return 65536
	}
	return l.MaxStates
}

func (l *Limits) maxStateBytes() uint64 {
	if l == nil || l.MaxStateBytes == 0 {
		return 1 << 30
	}
	return l.MaxStateBytes
}

// recordHeader is the 16-byte plaintext record header:
//
//	type u8 | flags u8 (zero) | conn u16 | length u32 | seq u64
//
// length counts the sealed payload: body plus the 16-byte tag.
type recordHeader struct {
	typ    RecordType
	conn   uint16
	length uint32
	seq    uint64
}

func (h recordHeader) put(b []byte) {
	b[0] = byte(h.typ)
	b[1] = 0
	binary.BigEndian.PutUint16(b[2:], h.conn)
	binary.BigEndian.PutUint32(b[4:], h.length)
	binary.BigEndian.PutUint64(b[8:], h.seq)
}

// parseRecordHeader decodes b (16 bytes) and checks it before the payload is
// read or any buffer for it allocated.
func parseRecordHeader(b []byte, conn uint16, seq uint64, maxBody uint32) (recordHeader, error) {
	h := recordHeader{
		typ:    RecordType(b[0]),
		conn:   binary.BigEndian.Uint16(b[2:]),
		length: binary.BigEndian.Uint32(b[4:]),
		seq:    binary.BigEndian.Uint64(b[8:]),
	}
	if h.typ == 0 || h.typ > maxRecordTypeID {
		return h, fmt.Errorf("%w: unknown record type %d", ErrFormat, b[0])
	}
	if b[1] != 0 {
		return h, fmt.Errorf("%w: record flags %#x", ErrFormat, b[1])
	}
	if h.conn != conn {
		return h, fmt.Errorf("%w: record for connection %d arrived on connection %d", ErrSequence, h.conn, conn)
	}
	if h.seq != seq {
		return h, fmt.Errorf("%w: sequence %d, expected %d", ErrSequence, h.seq, seq)
	}
	if h.length < tagSize || h.length-tagSize > maxBody {
		return h, fmt.Errorf("%w: record length %d (body limit %d)", ErrLimit, h.length, maxBody)
	}
	return h, nil
}

// run is a run of consecutive guest pages.
type run struct {
	gpa   uint64 // page-aligned start address
	pages uint64
}

// appendRuns encodes runs, sorted and non-overlapping, as pairs of uvarints:
// the gap in bytes from the end of the previous run (from address 0 for the
// first) and the page count.
func appendRuns(b []byte, runs []run) []byte {
	var end uint64
	for _, r := range runs {
		b = binary.AppendUvarint(b, r.gpa-end)
		b = binary.AppendUvarint(b, r.pages)
		end = r.gpa + r.pages*PageSize
	}
	return b
}

// runDecoder walks encoded runs without allocating, checking every address.
type runDecoder struct {
	b       []byte
	n       uint32 // runs left
	end     uint64 // end of the previous run
	guest   uint64 // guest memory size
	maxPage uint64 // most pages a single run may have
}

func (d *runDecoder) next() (run, error) {
	gap, k := binary.Uvarint(d.b)
	if k <= 0 {
		return run{}, fmt.Errorf("%w: bad run gap", ErrFormat)
	}
	d.b = d.b[k:]
	cnt, k := binary.Uvarint(d.b)
	if k <= 0 {
		return run{}, fmt.Errorf("%w: bad run count", ErrFormat)
	}
	d.b = d.b[k:]
	if cnt == 0 || cnt > d.maxPage {
		return run{}, fmt.Errorf("%w: run of %d pages", ErrLimit, cnt)
	}
	if gap > math.MaxUint64-d.end {
		return run{}, fmt.Errorf("%w: address overflow", ErrAddress)
	}
	start := d.end + gap
	if start%PageSize != 0 {
		return run{}, fmt.Errorf("%w: %#x not page-aligned", ErrAddress, start)
	}
	if start >= d.guest || cnt > (d.guest-start)/PageSize {
		return run{}, fmt.Errorf("%w: %d pages at %#x beyond guest memory size %#x", ErrAddress, cnt, start, d.guest)
	}
	d.end = start + cnt*PageSize
	d.n--
	return run{gpa: start, pages: cnt}, nil
}

// pagesBody is a decoded page batch (RecordPages) body:
//
//	pass u32 | flags u8 | npages u32 | nruns u32 | runs | data
//
// data is npages*4096 raw bytes, or one zstd frame of them when flags bit 0
// is set.
type pagesBody struct {
	pass       uint32
	compressed bool
	npages     uint32
	runs       runDecoder
	data       []byte
}

const (
	pagesFixed     = 13
	pagesFlagZstd  = 1 << 0
	zeroRunsFixed  = 8
	stateFixed     = 2
	endPassSize    = 4
	connEndSize    = 4
	manifestFixed  = 4 + 8 + 8 + 4 + 2
	manifestPerCon = 8 + 32
	ackSize        = 32
)

func decodePages(b []byte, guest uint64, maxBatch uint32) (pagesBody, error) {
	var p pagesBody
	if len(b) < pagesFixed {
		return p, fmt.Errorf("%w: page batch of %d bytes", ErrFormat, len(b))
	}
	p.pass = binary.BigEndian.Uint32(b)
	flags := b[4]
	if flags&^pagesFlagZstd != 0 {
		return p, fmt.Errorf("%w: page batch flags %#x", ErrFormat, flags)
	}
	p.compressed = flags&pagesFlagZstd != 0
	p.npages = binary.BigEndian.Uint32(b[5:])
	nruns := binary.BigEndian.Uint32(b[9:])
	if p.npages == 0 || p.npages > maxBatch {
		return p, fmt.Errorf("%w: batch of %d pages (limit %d)", ErrLimit, p.npages, maxBatch)
	}
	if nruns == 0 || nruns > p.npages {
		return p, fmt.Errorf("%w: %d runs for %d pages", ErrFormat, nruns, p.npages)
	}
	p.runs = runDecoder{b: b[pagesFixed:], n: nruns, guest: guest, maxPage: uint64(p.npages)}
	// Walk the runs once to validate them and find where data starts.
	probe := p.runs
	var total uint64
	for probe.n > 0 {
		r, err := probe.next()
		if err != nil {
			return p, err
		}
		total += r.pages
		if total > uint64(p.npages) {
			return p, fmt.Errorf("%w: runs cover more than %d pages", ErrFormat, p.npages)
		}
	}
	if total != uint64(p.npages) {
		return p, fmt.Errorf("%w: runs cover %d of %d pages", ErrFormat, total, p.npages)
	}
	p.data = probe.b
	if !p.compressed && len(p.data) != int(p.npages)*PageSize {
		return p, fmt.Errorf("%w: %d data bytes for %d pages", ErrFormat, len(p.data), p.npages)
	}
	if p.compressed && len(p.data) == 0 {
		return p, fmt.Errorf("%w: empty compressed batch", ErrFormat)
	}
	return p, nil
}

// zeroRunsBody is a decoded RecordZeroRuns body: pass u32 | nruns u32 | runs.
type zeroRunsBody struct {
	pass uint32
	runs runDecoder
}

func decodeZeroRuns(b []byte, guest uint64) (zeroRunsBody, error) {
	var z zeroRunsBody
	if len(b) < zeroRunsFixed {
		return z, fmt.Errorf("%w: zero runs of %d bytes", ErrFormat, len(b))
	}
	z.pass = binary.BigEndian.Uint32(b)
	nruns := binary.BigEndian.Uint32(b[4:])
	// Every run takes at least two bytes.
	if nruns == 0 || uint64(nruns) > uint64(len(b)-zeroRunsFixed)/2 {
		return z, fmt.Errorf("%w: %d zero runs in %d bytes", ErrFormat, nruns, len(b))
	}
	z.runs = runDecoder{b: b[zeroRunsFixed:], n: nruns, guest: guest, maxPage: guest / PageSize}
	probe := z.runs
	for probe.n > 0 {
		if _, err := probe.next(); err != nil {
			return z, err
		}
	}
	if len(probe.b) != 0 {
		return z, fmt.Errorf("%w: %d trailing bytes after zero runs", ErrFormat, len(probe.b))
	}
	return z, nil
}

// decodeState decodes a RecordState body: idlen u16 | id | data.
func decodeState(b []byte, maxID int) (id string, data []byte, err error) {
	if len(b) < stateFixed {
		return "", nil, fmt.Errorf("%w: state of %d bytes", ErrFormat, len(b))
	}
	n := int(binary.BigEndian.Uint16(b))
	if n == 0 || n > maxID {
		return "", nil, fmt.Errorf("%w: component id of %d bytes (limit %d)", ErrLimit, n, maxID)
	}
	if n > len(b)-stateFixed {
		return "", nil, fmt.Errorf("%w: component id longer than record", ErrFormat)
	}
	idb := b[stateFixed : stateFixed+n]
	if err := checkComponentID(idb); err != nil {
		return "", nil, err
	}
	return string(idb), b[stateFixed+n:], nil
}

// checkComponentID allows the characters of ids like "vcpu/0",
// "virtio-blk/1" or "vm.pit2".
func checkComponentID(id []byte) error {
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

func decodeU32(b []byte, what string) (uint32, error) {
	if len(b) != 4 {
		return 0, fmt.Errorf("%w: %s of %d bytes", ErrFormat, what, len(b))
	}
	return binary.BigEndian.Uint32(b), nil
}

// manifest is the final record of connection 0:
//
//	passes u32 | pages u64 | zero pages u64 | states u32 | nconns u16 |
//	nconns × (records u64 | running hash [32])
//
// For connection 0 the entry covers the records before the manifest; for
// the others it covers every record up to and including RecordConnEnd.
type manifest struct {
	passes    uint32
	pages     uint64
	zeroPages uint64
	states    uint32
	conns     []connSummary
}

type connSummary struct {
	records uint64
	hash    [32]byte
}

func (m *manifest) marshal() []byte {
	b := make([]byte, 0, manifestFixed+len(m.conns)*manifestPerCon)
	b = binary.BigEndian.AppendUint32(b, m.passes)
	b = binary.BigEndian.AppendUint64(b, m.pages)
	b = binary.BigEndian.AppendUint64(b, m.zeroPages)
	b = binary.BigEndian.AppendUint32(b, m.states)
	b = binary.BigEndian.AppendUint16(b, uint16(len(m.conns)))
	for _, c := range m.conns {
		b = binary.BigEndian.AppendUint64(b, c.records)
		b = append(b, c.hash[:]...)
	}
	return b
}

func decodeManifest(b []byte, conns int) (manifest, error) {
	var m manifest
	if len(b) < manifestFixed {
		return m, fmt.Errorf("%w: manifest of %d bytes", ErrFormat, len(b))
	}
	m.passes = binary.BigEndian.Uint32(b)
	m.pages = binary.BigEndian.Uint64(b[4:])
	m.zeroPages = binary.BigEndian.Uint64(b[12:])
	m.states = binary.BigEndian.Uint32(b[20:])
	n := int(binary.BigEndian.Uint16(b[24:]))
	if n != conns {
		return m, fmt.Errorf("%w: manifest lists %d connections, stream has %d", ErrManifest, n, conns)
	}
	if len(b) != manifestFixed+n*manifestPerCon {
		return m, fmt.Errorf("%w: manifest of %d bytes for %d connections", ErrFormat, len(b), n)
	}
	m.conns = make([]connSummary, n)
	off := manifestFixed
	for i := range m.conns {
		m.conns[i].records = binary.BigEndian.Uint64(b[off:])
		copy(m.conns[i].hash[:], b[off+8:off+40])
		off += manifestPerCon
	}
	return m, nil
}
