package stream

import (
	"context"
	"crypto/cipher"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"
)

// Memory is where a Receiver writes guest pages as they arrive. data is
// only valid during the call (copy it). A page may be written several
// times; the last write is the one that counts. Until Run returns success
// the memory holds unverified data and must be discarded on any error.
type Memory interface {
	WritePage(gpa uint64, data []byte) error
}

// PageZeroer is optionally implemented by a Memory that can zero a run of
// pages faster than writing a zero page to each.
type PageZeroer interface {
	ZeroPages(gpa uint64, pages uint64) error
}

// ReceiverOptions configure a Receiver; the zero value is usable.
type ReceiverOptions struct {
	// Limits bound every length in the stream (zero value: defaults).
	Limits Limits
	// StreamID, when not zero, is the id of the migration the caller
	// expects (agreed on the control channel); any other is refused.
	StreamID [16]byte
	// CheckCPU, when set, requires the stream to open with a CPU record
	// on connection 0, checks it before any page is accepted, and fails
	// the stream with its error (wrapped in ErrCPU).
	CheckCPU func(cpu []byte) error
	// Logger receives debug events; nil discards them.
	Logger *slog.Logger
	// Now is the clock for Stats.Duration (default time.Now).
	Now func() time.Time
	// Progress is the reverse direction of connection 0, where the
	// progress reports go when the source asks for them
	// (FeatureProgress); Accept sets it to connection 0. A receiver
	// without it refuses such a stream.
	Progress io.Writer
}

// State is one component's state blob.
type State struct {
	ID   string
	Data []byte
}

// Result is what a verified stream delivered besides the pages written
// into Memory.
type Result struct {
	Header Header  // connection 0's header
	CPU    []byte  // the CPU record, if any
	States []State // in arrival order; ids are unique
	Stats  Stats
}

// Receiver reads one migration stream from all its connections at once.
type Receiver struct {
	conns []io.Reader
	pre   [][]byte // headers already read by Accept, or nil
	key   []byte
	mem   Memory
	opts  ReceiverOptions
	log   *slog.Logger
	now   func() time.Time

	ackAEAD cipher.AEAD
	revSeq  uint64 // next sequence number on the reverse direction
	final   chain  // connection 0's hash after the manifest
	ok      bool   // Run verified the stream
}

// NewReceiver prepares a receiver over conns (one io.Reader per
// connection, in any order; their headers say which is which) with the
// 32-byte key, writing pages into mem.
func NewReceiver(conns []io.Reader, key []byte, mem Memory, opts ReceiverOptions) (*Receiver, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("new receiver: %w", ErrKey)
	}
	if len(conns) == 0 || len(conns) > opts.Limits.maxConns() {
		return nil, fmt.Errorf("new receiver: %d connections (1 to %d)", len(conns), opts.Limits.maxConns())
	}
	if mem == nil {
		return nil, errors.New("new receiver: nil memory")
	}
	r := &Receiver{conns: conns, key: append([]byte(nil), key...), mem: mem, opts: opts, log: opts.Logger, now: opts.Now}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	if r.now == nil {
		r.now = time.Now
	}
	return r, nil
}

type deadliner interface {
	SetDeadline(time.Time) error
}

// Bounds on connections Accept drops before the stream is complete.
const (
	maxStrayConns = 16
	headerTimeout = 10 * time.Second
)

