package stream

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// gatedSink is a Memory whose writes block while the gate is shut.
type gatedSink struct {
	*memSink
	mu   sync.Mutex
	gate chan struct{} // nil: open
}

func (g *gatedSink) shut() {
	g.mu.Lock()
	g.gate = make(chan struct{})
	g.mu.Unlock()
}

func (g *gatedSink) open() {
	g.mu.Lock()
	close(g.gate)
	g.gate = nil
	g.mu.Unlock()
}

func (g *gatedSink) WritePage(gpa uint64, data []byte) error {
	g.mu.Lock()
	ch := g.gate
	g.mu.Unlock()
	if ch != nil {
		<-ch
	}
	return g.memSink.WritePage(gpa, data)
}

// TestProgressReports checks that the destination reports each pass once
// it has applied it, not when its bytes were sent, and that the ack still
// arrives and verifies after the reports.
func TestProgressReports(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	guest := genGuest(64*PageSize, 5, true)
	mem := &gatedSink{memSink: newMemSink(len(guest))}
	done := acceptAndRun(ctx, ln, mem)
	const n = 2
	ws := make([]io.Writer, n)
	var c0 net.Conn
	for i := range n {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		ws[i] = c
		if i == 0 {
			c0 = c
		}
	}
	s, err := NewSender(ws, testKey, Options{GuestMemSize: uint64(len(guest)), Progress: c0})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if !s.Reports() {
		t.Fatal("Reports() false with Options.Progress")
	}
	if err := s.SendRange(ctx, 0, guest); err != nil {
		t.Fatal(err)
	}
	if _, err := s.EndPass(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.WaitApplied(ctx, 1); err != nil {
		t.Fatalf("pass 0: %v", err)
	}

	// Pass 1 is sent but cannot be applied while the gate is shut.
	mem.shut()
	var dirty []Page
	for off := 0; off < len(guest); off += 4 * PageSize {
		dirty = append(dirty, Page{GPA: uint64(off), Data: guest[off : off+PageSize]})
	}
	if err := s.SendPages(ctx, dirty); err != nil {
		t.Fatal(err)
	}
	if _, err := s.EndPass(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	short, cancelShort := context.WithTimeout(ctx, 100*time.Millisecond)
	err = s.WaitApplied(short, 2)
	cancelShort()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("pass 1 reported applied while the destination could not write a page: %v", err)
	}
	if got := s.Applied(); got != 1 {
		t.Fatalf("Applied() = %d with pass 1 held, want 1", got)
	}
	mem.open()
	if err := s.WaitApplied(ctx, 2); err != nil {
		t.Fatalf("pass 1: %v", err)
	}
	if err := s.SendState(ctx, "vcpu/0", []byte("regs")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Finish(ctx); err != nil {
		t.Fatal(err)
	}
	o := <-done
	if o.err != nil {
		t.Fatalf("receive: %v", o.err)
	}
	if err := o.r.Acknowledge(ctx, o.conns[0]); err != nil {
		t.Fatal(err)
	}
	if err := s.AwaitAck(ctx, nil); err != nil {
		t.Fatalf("await ack after progress reports: %v", err)
	}
	if !bytes.Equal(mem.mem, guest) {
		t.Fatal("destination memory differs")
	}
}

// reverseRecord seals one record of the reverse direction as a
// destination would.
func reverseRecord(s *Sender, typ RecordType, seq uint64, body []byte) []byte {
	buf := make([]byte, recordHeaderSize, recordHeaderSize+len(body)+tagSize)
	recordHeader{typ: typ, conn: 0, length: uint32(len(body) + tagSize), seq: seq}.put(buf)
	n := nonce(seq)
	return s.ackAEAD.Seal(buf, n[:], body, buf[:recordHeaderSize])
}

func passBody(p uint32) []byte { return binary.BigEndian.AppendUint32(nil, p) }

// TestProgressRefused checks that the source refuses a reverse direction
// that is forged, out of order or malformed: the wait fails, and so does
// the sender, so the source never pauses on a lie.
func TestProgressRefused(t *testing.T) {
	tests := []struct {
		name string
		recs func(s *Sender) []byte
		want error
	}{
		{"forged", func(s *Sender) []byte {
			b := reverseRecord(s, RecordProgress, 0, passBody(0))
			b[len(b)-1] ^= 1
			return b
		}, ErrAuth},
		{"skipped sequence", func(s *Sender) []byte { return reverseRecord(s, RecordProgress, 1, passBody(0)) }, ErrSequence},
		{"replayed", func(s *Sender) []byte {
			r := reverseRecord(s, RecordProgress, 0, passBody(0))
			return append(r, r...)
		}, ErrSequence},
		{"pass backwards", func(s *Sender) []byte {
			return append(reverseRecord(s, RecordProgress, 0, passBody(1)), reverseRecord(s, RecordProgress, 1, passBody(0))...)
		}, ErrOrder},
		{"last pass number", func(s *Sender) []byte { return reverseRecord(s, RecordProgress, 0, passBody(^uint32(0))) }, ErrOrder},
		{"wrong type", func(s *Sender) []byte { return reverseRecord(s, RecordEndPass, 0, passBody(0)) }, ErrOrder},
		{"wrong size", func(s *Sender) []byte { return reverseRecord(s, RecordProgress, 0, []byte{0, 0, 0, 0, 0}) }, ErrFormat},
		{"early ack", func(s *Sender) []byte { return reverseRecord(s, RecordAck, 0, make([]byte, ackSize)) }, ErrOrder},
		{"truncated", func(s *Sender) []byte { return reverseRecord(s, RecordProgress, 0, passBody(0))[:10] }, ErrTruncated},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pr, pw := io.Pipe()
			s, err := NewSender([]io.Writer{io.Discard}, testKey, Options{GuestMemSize: 16 * PageSize, Progress: pr})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			go func() {
				_, _ = pw.Write(tc.recs(s))
				_ = pw.Close()
			}()
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			err = s.WaitApplied(ctx, 10)
			if !errors.Is(err, tc.want) {
				t.Fatalf("wait: %v, want %v", err, tc.want)
			}
			if err := s.SendState(ctx, "vcpu/0", nil); err == nil {
				t.Fatal("sender still usable after a refused reverse direction")
			}
		})
	}
}

