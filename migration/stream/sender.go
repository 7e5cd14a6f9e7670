package stream

import (
	"bytes"
	"context"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// Page is one guest page to send: its guest physical address (page-aligned,
// below the declared guest memory size) and its PageSize bytes.
type Page struct {
	GPA  uint64
	Data []byte
}

// Options configure a Sender. The zero value of every field but
// GuestMemSize is usable.
type Options struct {
	// GuestMemSize is the guest memory size in bytes (page-aligned); every
	// page address must be below it. Required.
	GuestMemSize uint64
	// StreamID identifies this migration. It salts the key derivation, so
	// it must never be reused with the same key; zero draws a random one.
	StreamID [16]byte
	// BatchPages is the most pages per batch record (default 128, at most
	// MaxBatchPagesLimit).
	BatchPages int
	// Workers is the number of goroutines doing zero detection,
	// compression and encryption (default GOMAXPROCS).
	Workers int
	// Compression selects the zstd policy (default CompressAuto).
	Compression Compression
	// MaxRecordSize is the largest plaintext record body this sender
	// declares (default: room for one batch, at least 1 MiB + 64 KiB);
	// it bounds the size of one state blob.
	MaxRecordSize uint32
	// CPU, when set, is sent as the first record of connection 0: the
	// destination checks CPU compatibility before it accepts any page.
	CPU []byte
	// Progress, when set, is the reverse direction of connection 0: the
	// stream then asks the destination to report each pass it has
	// applied (FeatureProgress; see Applied and WaitApplied), and AwaitAck
	// reads the acknowledgement from it. A destination that does not know
	// the feature refuses the stream.
	Progress io.Reader
	// Logger receives debug events (compression turning off and on);
	// nil discards them.
	Logger *slog.Logger
	// Now is the clock for Stats.Duration (default time.Now).
	Now func() time.Time

	// ignoreLink, for tests of the ratio policy: CompressAuto tries
	// batches whether or not the link is the bottleneck.
	ignoreLink bool
}

// Stats are a sender's or receiver's counters.
type Stats struct {
	WireBytes       uint64 // bytes on the wire: connection headers and records
	Records         uint64 // records on all connections
	Pages           uint64 // non-zero pages
	ZeroPages       uint64 // zero pages (sent as runs)
	CompressedPages uint64 // pages that travelled in zstd-compressed batches
	PageWireBytes   uint64 // wire bytes of page batch records
	ZeroWireBytes   uint64 // wire bytes of zero-run records
	States          uint64 // state blobs
	StateBytes      uint64 // their payload bytes
	Passes          uint32 // completed passes
	Duration        time.Duration
}

// counters are updated concurrently by workers and writers.
type counters struct {
	wire, records, pages, zero, compressed, pageWire, zeroWire, states, stateBytes atomic.Uint64
}

func (c *counters) snapshot() Stats {
	return Stats{
		WireBytes: c.wire.Load(), Records: c.records.Load(), Pages: c.pages.Load(),
		ZeroPages: c.zero.Load(), CompressedPages: c.compressed.Load(),
		PageWireBytes: c.pageWire.Load(), ZeroWireBytes: c.zeroWire.Load(),
		States: c.states.Load(), StateBytes: c.stateBytes.Load(),
	}
}

// Sender writes one migration stream over one or more connections. Its
// methods must be called from one goroutine; internally, worker goroutines
// detect zero pages, compress and seal batches, and one writer goroutine
// per connection writes records in sequence order.
//
// Any error is final: the sender stops and every later call returns it.
// The source VM stays authoritative until AwaitAck succeeds.
type Sender struct {
	// ignoreLink: Options.ignoreLink.
	ignoreLink bool
	hdr        Header
	conns      []*sconn
	ackAEAD    cipher.AEAD
	rev        *reverseReader // progress reports and the ack, with Options.Progress
	maxBody    int
	batch      int
	log        *slog.Logger
	now        func() time.Time
	start      time.Time

	ctx    context.Context
	cancel context.CancelCauseFunc

	jobs     chan job
	workers  sync.WaitGroup
	inflight sync.WaitGroup
	rr       atomic.Uint64
	wrote    chan struct{} // a writer wrote a record (capacity 1; Drain waits on it)
	pool     sync.Pool     // *[]byte of cap recordHeaderSize+maxBody+tagSize
	stats    counters

	// Owned by the caller's goroutine.
	pass      uint32 // current pass
	passPages bool   // pages were sent in the current pass
	closed    bool   // jobs is closed
	finished  bool
	final     chain // connection 0's hash after the manifest
}

// sconn is the sending side of one connection.
type sconn struct {
	idx  uint16
	w    io.Writer
	hdr  []byte
	aead cipher.AEAD

	mu  sync.Mutex
	seq uint64 // next sequence number to hand out; guarded by mu

	in   chan *outRec
	done chan struct{} // closed when the writer goroutine has returned

	// Written by the writer goroutine; read only after done is closed.
	records uint64
	hash    chain

	// written counts the records the writer has written; Drain compares it
	// with seq.
	written atomic.Uint64
}

// outRec is a sealed record waiting for its turn on a connection.
type outRec struct {
	seq  uint64
	typ  RecordType
	buf  []byte  // header + ciphertext + tag
	pool *[]byte // buffer to give back after writing, if pooled
	// manifest, when set, builds the manifest body from this connection's
	// record count and hash at the moment its turn comes; the writer seals it.
	manifest func(records uint64, hash chain) []byte
}

type job struct {
	pass  uint32
	gpa   uint64 // range form: start address ...
	data  []byte // ... and contiguous page data
	pages []Page // list form
}

var zeroPage [PageSize]byte

// NewSender prepares a stream over conns (one io.Writer per connection,
// 1 to MaxConnections) with a 32-byte key. It starts its goroutines, which
// write each connection's header (and the CPU record on connection 0) at
// once; call Finish or Close to stop them. Closing the connections stays
// the caller's job. A writer that implements SetWriteDeadline is unblocked
// through it when the sender fails or a context ends.
func NewSender(conns []io.Writer, key []byte, opts Options) (*Sender, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("new sender: %w", ErrKey)
	}
	if len(conns) == 0 || len(conns) > MaxConnections {
		return nil, fmt.Errorf("new sender: %d connections (1 to %d)", len(conns), MaxConnections)
	}
	if opts.GuestMemSize == 0 || opts.GuestMemSize%PageSize != 0 {
		return nil, fmt.Errorf("new sender: guest memory size %d is not a positive multiple of %d", opts.GuestMemSize, PageSize)
	}
	batch := opts.BatchPages
	if batch <= 0 {
		batch = 128
	}
	if batch > MaxBatchPagesLimit {
		return nil, fmt.Errorf("new sender: batch of %d pages (limit %d)", batch, MaxBatchPagesLimit)
	}
	maxBody := pagesFixed + batch*2*binary.MaxVarintLen64 + batch*PageSize
	declared := max(uint32(maxBody), 1<<20+64<<10)
	if opts.MaxRecordSize != 0 {
		if int(opts.MaxRecordSize) < maxBody || opts.MaxRecordSize > MaxRecordSizeLimit {
			return nil, fmt.Errorf("new sender: max record size %d (need %d to %d)", opts.MaxRecordSize, maxBody, MaxRecordSizeLimit)
		}
		declared = opts.MaxRecordSize
	}
	workers := opts.Workers
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	id := opts.StreamID
	if id == ([16]byte{}) {
		if _, err := rand.Read(id[:]); err != nil {
			return nil, fmt.Errorf("new sender: stream id: %w", err)
		}
	}
	var features uint64
	if opts.Compression != CompressOff {
		features |= FeatureZstd
	}
	if opts.Progress != nil {
		features |= FeatureProgress
	}
	if len(opts.CPU) > int(declared) {
		return nil, fmt.Errorf("new sender: CPU record of %d bytes: %w", len(opts.CPU), ErrLimit)
	}
	s := &Sender{
		hdr: Header{
			Version: Version, Features: features, StreamID: id,
			ConnCount: uint16(len(conns)), PageSize: PageSize,
			GuestMemSize: opts.GuestMemSize, MaxRecordSize: declared,
			MaxBatchPages: uint32(batch), Suite: suiteAES256GCM,
		},
		maxBody:    maxBody,
		batch:      batch,
		ignoreLink: opts.ignoreLink,
		log:        opts.Logger,
		now:        opts.Now,
		jobs:       make(chan job, workers*2),
		wrote:      make(chan struct{}, 1),
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	s.start = s.now()
	s.pool.New = func() any {
		b := make([]byte, recordHeaderSize+maxBody+tagSize)
		return &b
	}
	for i, w := range conns {
		h := s.hdr
		h.ConnIndex = uint16(i)
		hb := h.marshal()
		a, err := connAEAD(key, hb, id, dirSource)
		if err != nil {
			return nil, fmt.Errorf("new sender: %w", err)
		}
		if i == 0 {
			if s.ackAEAD, err = connAEAD(key, hb, id, dirAck); err != nil {
				return nil, fmt.Errorf("new sender: %w", err)
			}
		}
		s.conns = append(s.conns, &sconn{
			idx: uint16(i), w: w, hdr: hb, aead: a,
			in: make(chan *outRec, workers*2+4), done: make(chan struct{}),
			hash: newChain(hb),
		})
	}
	if opts.CPU != nil {
		// The channel is empty and buffered: this cannot block.
		s.conns[0].in <- s.sealBytes(s.conns[0], RecordCPU, nil, opts.CPU)
	}
	comps := make([]*compressor, workers)
	for i := range comps {
		c, err := newCompressor(opts.Compression)
		if err != nil {
			for _, c := range comps[:i] {
				c.close()
			}
			return nil, fmt.Errorf("new sender: %w", err)
		}
		comps[i] = c
	}
	s.ctx, s.cancel = context.WithCancelCause(context.Background())
	for _, c := range s.conns {
		go s.writer(c)
	}
	if opts.Progress != nil {
		s.startReverse(opts.Progress)
	}
	for _, c := range comps {
		s.workers.Add(1)
		go s.worker(c)
	}
	return s, nil
}

// StreamID returns the stream id in the header.
func (s *Sender) StreamID() [16]byte { return s.hdr.StreamID }

// Pass returns the number of the current (not yet ended) pass.
func (s *Sender) Pass() uint32 { return s.pass }

// Stats returns the counters so far.
func (s *Sender) Stats() Stats {
	st := s.stats.snapshot()
	st.Passes = s.pass
	st.Duration = s.now().Sub(s.start)
	return st
}

type writeDeadliner interface {
	SetWriteDeadline(time.Time) error
}

// fail stops the sender with err (the first error wins) and unblocks
// writers that support deadlines.
func (s *Sender) fail(err error) {
	if s.ctx.Err() != nil {
		return
	}
	s.cancel(err)
	for _, c := range s.conns {
		if d, ok := c.w.(writeDeadliner); ok {
			_ = d.SetWriteDeadline(time.Unix(1, 0))
		}
	}
}

func (s *Sender) failed() error {
	if s.ctx.Err() != nil {
		return context.Cause(s.ctx)
	}
	return nil
}

// usable returns the error that forbids another call, if any.
func (s *Sender) usable(op string) error {
	if err := s.failed(); err != nil {
		return fmt.Errorf("%s: sender failed: %w", op, err)
	}
	if s.finished || s.closed {
		return fmt.Errorf("%s: sender already finished or closed", op)
	}
	return nil
}

// writer writes c's header, then its records in sequence order.
func (s *Sender) writer(c *sconn) {
	defer close(c.done)
	if _, err := c.w.Write(c.hdr); err != nil {
		s.fail(fmt.Errorf("write header on connection %d: %w", c.idx, err))
		return
	}
	s.stats.wire.Add(uint64(len(c.hdr)))
	pending := make(map[uint64]*outRec)
	var next uint64
	for {
		var r *outRec
		var ok bool
		select {
		case r, ok = <-c.in:
		case <-s.ctx.Done():
			return
		}
		if !ok {
			if len(pending) != 0 {
				s.fail(fmt.Errorf("connection %d: %d records left unwritten", c.idx, len(pending)))
			}
			return
		}
		pending[r.seq] = r
		for {
			r, ok := pending[next]
			if !ok {
				break
			}
			delete(pending, next)
			if r.manifest != nil {
				r.buf = c.seal(RecordManifest, r.seq, nil, r.manifest(c.records, c.hash))
			}
			if _, err := c.w.Write(r.buf); err != nil {
				s.fail(fmt.Errorf("write %s record %d on connection %d: %w", r.typ, r.seq, c.idx, err))
				return
			}
			n := uint64(len(r.buf))
			s.stats.wire.Add(n)
			s.stats.records.Add(1)
			switch r.typ {
			case RecordPages:
				s.stats.pageWire.Add(n)
			case RecordZeroRuns:
				s.stats.zeroWire.Add(n)
			}
			c.hash.absorb(r.buf[:recordHeaderSize], r.buf[len(r.buf)-tagSize:])
			c.records++
			c.written.Add(1)
			select {
			case s.wrote <- struct{}{}:
			default:
			}
			if r.pool != nil {
				s.pool.Put(r.pool)
			}
			next++
		}
	}
}

// linkBound says whether c's link, not the CPU, limits the stream: at
// its queue of sealed records is (all but) full, waiting for the writer.
// Only then can compression make the stream faster; where the link keeps
// up (loopback, fast networks) compressing only costs CPU time that
// encryption needs, and CompressAuto sends the batch as it is.
func linkBound(c *sconn) bool {
	return len(c.in) >= cap(c.in)-1
}

// reserve hands out c's next sequence number.
func (c *sconn) reserve() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	seq := c.seq
	c.seq++
	return seq
}