// Accept accepts the connections of one stream from ln: the first one's
// header tells how many follow. It returns a receiver over them and the
// connections ordered by connection index (conns[0] is the source's
// connection 0, the one to Acknowledge over, whatever order they were
// accepted in), which the caller closes after Run (and Acknowledge).
func Accept(ctx context.Context, ln net.Listener, key []byte, mem Memory, opts ReceiverOptions) (*Receiver, []net.Conn, error) {
	if d, ok := ln.(deadliner); ok {
		stop := context.AfterFunc(ctx, func() { _ = d.SetDeadline(time.Unix(1, 0)) })
		defer stop()
	}
	var conns []net.Conn
	var hdrs [][]byte
	fail := func(err error) (*Receiver, []net.Conn, error) {
		for _, c := range conns {
			_ = c.Close()
		}
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return nil, nil, fmt.Errorf("accept stream: %w", err)
	}
	want := 1
	stray := 0
	for len(conns) < want {
		c, err := ln.Accept()
		if err != nil {
			return fail(err)
		}
		// A connection that is not a migration stream (a port probe, a
		// health check, a client that went away) is dropped, and the
		// migration's own connections are still awaited; one that does
		// not finish its header in time is dropped too. Only a bounded
		// number of them is tolerated.
		b := make([]byte, headerSize)
		_ = c.SetReadDeadline(time.Now().Add(headerTimeout))
		err = readFullCtx(ctx, c, b)
		_ = c.SetReadDeadline(time.Time{})
		var h Header
		if err == nil {
			h, err = parseHeader(b, &opts.Limits)
		}
		if err != nil {
			_ = c.Close()
			if ctx.Err() != nil {
				return fail(ctx.Err())
			}
			if stray++; stray > maxStrayConns {
				return fail(fmt.Errorf("%d connections that are not a migration stream, the last: %w", stray, err))
			}
			if opts.Logger != nil {
				opts.Logger.Warn("dropped a connection that is not a migration stream", "remote", c.RemoteAddr(), "err", err)
			}
			continue
		}
		conns = append(conns, c)
		hdrs = append(hdrs, b)
		want = int(h.ConnCount)
	}
	// Order the connections by index: the caller acknowledges over
	// conns[0], which must be the source's connection 0 whatever order the
	// connections were accepted in.
	byIdx := make([]net.Conn, want)
	hdrByIdx := make([][]byte, want)
	for i, b := range hdrs {
		h, err := parseHeader(b, &opts.Limits)
		if err != nil {
			return fail(err)
		}
		if int(h.ConnCount) != want || byIdx[h.ConnIndex] != nil {
			return fail(fmt.Errorf("%w: connection %d of %d appears twice or counts differ", ErrHeader, h.ConnIndex, h.ConnCount))
		}
		byIdx[h.ConnIndex], hdrByIdx[h.ConnIndex] = conns[i], b
	}
	conns, hdrs = byIdx, hdrByIdx
	readers := make([]io.Reader, len(conns))
	for i, c := range conns {
		readers[i] = c
	}
	r, err := NewReceiver(readers, key, mem, opts)
	if err != nil {
		return fail(err)
	}
	r.pre = hdrs
	if r.opts.Progress == nil {
		r.opts.Progress = conns[0]
	}
	return r, conns, nil
}

// rconn is the receiving side of one connection, owned by its goroutine.
type rconn struct {
	idx  uint16
	br   io.Reader
	hdr  []byte
	aead cipher.AEAD
	seq  uint64
	hash chain
	pass uint32
	buf  []byte
	page []byte
	dec  *zstd.Decoder

	// Results, read after the goroutine ended.
	records    uint64 // records covered by the summary below
	summary    chain
	manifest   *manifest
	pages      uint64
	zero       uint64
	compressed uint64
	wire       uint64
}

// run is the shared state of one Run.
type runState struct {
	r       *Receiver
	hdr     Header
	conns   []*rconn
	ctx     context.Context
	cancel  context.CancelCauseFunc
	cpuGate chan struct{}
	barrier *passBarrier
	// progress sends the progress reports (FeatureProgress), or is nil.
	// Set before the connections' goroutines start.
	progress *progressWriter

	mu         sync.Mutex // guards the fields below
	cpu        []byte
	states     []State
	ids        map[string]bool
	stateBytes uint64
}

