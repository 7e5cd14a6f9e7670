package stream

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// Progress reports (FeatureProgress).
//
// The sender's writes end in socket buffers: megabytes per connection on a
// fast link. When the destination decodes more slowly than the source
// sends, that backlog is still waiting at the end of a pass, and a source
// that pauses the guest then makes the blackout drain it. With
// Options.Progress the sender asks the destination to report each pass it
// has applied, on the reverse direction of connection 0, and can wait
// until the destination has caught up before it pauses the guest.
//
// The reverse direction carries records sequenced like any connection's,
// 0, 1, 2 ...: one RecordProgress per applied pass, then the RecordAck.
// Each is sealed with the reverse direction's key and its sequence number
// as the nonce, so a reordered, replayed or forged report is refused. A
// stream without the feature has only the ack, sequence 0, as before.

// progressSize is a progress record's body: the pass applied (uint32).
const progressSize = 4

// reverseReader is the sender's side of the reverse direction when
// progress reports are on: one goroutine reads every record, publishes
// each applied pass, and hands the ack's body to AwaitAck.
type reverseReader struct {
	applied atomic.Uint32 // passes the destination has applied
	changed chan struct{} // signalled (capacity 1) after applied grows or the reader ends
	done    chan struct{} // closed when the goroutine has returned
	ack     []byte        // the ack's authenticated body; read after done
	err     error         // why the reader stopped without an ack; read after done
}

// startReverse starts reading r, the reverse direction of connection 0,
// for the life of the stream: until the ack, an error, or s's context
// ends (then a read deadline unblocks it, where r supports one).
func (s *Sender) startReverse(r io.Reader) {
	rr := &reverseReader{changed: make(chan struct{}, 1), done: make(chan struct{})}
	s.rev = rr
	go func() {
		defer close(rr.done)
		defer rr.signal()
		rr.ack, rr.err = s.readReverse(s.ctx, r, rr)
	}()
}

func (rr *reverseReader) signal() {
	select {
	case rr.changed <- struct{}{}:
	default:
	}
}

// readReverse reads the reverse direction of connection 0 from r up to
// and including the ack, and returns the ack's authenticated body. Each
// progress report goes to rr; with rr nil (no progress feature) the ack
// must be the first record. Every record is checked (type, length,
// sequence, authentication, increasing passes) before it is used.
func (s *Sender) readReverse(ctx context.Context, r io.Reader, rr *reverseReader) ([]byte, error) {
	var buf [recordHeaderSize + ackSize + tagSize]byte
	for seq := uint64(0); ; seq++ {
		hb := buf[:recordHeaderSize]
		if err := readFullCtx(ctx, r, hb); err != nil {
			return nil, fmt.Errorf("reverse record %d: %w", seq, err)
		}
		h, err := parseRecordHeader(hb, 0, seq, ackSize)
		if err != nil {
			return nil, fmt.Errorf("reverse record %d: %w", seq, err)
		}
		var size uint32
		switch h.typ {
		case RecordProgress:
			if rr == nil {
				return nil, fmt.Errorf("reverse record %d: %w: progress report in a stream without the feature", seq, ErrOrder)
			}
			size = progressSize
		case RecordAck:
			size = ackSize
		default:
			return nil, fmt.Errorf("reverse record %d: %w: %s record from the destination", seq, ErrOrder, h.typ)
		}
		if h.length != size+tagSize {
			return nil, fmt.Errorf("reverse record %d: %w: %s record of %d bytes", seq, ErrFormat, h.typ, h.length)
		}
		rec := buf[:recordHeaderSize+int(h.length)]
		if err := readFullCtx(ctx, r, rec[recordHeaderSize:]); err != nil {
			return nil, fmt.Errorf("reverse record %d: %w", seq, err)
		}
		n := nonce(seq)
		body, err := s.ackAEAD.Open(nil, n[:], rec[recordHeaderSize:], rec[:recordHeaderSize])
		if err != nil {
			return nil, fmt.Errorf("reverse record %d: %w", seq, ErrAuth)
		}
		if h.typ == RecordAck {
			return body, nil
		}
		// Pass p applied: p+1 passes are. Reports only grow.
		p := binary.BigEndian.Uint32(body)
		if p == ^uint32(0) || p+1 <= rr.applied.Load() {
			return nil, fmt.Errorf("reverse record %d: %w: pass %d reported after %d passes", seq, ErrOrder, p, rr.applied.Load())
		}
		rr.applied.Store(p + 1)
		rr.signal()
	}
}