// TestProgressNeedsReverseChannel checks that a receiver with nowhere to
// send reports refuses a stream that asks for them, rather than leaving
// the source waiting.
func TestProgressNeedsReverseChannel(t *testing.T) {
	guest := genGuest(16*PageSize, 9, false)
	pr, pw := io.Pipe()
	defer pw.Close()
	var w0 bytes.Buffer
	scenario(t, []io.Writer{&w0}, Options{Progress: pr}, guest)
	r, err := NewReceiver([]io.Reader{bytes.NewReader(w0.Bytes())}, testKey, newMemSink(len(guest)), ReceiverOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Run(t.Context()); !errors.Is(err, ErrHeader) {
		t.Fatalf("run: %v, want %v", err, ErrHeader)
	}
}

// FuzzReverse feeds arbitrary bytes to the source as the destination's
// reverse direction (progress reports, then the ack). Nothing may panic or
// hang; a wait for more passes than were validly reported must fail, and
// the valid seed's two reports must count.
func FuzzReverse(f *testing.F) {
	opts := Options{GuestMemSize: 16 * PageSize, StreamID: [16]byte{0xfe, 1}}
	seedOpts := opts
	seedOpts.Progress = bytes.NewReader(nil)
	s0, err := NewSender([]io.Writer{io.Discard}, testKey, seedOpts)
	if err != nil {
		f.Fatal(err)
	}
	valid := append(reverseRecord(s0, RecordProgress, 0, passBody(0)), reverseRecord(s0, RecordProgress, 1, passBody(1))...)
	s0.Close()
	f.Add(valid)
	f.Add(append(bytes.Clone(valid), reverseRecord(s0, RecordAck, 2, make([]byte, ackSize))...))
	f.Add(valid[:len(valid)-3])
	f.Fuzz(func(t *testing.T, data []byte) {
		o := opts
		o.Progress = bytes.NewReader(data)
		s, err := NewSender([]io.Writer{io.Discard}, testKey, o)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		if err := s.WaitApplied(ctx, 1<<30); err == nil {
			t.Fatalf("%d passes reported applied from %d bytes", s.Applied(), len(data))
		} else if errors.Is(err, context.DeadlineExceeded) {
			t.Fatal("the reverse reader hung on a finite input")
		}
		if bytes.HasPrefix(data, valid) && s.Applied() != 2 {
			t.Fatalf("valid reports counted as %d passes", s.Applied())
		}
	})
}

// TestAckRefusesReportsWithoutTheFeature checks that a source that did
// not ask for progress reports takes none: the ack must come first.
func TestAckRefusesReportsWithoutTheFeature(t *testing.T) {
	var w0 bytes.Buffer
	s, _, _ := scenario(t, []io.Writer{&w0}, Options{}, genGuest(8*PageSize, 4, false))
	rev := reverseRecord(s, RecordProgress, 0, passBody(0))
	if err := s.AwaitAck(t.Context(), bytes.NewReader(rev)); !errors.Is(err, ErrOrder) {
		t.Fatalf("await ack after a progress report: %v, want %v", err, ErrOrder)
	}
}