// Run reads every connection until the manifest, writing pages into
// Memory as they arrive, and verifies the manifest. Only a nil error means
// the stream is complete and authentic; on any error everything received
// (pages already written included) must be discarded. Run may be called
// once.
func (r *Receiver) Run(ctx context.Context) (Result, error) {
	start := r.now()
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	for _, c := range r.conns {
		if d, ok := c.(readDeadliner); ok {
			stop := context.AfterFunc(ctx, func() { _ = d.SetReadDeadline(time.Unix(1, 0)) })
			defer stop()
		}
	}
	rs, err := r.start(ctx, cancel)
	if err != nil {
		return Result{}, fmt.Errorf("receive: %w", err)
	}
	if rs.hdr.Features&FeatureProgress != 0 {
		if r.opts.Progress == nil {
			return Result{}, fmt.Errorf("receive: %w: the source asks for progress reports and this receiver has no reverse channel", ErrHeader)
		}
		rs.progress = r.startProgress(r.opts.Progress)
		defer rs.progress.close()
	}
	var wg sync.WaitGroup
	for _, c := range rs.conns {
		wg.Go(func() {
			if err := rs.read(c); err != nil {
				cancel(fmt.Errorf("connection %d record %d: %w", c.idx, c.seq, err))
			}
		})
	}
	wg.Wait()
	for _, c := range rs.conns {
		if c.dec != nil {
			c.dec.Close()
		}
	}
	if ctx.Err() != nil {
		return Result{}, fmt.Errorf("receive: %w", context.Cause(ctx))
	}
	res, err := rs.verify()
	if err != nil {
		return Result{}, fmt.Errorf("receive: %w", err)
	}
	res.Stats.Duration = r.now().Sub(start)
	r.ok = true
	return res, nil
}

// start reads and checks every connection's header.
func (r *Receiver) start(ctx context.Context, cancel context.CancelCauseFunc) (*runState, error) {
	n := len(r.conns)
	hdrs := make([][]byte, n)
	brs := make([]io.Reader, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, c := range r.conns {
		// No bufio: records are large and read in two calls (header,
		// payload), and a buffer would copy part of every payload once more.
		brs[i] = c
		if r.pre != nil {
			hdrs[i] = r.pre[i]
			continue
		}
		wg.Go(func() {
			b := make([]byte, headerSize)
			if _, err := io.ReadFull(brs[i], b); err != nil {
				errs[i] = fmt.Errorf("read header of connection %d: %w", i, truncated(err))
				cancel(errs[i])
			}
			hdrs[i] = b
		})
	}
	wg.Wait()
	if ctx.Err() != nil {
		return nil, context.Cause(ctx)
	}
	rs := &runState{r: r, ctx: ctx, cancel: cancel, cpuGate: make(chan struct{}), ids: make(map[string]bool)}
	rs.conns = make([]*rconn, n)
	for i, b := range hdrs {
		h, err := parseHeader(b, &r.opts.Limits)
		if err != nil {
			return nil, err
		}
		if r.opts.StreamID != ([16]byte{}) && h.StreamID != r.opts.StreamID {
			return nil, fmt.Errorf("%w: got %x, expected %x", ErrStreamID, h.StreamID, r.opts.StreamID)
		}
		if int(h.ConnCount) != n {
			return nil, fmt.Errorf("%w: stream has %d connections, %d given", ErrHeader, h.ConnCount, n)
		}
		if rs.conns[h.ConnIndex] != nil {
			return nil, fmt.Errorf("%w: connection %d appears twice", ErrHeader, h.ConnIndex)
		}
		idx := h.ConnIndex
		h.ConnIndex = 0
		if i == 0 {
			rs.hdr = h
		} else if h != rs.hdr {
			return nil, fmt.Errorf("%w: connection %d's header differs from connection 0's", ErrHeader, idx)
		}
		a, err := connAEAD(r.key, b, h.StreamID, dirSource)
		if err != nil {
			return nil, err
		}
		if idx == 0 {
			if r.ackAEAD, err = connAEAD(r.key, b, h.StreamID, dirAck); err != nil {
				return nil, err
			}
		}
		rs.conns[idx] = &rconn{idx: idx, br: brs[i], hdr: b, aead: a, hash: newChain(b), wire: headerSize}
	}
	// Logged with its time, so that a destination falling behind the
	// source (a backlog in the sockets that the blackout must drain) shows
	// beside the source's own pass lines.
	rs.barrier = newPassBarrier(n, func(p uint32) {
		r.log.Debug("stream: pass applied", "pass", p)
		if rs.progress != nil {
			rs.progress.applied(p)
		}
	})
	return rs, nil
}

func truncated(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: %w", ErrTruncated, err)
	}
	return err
}