// seal seals body (which must start at buf[recordHeaderSize:] when buf is
// not nil, with tagSize bytes of spare capacity) as record seq.
func (c *sconn) seal(typ RecordType, seq uint64, buf, body []byte) []byte {
	if buf == nil {
		buf = make([]byte, recordHeaderSize, recordHeaderSize+len(body)+tagSize)
		buf = append(buf, body...)
		body = buf[recordHeaderSize:]
	}
	recordHeader{typ: typ, conn: c.idx, length: uint32(len(body) + tagSize), seq: seq}.put(buf)
	n := nonce(seq)
	out := c.aead.Seal(body[:0], n[:], body, buf[:recordHeaderSize])
	return buf[:recordHeaderSize+len(out)]
}

// sealBytes seals prefix+data as a fresh record on c.
func (s *Sender) sealBytes(c *sconn, typ RecordType, prefix, data []byte) *outRec {
	body := make([]byte, 0, len(prefix)+len(data))
	body = append(append(body, prefix...), data...)
	seq := c.reserve()
	return &outRec{seq: seq, typ: typ, buf: c.seal(typ, seq, nil, body)}
}

// deliver hands r to c's writer.
func (s *Sender) deliver(ctx context.Context, c *sconn, r *outRec) error {
	select {
	case c.in <- r:
		return nil
	case <-s.ctx.Done():
		return context.Cause(s.ctx)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// SendPages queues pages of the current pass. Each Data must be PageSize
// bytes; the sender reads it from worker goroutines until the next Flush,
// EndPass or Finish returns (for guest memory that the guest keeps writing
// this is the usual pre-copy race, caught by the next pass's dirty log).
// A page must not be sent twice in one pass.
func (s *Sender) SendPages(ctx context.Context, pages []Page) error {
	if err := s.usable("send pages"); err != nil {
		return err
	}
	for _, p := range pages {
		if err := s.checkPage(p.GPA, len(p.Data)); err != nil {
			return fmt.Errorf("send pages: %w", err)
		}
	}
	for len(pages) > 0 {
		n := min(len(pages), s.batch)
		if err := s.queue(ctx, job{pass: s.pass, pages: pages[:n]}); err != nil {
			return fmt.Errorf("send pages: %w", err)
		}
		pages = pages[n:]
	}
	return nil
}

// SendRange queues the contiguous pages data (a multiple of PageSize bytes)
// starting at guest address gpa, with SendPages' rules.
func (s *Sender) SendRange(ctx context.Context, gpa uint64, data []byte) error {
	if err := s.usable("send range"); err != nil {
		return err
	}
	if len(data)%PageSize != 0 {
		return fmt.Errorf("send range: %d bytes is not a multiple of the page size", len(data))
	}
	if len(data) == 0 {
		return nil
	}
	if err := s.checkPage(gpa, PageSize); err != nil {
		return fmt.Errorf("send range: %w", err)
	}
	if uint64(len(data)) > s.hdr.GuestMemSize-gpa {
		return fmt.Errorf("send range: %w: %d bytes at %#x", ErrAddress, len(data), gpa)
	}
	chunk := s.batch * PageSize
	for len(data) > 0 {
		n := min(len(data), chunk)
		if err := s.queue(ctx, job{pass: s.pass, gpa: gpa, data: data[:n]}); err != nil {
			return fmt.Errorf("send range: %w", err)
		}
		gpa += uint64(n)
		data = data[n:]
	}
	return nil
}

func (s *Sender) checkPage(gpa uint64, n int) error {
	if n != PageSize {
		return fmt.Errorf("page at %#x has %d bytes, want %d", gpa, n, PageSize)
	}
	if gpa%PageSize != 0 || gpa >= s.hdr.GuestMemSize {
		return fmt.Errorf("%w: %#x (guest memory size %#x)", ErrAddress, gpa, s.hdr.GuestMemSize)
	}
	return nil
}

func (s *Sender) queue(ctx context.Context, j job) error {
	s.inflight.Add(1)
	select {
	case s.jobs <- j:
		s.passPages = true
		return nil
	case <-s.ctx.Done():
		s.inflight.Done()
		return context.Cause(s.ctx)
	case <-ctx.Done():
		s.inflight.Done()
		s.fail(ctx.Err())
		return ctx.Err()
	}
}

// worker turns jobs into sealed records.
func (s *Sender) worker(comp *compressor) {
	defer s.workers.Done()
	defer comp.close()
	w := &workerState{comp: comp}
	// Its gather and zstd buffers held guest pages in plaintext: wipe
	// them when the worker is done (the pool's buffers hold ciphertext,
	// sealed in place).
	defer func() {
		clear(w.gather[:cap(w.gather)])
		clear(w.zstdOut[:cap(w.zstdOut)])
	}()
	for j := range s.jobs {
		if s.ctx.Err() == nil {
			if err := s.encode(w, j); err != nil {
				s.fail(err)
			}
		}
		s.inflight.Done()
	}
}

// workerState is one worker's reusable scratch space.
type workerState struct {
	comp      *compressor
	zeroRuns  []run
	dataRuns  []run
	data      [][]byte
	gather    []byte
	zstdOut   []byte
	wasOff    bool
	runsBytes []byte
}

// appendRun adds the page at gpa to runs, extending the last run when
// contiguous.
func appendRun(runs []run, gpa uint64) []run {
	if n := len(runs); n > 0 && runs[n-1].gpa+runs[n-1].pages*PageSize == gpa {
		runs[n-1].pages++
		return runs
	}
	return append(runs, run{gpa: gpa, pages: 1})
}

func (s *Sender) encode(w *workerState, j job) error {
	w.zeroRuns, w.dataRuns, w.data = w.zeroRuns[:0], w.dataRuns[:0], w.data[:0]
	n := len(j.pages)
	if j.data != nil {
		n = len(j.data) / PageSize
	}
	for i := range n {
		var gpa uint64
		var d []byte
		if j.data != nil {
			gpa, d = j.gpa+uint64(i)*PageSize, j.data[i*PageSize:(i+1)*PageSize]
		} else {
			gpa, d = j.pages[i].GPA, j.pages[i].Data
		}
		if bytes.Equal(d, zeroPage[:]) {
			w.zeroRuns = appendRun(w.zeroRuns, gpa)
			continue
		}
		w.dataRuns = appendRun(w.dataRuns, gpa)
		w.data = append(w.data, d)
	}
	c := s.conns[(s.rr.Add(1)-1)%uint64(len(s.conns))]
	if len(w.zeroRuns) > 0 {
		body := make([]byte, zeroRunsFixed, zeroRunsFixed+len(w.zeroRuns)*2*binary.MaxVarintLen64)
		binary.BigEndian.PutUint32(body, j.pass)
		binary.BigEndian.PutUint32(body[4:], uint32(len(w.zeroRuns)))
		body = appendRuns(body, w.zeroRuns)
		seq := c.reserve()
		if err := s.deliver(s.ctx, c, &outRec{seq: seq, typ: RecordZeroRuns, buf: c.seal(RecordZeroRuns, seq, nil, body)}); err != nil {
			return err
		}
		var zeros uint64
		for _, r := range w.zeroRuns {
			zeros += r.pages
		}
		s.stats.zero.Add(zeros)
	}
	if len(w.data) == 0 {
		return nil
	}
	bp := s.pool.Get().(*[]byte)
	buf := (*bp)[:recordHeaderSize]
	body := buf[recordHeaderSize:]
	body = binary.BigEndian.AppendUint32(body, j.pass)
	body = append(body, 0) // flags
	body = binary.BigEndian.AppendUint32(body, uint32(len(w.data)))
	body = binary.BigEndian.AppendUint32(body, uint32(len(w.dataRuns)))
	body = appendRuns(body, w.dataRuns)
	compressed := false
	if w.comp.shouldTry(s.ignoreLink || linkBound(c)) {
		if w.wasOff {
			s.log.Debug("stream: probing compression again")
			w.wasOff = false
		}
		var raw []byte
		if j.data != nil && len(w.data) == n {
			raw = j.data // contiguous and no zero page inside: no gather copy
		} else {
			w.gather = w.gather[:0]
			for _, d := range w.data {
				w.gather = append(w.gather, d...)
			}
			raw = w.gather
		}
		var ok bool
		w.zstdOut, ok = w.comp.compress(w.zstdOut[:0], raw)
		if ok {
			body[4] = pagesFlagZstd
			body = append(body, w.zstdOut...)
			compressed = true
		}
	} else if w.comp.mode == CompressAuto && !w.wasOff {
		s.log.Debug("stream: compression does not pay, paused")
		w.wasOff = true
	}
	if !compressed {
		for _, d := range w.data {
			body = append(body, d...)
		}
	}
	seq := c.reserve()
	t := w.comp.now()
	sealed := c.seal(RecordPages, seq, (*bp)[:recordHeaderSize+len(body)], body)
	w.comp.noteSeal(len(body), w.comp.now().Sub(t))
	rec := &outRec{seq: seq, typ: RecordPages, pool: bp, buf: sealed}
	if err := s.deliver(s.ctx, c, rec); err != nil {
		return err
	}
	s.stats.pages.Add(uint64(len(w.data)))
	if compressed {
		s.stats.compressed.Add(uint64(len(w.data)))
	}
	return nil
}

// wait blocks until wg is done, ctx ends or the sender fails.
func (s *Sender) wait(ctx context.Context, wg *sync.WaitGroup) error {
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return s.failed()
	case <-s.ctx.Done():
		return context.Cause(s.ctx)
	case <-ctx.Done():
		s.fail(ctx.Err())
		return ctx.Err()
	}
}

// Flush waits until every queued page has been encoded and sealed, after
// which the sender no longer reads the pages' data.
func (s *Sender) Flush(ctx context.Context) error {
	if err := s.usable("flush"); err != nil {
		return err
	}
	if err := s.wait(ctx, &s.inflight); err != nil {
		return fmt.Errorf("flush: %w", err)
	}
	return nil
}

// Drain waits until every queued page has been sealed (as Flush) and
// every record sealed so far has been written to its connection. A source
// that times its passes calls it after EndPass: the pass then ends when
// its bytes have left (into the connection's own buffers), not when they
// were queued for the writers, which can hold megabytes per connection.
func (s *Sender) Drain(ctx context.Context) error {
	if err := s.usable("drain"); err != nil {
		return err
	}
	if err := s.wait(ctx, &s.inflight); err != nil {
		return fmt.Errorf("drain: %w", err)
	}
	for _, c := range s.conns {
		for {
			c.mu.Lock()
			want := c.seq
			c.mu.Unlock()
			if c.written.Load() >= want {
				break
			}
			select {
			case <-s.wrote:
			case <-s.ctx.Done():
				return fmt.Errorf("drain: %w", context.Cause(s.ctx))
			case <-ctx.Done():
				s.fail(ctx.Err())
				return fmt.Errorf("drain: %w", ctx.Err())
			}
		}
	}
	return nil
}

// EndPass ends the current pass: it waits for its pages and writes an
// end-of-pass marker on every connection. The destination applies no page
// of the next pass before every page of this one. It returns the number of
// the pass it ended.
func (s *Sender) EndPass(ctx context.Context) (uint32, error) {
	if err := s.usable("end pass"); err != nil {
		return 0, err
	}
	if err := s.endPass(ctx); err != nil {
		return 0, fmt.Errorf("end pass %d: %w", s.pass, err)
	}
	return s.pass - 1, nil
}

func (s *Sender) endPass(ctx context.Context) error {
	if err := s.wait(ctx, &s.inflight); err != nil {
		return err
	}
	var b [endPassSize]byte
	binary.BigEndian.PutUint32(b[:], s.pass)
	for _, c := range s.conns {
		if err := s.deliver(ctx, c, s.sealBytes(c, RecordEndPass, nil, b[:])); err != nil {
			s.fail(err)
			return err
		}
	}
	s.pass++
	s.passPages = false
	return nil
}

// SendState sends one device or vCPU state blob under a stable component
// id ("vcpu/0", "virtio-blk/1"): letters, digits and / - _ . : only. It
// travels on connection 0; the data is copied before SendState returns.
func (s *Sender) SendState(ctx context.Context, id string, data []byte) error {
	if err := s.usable("send state"); err != nil {
		return err
	}
	if len(id) == 0 || len(id) > 1024 {
		return fmt.Errorf("send state %q: %w: component id of %d bytes", id, ErrLimit, len(id))
	}
	if err := checkComponentID([]byte(id)); err != nil {
		return fmt.Errorf("send state %q: %w", id, err)
	}
	if stateFixed+len(id)+len(data) > int(s.hdr.MaxRecordSize) {
		return fmt.Errorf("send state %q: %w: %d bytes (record limit %d)", id, ErrLimit, len(data), s.hdr.MaxRecordSize)
	}
	prefix := binary.BigEndian.AppendUint16(nil, uint16(len(id)))
	prefix = append(prefix, id...)
	c := s.conns[0]
	if err := s.deliver(ctx, c, s.sealBytes(c, RecordState, prefix, data)); err != nil {
		s.fail(err)
		return fmt.Errorf("send state %q: %w", id, err)
	}
	s.stats.states.Add(1)
	s.stats.stateBytes.Add(uint64(len(data)))
	return nil
}

// Finish ends the current pass if it has pages, ends every connection and
// writes the final manifest on connection 0. It returns when all records
// are written. The migration is not complete until AwaitAck succeeds.
func (s *Sender) Finish(ctx context.Context) (Stats, error) {
	if err := s.usable("finish"); err != nil {
		return s.Stats(), err
	}
	if err := s.finish(ctx); err != nil {
		s.fail(err)
		s.shutdown()
		return s.Stats(), fmt.Errorf("finish: %w", err)
	}
	return s.Stats(), nil
}

func (s *Sender) finish(ctx context.Context) error {
	if s.passPages {
		if err := s.endPass(ctx); err != nil {
			return err
		}
	}
	if err := s.wait(ctx, &s.inflight); err != nil {
		return err
	}
	s.closed = true
	close(s.jobs)
	if err := s.wait(ctx, &s.workers); err != nil {
		return err
	}
	var b [connEndSize]byte
	binary.BigEndian.PutUint32(b[:], s.pass)
	for _, c := range s.conns[1:] {
		if err := s.deliver(ctx, c, s.sealBytes(c, RecordConnEnd, nil, b[:])); err != nil {
			return err
		}
		close(c.in)
	}
	for _, c := range s.conns[1:] {
		if err := s.waitDone(ctx, c); err != nil {
			return err
		}
	}
	m := manifest{
		passes: s.pass, pages: s.stats.pages.Load(), zeroPages: s.stats.zero.Load(),
		states: uint32(s.stats.states.Load()), conns: make([]connSummary, len(s.conns)),
	}
	for i, c := range s.conns[1:] {
		m.conns[i+1] = connSummary{records: c.records, hash: c.hash}
	}
	c0 := s.conns[0]
	rec := &outRec{seq: c0.reserve(), typ: RecordManifest, manifest: func(records uint64, hash chain) []byte {
		m.conns[0] = connSummary{records: records, hash: hash}
		return m.marshal()
	}}
	if err := s.deliver(ctx, c0, rec); err != nil {
		return err
	}
	close(c0.in)
	if err := s.waitDone(ctx, c0); err != nil {
		return err
	}
	s.final = c0.hash
	s.finished = true
	return nil
}

func (s *Sender) waitDone(ctx context.Context, c *sconn) error {
	select {
	case <-c.done:
		return s.failed()
	case <-ctx.Done():
		s.fail(ctx.Err())
		return ctx.Err()
	}
}

// shutdown stops the workers; the writers stop on the failed context.
func (s *Sender) shutdown() {
	if !s.closed {
		s.closed = true
		close(s.jobs)
	}
	s.workers.Wait()
}

// Close aborts an unfinished stream (the destination will discard it) and
// releases the goroutines. It does not close the connections.
func (s *Sender) Close() error {
	if !s.finished {
		s.fail(errors.New("sender closed"))
	}
	s.shutdown()
	for _, c := range s.conns {
		<-c.done
	}
	return nil
}

// AwaitAck reads the destination's acknowledgement from r (the reverse
// direction of connection 0) after Finish. It succeeds only when the
// destination has verified the whole stream: until then the source stays
// authoritative. With Options.Progress the ack arrives through that reader
// instead, and r is not used.
func (s *Sender) AwaitAck(ctx context.Context, r io.Reader) error {
	if !s.finished {
		return errors.New("await ack: stream not finished")
	}
	var body []byte
	var err error
	if rr := s.rev; rr != nil {
		select {
		case <-rr.done:
		case <-ctx.Done():
			return fmt.Errorf("await ack: %w", ctx.Err())
		}
		body, err = rr.ack, rr.err
	} else {
		body, err = s.readReverse(ctx, r, nil)
	}
	if err != nil {
		return fmt.Errorf("await ack: %w", err)
	}
	if !bytes.Equal(body, s.final[:]) {
		return fmt.Errorf("await ack: %w: destination verified a different stream", ErrManifest)
	}
	return nil
}

type readDeadliner interface {
	SetReadDeadline(time.Time) error
}

// readFullCtx reads len(b) bytes, unblocking a reader that supports read
// deadlines when ctx ends.
func readFullCtx(ctx context.Context, r io.Reader, b []byte) error {
	if d, ok := r.(readDeadliner); ok {
		stop := context.AfterFunc(ctx, func() { _ = d.SetReadDeadline(time.Unix(1, 0)) })
		defer stop()
	}
	if _, err := io.ReadFull(r, b); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("%w: %w", ErrTruncated, err)
		}
		return err
	}
	return nil
}