// Reports says whether the destination reports the passes it applied
// (Options.Progress was set).
func (s *Sender) Reports() bool { return s.rev != nil }

// Applied is how many passes the destination has reported applied; 0
// without progress reports.
func (s *Sender) Applied() uint32 {
	if s.rev == nil {
		return 0
	}
	return s.rev.applied.Load()
}

// WaitApplied waits until the destination has applied the first passes
// passes (Applied() >= passes). It fails when progress reports are off,
// when the reverse direction failed or ended (a forged or out-of-order
// report, an early ack, a closed connection), or when ctx ends.
func (s *Sender) WaitApplied(ctx context.Context, passes uint32) error {
	rr := s.rev
	if rr == nil {
		return errors.New("wait for the destination: no progress reports (Options.Progress)")
	}
	for rr.applied.Load() < passes {
		select {
		case <-rr.changed:
		case <-rr.done:
			if rr.applied.Load() >= passes {
				return nil
			}
			if rr.err != nil {
				s.fail(rr.err)
				return fmt.Errorf("wait for the destination: %w", rr.err)
			}
			err := fmt.Errorf("wait for the destination: %w: acknowledged before pass %d", ErrOrder, passes)
			s.fail(err)
			return err
		case <-s.ctx.Done():
			return fmt.Errorf("wait for the destination: %w", context.Cause(s.ctx))
		case <-ctx.Done():
			return fmt.Errorf("wait for the destination: %w", ctx.Err())
		}
	}
	return nil
}

// progressWriter is the receiver's side: it sends a report for each pass
// the barrier releases, from its own goroutine so that a connection's
// reader never blocks on the reverse direction. Reports coalesce: only
// the latest pass is sent when several were applied since the last write.
type progressWriter struct {
	w      io.Writer
	r      *Receiver
	mu     sync.Mutex
	latest uint32 // passes applied, not yet reported
	sent   uint32 // passes reported
	wake   chan struct{}
	stop   chan struct{}
	done   chan struct{}
}

func (r *Receiver) startProgress(w io.Writer) *progressWriter {
	pw := &progressWriter{w: w, r: r, wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	go pw.run()
	return pw
}

// applied records that pass p is applied. It never blocks.
func (pw *progressWriter) applied(p uint32) {
	pw.mu.Lock()
	pw.latest = max(pw.latest, p+1)
	pw.mu.Unlock()
	select {
	case pw.wake <- struct{}{}:
	default:
	}
}

func (pw *progressWriter) run() {
	defer close(pw.done)
	for {
		select {
		case <-pw.wake:
		case <-pw.stop:
			return
		}
		pw.mu.Lock()
		n := pw.latest
		pw.mu.Unlock()
		if n == pw.sent {
			continue
		}
		if err := pw.write(n - 1); err != nil {
			// Reports are advice: the source that stops hearing them
			// fails on its own, and the ack would fail the same way.
			pw.r.log.Debug("stream: progress report not sent", "err", err)
			return
		}
		pw.sent = n
	}
}

// close stops the goroutine, unblocking a write in progress where w
// supports write deadlines; afterwards the next reverse sequence number
// is final for Acknowledge.
func (pw *progressWriter) close() {
	close(pw.stop)
	select {
	case <-pw.done:
		return
	case <-time.After(100 * time.Millisecond):
	}
	// A write stuck on a source that stopped reading.
	if d, ok := pw.w.(writeDeadliner); ok {
		_ = d.SetWriteDeadline(time.Unix(1, 0))
	}
	<-pw.done
	if d, ok := pw.w.(writeDeadliner); ok {
		_ = d.SetWriteDeadline(time.Time{})
	}
}

func (pw *progressWriter) write(p uint32) error {
	seq := pw.r.revSeq
	buf := make([]byte, recordHeaderSize, recordHeaderSize+progressSize+tagSize)
	recordHeader{typ: RecordProgress, conn: 0, length: progressSize + tagSize, seq: seq}.put(buf)
	var b [progressSize]byte
	binary.BigEndian.PutUint32(b[:], p)
	n := nonce(seq)
	buf = pw.r.ackAEAD.Seal(buf, n[:], b[:], buf[:recordHeaderSize])
	if _, err := pw.w.Write(buf); err != nil {
		return fmt.Errorf("progress report for pass %d: %w", p, err)
	}
	pw.r.revSeq++
	return nil
}