// read processes one connection's records until its final record.
func (rs *runState) read(c *rconn) error {
	opts := &rs.r.opts
	if c.idx != 0 && opts.CheckCPU != nil {
		select {
		case <-rs.cpuGate:
		case <-rs.ctx.Done():
			return nil
		}
	}
	// The buffers held decrypted guest pages: wipe them when the
	// connection is done, so no plaintext lingers in freed memory (a core
	// dump, swap). Copies left behind by earlier, smaller buffers are not
	// covered.
	defer func() {
		clear(c.buf[:cap(c.buf)])
		clear(c.page[:cap(c.page)])
	}()
	var hb [recordHeaderSize]byte
	for {
		if _, err := io.ReadFull(c.br, hb[:]); err != nil {
			if rs.ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("read record header: %w", truncated(err))
		}
		h, err := parseRecordHeader(hb[:], c.idx, c.seq, rs.hdr.MaxRecordSize)
		if err != nil {
			return err
		}
		if cap(c.buf) < int(h.length) {
			c.buf = make([]byte, h.length)
		}
		sealed := c.buf[:h.length]
		if _, err := io.ReadFull(c.br, sealed); err != nil {
			if rs.ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("read %s record: %w", h.typ, truncated(err))
		}
		n := nonce(h.seq)
		body, err := c.aead.Open(sealed[:0], n[:], sealed, hb[:])
		if err != nil {
			return fmt.Errorf("%s record: %w", h.typ, ErrAuth)
		}
		before := c.hash
		c.hash.absorb(hb[:], sealed[len(sealed)-tagSize:])
		c.seq++
		c.wire += recordHeaderSize + uint64(h.length)
		if c.idx == 0 && h.seq == 0 && opts.CheckCPU != nil && h.typ != RecordCPU {
			return fmt.Errorf("%w: the stream must open with a CPU compatibility record, got %s", ErrOrder, h.typ)
		}
		done, err := rs.apply(c, h, body, before)
		if err != nil {
			return fmt.Errorf("%s record: %w", h.typ, err)
		}
		if c.idx == 0 && h.seq == 0 {
			close(rs.cpuGate)
		}
		if done {
			return nil
		}
	}
}

// apply handles one authenticated record. It reports whether it was the
// connection's final record.
func (rs *runState) apply(c *rconn, h recordHeader, body []byte, before chain) (bool, error) {
	opts := &rs.r.opts
	switch h.typ {
	case RecordCPU:
		if c.idx != 0 || h.seq != 0 {
			return false, fmt.Errorf("%w: CPU record must be connection 0's first", ErrOrder)
		}
		if opts.CheckCPU != nil {
			if err := opts.CheckCPU(body); err != nil {
				return false, fmt.Errorf("%w: %w", ErrCPU, err)
			}
		}
		rs.mu.Lock()
		rs.cpu = append([]byte(nil), body...)
		rs.mu.Unlock()
	case RecordPages:
		p, err := decodePages(body, rs.hdr.GuestMemSize, rs.hdr.MaxBatchPages)
		if err != nil {
			return false, err
		}
		if p.pass != c.pass {
			return false, fmt.Errorf("%w: batch of pass %d during pass %d", ErrOrder, p.pass, c.pass)
		}
		return false, rs.applyPages(c, p)
	case RecordZeroRuns:
		z, err := decodeZeroRuns(body, rs.hdr.GuestMemSize)
		if err != nil {
			return false, err
		}
		if z.pass != c.pass {
			return false, fmt.Errorf("%w: zero runs of pass %d during pass %d", ErrOrder, z.pass, c.pass)
		}
		return false, rs.applyZero(c, z)
	case RecordState:
		if c.idx != 0 {
			return false, fmt.Errorf("%w: state on connection %d", ErrOrder, c.idx)
		}
		id, data, err := decodeState(body, opts.Limits.maxComponentID())
		if err != nil {
			return false, err
		}
		rs.mu.Lock()
		defer rs.mu.Unlock()
		if rs.ids[id] {
			return false, fmt.Errorf("%w: component %q sent twice", ErrOrder, id)
		}
		if len(rs.states) >= opts.Limits.maxStates() || rs.stateBytes+uint64(len(data)) > opts.Limits.maxStateBytes() {
			return false, fmt.Errorf("%w: more than %d states or %d state bytes", ErrLimit, opts.Limits.maxStates(), opts.Limits.maxStateBytes())
		}
		rs.ids[id] = true
		rs.stateBytes += uint64(len(data))
		rs.states = append(rs.states, State{ID: id, Data: append([]byte(nil), data...)})
	case RecordEndPass:
		p, err := decodeU32(body, "end of pass")
		if err != nil {
			return false, err
		}
		if p != c.pass {
			return false, fmt.Errorf("%w: end of pass %d during pass %d", ErrOrder, p, c.pass)
		}
		if err := rs.barrier.wait(rs.ctx, p); err != nil {
			return false, err
		}
		c.pass++
	case RecordConnEnd:
		if c.idx == 0 {
			return false, fmt.Errorf("%w: connection 0 ends with the manifest", ErrOrder)
		}
		p, err := decodeU32(body, "connection end")
		if err != nil {
			return false, err
		}
		if p != c.pass {
			return false, fmt.Errorf("%w: connection ends after %d passes, saw %d", ErrManifest, p, c.pass)
		}
		c.records, c.summary = c.seq, c.hash
		return true, rs.barrier.end(c.pass)
	case RecordManifest:
		if c.idx != 0 {
			return false, fmt.Errorf("%w: manifest on connection %d", ErrOrder, c.idx)
		}
		m, err := decodeManifest(body, len(rs.conns))
		if err != nil {
			return false, err
		}
		c.manifest = &m
		c.records, c.summary = h.seq, before
		return true, rs.barrier.end(c.pass)
	default:
		return false, fmt.Errorf("%w: %s record in the source's direction", ErrOrder, h.typ)
	}
	return false, nil
}

func (rs *runState) applyPages(c *rconn, p pagesBody) error {
	need := int(p.npages) * PageSize
	data := p.data
	if p.compressed {
		if rs.hdr.Features&FeatureZstd == 0 {
			return fmt.Errorf("%w: compressed batch without the zstd feature", ErrFormat)
		}
		if c.dec == nil {
			limit := uint64(rs.hdr.MaxBatchPages) * PageSize
			d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(limit),
				zstd.WithDecodeAllCapLimit(true))
			if err != nil {
				return fmt.Errorf("create zstd decoder: %w", err)
			}
			c.dec = d
		}
		if cap(c.page) < need {
			c.page = make([]byte, need)
		}
		out, err := c.dec.DecodeAll(p.data, c.page[:0:need])
		if err != nil {
			return fmt.Errorf("%w: decompress batch: %w", ErrFormat, err)
		}
		if len(out) != need {
			return fmt.Errorf("%w: batch decompressed to %d bytes, want %d", ErrFormat, len(out), need)
		}
		data = out
		c.compressed += uint64(p.npages)
	}
	it := p.runs
	off := 0
	for it.n > 0 {
		r, err := it.next()
		if err != nil {
			return err
		}
		for k := range r.pages {
			gpa := r.gpa + k*PageSize
			if err := rs.r.mem.WritePage(gpa, data[off:off+PageSize]); err != nil {
				return fmt.Errorf("write page %#x: %w", gpa, err)
			}
			off += PageSize
		}
	}
	c.pages += uint64(p.npages)
	return nil
}

func (rs *runState) applyZero(c *rconn, z zeroRunsBody) error {
	zr, fast := rs.r.mem.(PageZeroer)
	it := z.runs
	for it.n > 0 {
		r, err := it.next()
		if err != nil {
			return err
		}
		if fast {
			if err := zr.ZeroPages(r.gpa, r.pages); err != nil {
				return fmt.Errorf("zero %d pages at %#x: %w", r.pages, r.gpa, err)
			}
		} else {
			for k := range r.pages {
				gpa := r.gpa + k*PageSize
				if err := rs.r.mem.WritePage(gpa, zeroPage[:]); err != nil {
					return fmt.Errorf("write page %#x: %w", gpa, err)
				}
			}
		}
		c.zero += r.pages
	}
	return nil
}

// verify checks the manifest against what every connection delivered.
func (rs *runState) verify() (Result, error) {
	c0 := rs.conns[0]
	m := c0.manifest
	if m == nil {
		return Result{}, fmt.Errorf("%w: no manifest", ErrTruncated)
	}
	var st Stats
	for i, c := range rs.conns {
		if c.pass != m.passes {
			return Result{}, fmt.Errorf("%w: connection %d saw %d passes, manifest says %d", ErrManifest, i, c.pass, m.passes)
		}
		if m.conns[i].records != c.records || m.conns[i].hash != c.summary {
			return Result{}, fmt.Errorf("%w: connection %d: %d records received, manifest says %d (or hashes differ)", ErrManifest, i, c.records, m.conns[i].records)
		}
		st.Pages += c.pages
		st.ZeroPages += c.zero
		st.CompressedPages += c.compressed
		st.WireBytes += c.wire
		st.Records += c.seq
	}
	if st.Pages != m.pages || st.ZeroPages != m.zeroPages {
		return Result{}, fmt.Errorf("%w: %d pages and %d zero pages received, manifest says %d and %d", ErrManifest, st.Pages, st.ZeroPages, m.pages, m.zeroPages)
	}
	if uint64(len(rs.states)) != uint64(m.states) {
		return Result{}, fmt.Errorf("%w: %d states received, manifest says %d", ErrManifest, len(rs.states), m.states)
	}
	st.Passes = m.passes
	st.States = uint64(len(rs.states))
	st.StateBytes = rs.stateBytes
	rs.r.final = c0.hash
	return Result{Header: rs.hdr, CPU: rs.cpu, States: rs.states, Stats: st}, nil
}

// Acknowledge tells the source, over w (the reverse direction of
// connection 0), that the stream verified. Call it only after Run
// succeeded and the destination is ready to take over: from then on the
// source may stop.
func (r *Receiver) Acknowledge(ctx context.Context, w io.Writer) error {
	if !r.ok {
		return errors.New("acknowledge: stream not verified")
	}
	buf := make([]byte, recordHeaderSize, recordHeaderSize+ackSize+tagSize)
	recordHeader{typ: RecordAck, conn: 0, length: ackSize + tagSize, seq: r.revSeq}.put(buf)
	n := nonce(r.revSeq)
	buf = r.ackAEAD.Seal(buf, n[:], r.final[:], buf[:recordHeaderSize])
	if d, ok := w.(writeDeadliner); ok {
		stop := context.AfterFunc(ctx, func() { _ = d.SetWriteDeadline(time.Unix(1, 0)) })
		defer stop()
	}
	if _, err := w.Write(buf); err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return fmt.Errorf("acknowledge: %w", err)
	}
	return nil
}

// passBarrier keeps passes in order across connections: a connection that
// reaches the end of pass k waits until every connection has, so no page of
// pass k+1 is applied before every page of pass k.
type passBarrier struct {
	mu       sync.Mutex
	n        int
	arrived  map[uint32]int
	release  map[uint32]chan struct{}
	ended    bool
	minEnded uint32 // fewest passes of a connection that ended
	// done, if set, is called (under mu) when every connection has
	// applied pass p: the moment the destination has caught up with it.
	done func(p uint32)
}

func newPassBarrier(n int, done func(p uint32)) *passBarrier {
	return &passBarrier{n: n, arrived: make(map[uint32]int), release: make(map[uint32]chan struct{}), done: done}
}

func (b *passBarrier) wait(ctx context.Context, pass uint32) error {
	b.mu.Lock()
	if b.ended && pass >= b.minEnded {
		b.mu.Unlock()
		return fmt.Errorf("%w: a connection ended after %d passes, this one is ending pass %d", ErrManifest, b.minEnded, pass)
	}
	ch, ok := b.release[pass]
	if !ok {
		ch = make(chan struct{})
		b.release[pass] = ch
	}
	b.arrived[pass]++
	if b.arrived[pass] == b.n {
		if b.done != nil {
			b.done(pass)
		}
		close(ch)
		delete(b.release, pass)
		delete(b.arrived, pass)
		b.mu.Unlock()
		return nil
	}
	b.mu.Unlock()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// end records that a connection ended after passes passes.
func (b *passBarrier) end(passes uint32) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	for p, n := range b.arrived {
		if n > 0 && p >= passes {
			return fmt.Errorf("%w: connection ended after %d passes while others wait at pass %d", ErrManifest, passes, p)
		}
	}
	if !b.ended || passes < b.minEnded {
		b.minEnded = passes
	}
	b.ended = true
	return nil
}
