package stream

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// transport makes n connected pairs: what the sender writes on w[i], the
// receiver reads on r[i] (both directions work for the acknowledgement).
type transport func(t *testing.T, n int) (w, r []net.Conn)

func pipes(t *testing.T, n int) (w, r []net.Conn) {
	for range n {
		a, b := net.Pipe()
		t.Cleanup(func() { a.Close(); b.Close() })
		w, r = append(w, a), append(r, b)
	}
	return w, r
}

func roundTrip(t *testing.T, n int, opts Options, guest []byte, tcp bool) (Stats, Result) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var ws []net.Conn
	type recvOut struct {
		res   Result
		mem   *memSink
		err   error
		recv  *Receiver
		conns []net.Conn
	}
	out := make(chan recvOut, 1)
	mem := newMemSink(len(guest))
	if tcp {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			r, conns, err := Accept(ctx, ln, testKey, mem, ReceiverOptions{})
			if err != nil {
				out <- recvOut{err: err}
				return
			}
			res, err := r.Run(ctx)
			out <- recvOut{res: res, mem: mem, err: err, recv: r, conns: conns}
		}()
		for range n {
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			ws = append(ws, c)
		}
	} else {
		var rs []net.Conn
		ws, rs = pipes(t, n)
		readers := make([]io.Reader, n)
		for i, c := range rs {
			readers[i] = c
		}
		r, err := NewReceiver(readers, testKey, mem, ReceiverOptions{})
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			res, err := r.Run(ctx)
			out <- recvOut{res: res, mem: mem, err: err, recv: r, conns: rs}
		}()
	}
	writers := make([]io.Writer, n)
	for i, c := range ws {
		writers[i] = c
	}
	s, st, final := scenario(t, writers, opts, guest)
	ro := <-out
	if ro.err != nil {
		t.Fatalf("receive: %v", ro.err)
	}
	if !bytes.Equal(ro.mem.mem, final) {
		t.Fatal("destination memory differs from the source's after the last pass")
	}
	if len(ro.res.States) != 2 || ro.res.States[0].ID != "vcpu/0" || string(ro.res.States[0].Data) != "registers of vcpu 0" || ro.res.States[1].ID != "vm.pit2" {
		t.Fatalf("states: %+v", ro.res.States)
	}
	if ro.res.Stats.Passes != 2 || st.Passes != 2 {
		t.Fatalf("passes: sent %d, received %d", st.Passes, ro.res.Stats.Passes)
	}
	if ro.res.Stats.WireBytes != st.WireBytes {
		t.Fatalf("wire bytes: sent %d, received %d", st.WireBytes, ro.res.Stats.WireBytes)
	}
	if ro.res.Stats.Pages != st.Pages || ro.res.Stats.ZeroPages != st.ZeroPages || ro.res.Stats.CompressedPages != st.CompressedPages {
		t.Fatalf("page counts: sent %+v, received %+v", st, ro.res.Stats)
	}
	ackDone := make(chan error, 1)
	go func() { ackDone <- ro.recv.Acknowledge(ctx, ro.conns[0]) }()
	if err := s.AwaitAck(ctx, ws[0]); err != nil {
		t.Fatalf("await ack: %v", err)
	}
	if err := <-ackDone; err != nil {
		t.Fatal(err)
	}
	return st, ro.res
}

func TestRoundTrip(t *testing.T) {
	guest := genGuest(4<<20, 1, false)
	for _, tc := range []struct {
		name  string
		conns int
		tcp   bool
		comp  Compression
	}{
		{"pipe/1", 1, false, CompressAuto},
		{"pipe/4", 4, false, CompressAuto},
		{"pipe/4/off", 4, false, CompressOff},
		{"tcp/1", 1, true, CompressAuto},
		{"tcp/4", 4, true, CompressAuto},
		{"tcp/16/always", 16, true, CompressAlways},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, _ := roundTrip(t, tc.conns, Options{Compression: tc.comp, BatchPages: 32, ignoreLink: true}, guest, tc.tcp)
			if st.ZeroPages == 0 || st.Pages == 0 {
				t.Fatalf("scenario sent no zero or no data pages: %+v", st)
			}
			if tc.comp == CompressOff && st.CompressedPages != 0 {
				t.Fatalf("compression off but %d pages compressed", st.CompressedPages)
			}
			if tc.comp != CompressOff && st.CompressedPages == 0 {
				t.Fatal("no page compressed in guest-like memory")
			}
		})
	}
}

// A page resent in a later pass wins even when connections deliver out of
// step: connection 1 is slow, so pass 0's copy of a page arrives after pass
// 1's copy was sent on connection 0.
func TestPassOrderAcrossConnections(t *testing.T) {
	const size = 64 * PageSize
	guest := genGuest(size, 3, true)
	ctx := context.Background()
	bufs := []*bytes.Buffer{{}, {}}
	s, err := NewSender([]io.Writer{bufs[0], bufs[1]}, testKey, Options{GuestMemSize: size, BatchPages: 1, Workers: 1})
	if err != nil {
		t.Fatal(err)
	}
	page := guest[:PageSize]
	for pass := range 4 {
		page[0] = byte(pass + 1)
		if err := s.SendPages(ctx, []Page{{GPA: 0, Data: bytes.Clone(page)}}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.EndPass(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Finish(ctx); err != nil {
		t.Fatal(err)
	}
	// Connection 1 is read only after connection 0 blocks at the barrier;
	// either way the last pass must win.
	res, mem, err := receive([][]byte{bufs[0].Bytes(), bufs[1].Bytes()}, testKey, size, ReceiverOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if mem.mem[0] != 4 || res.Stats.Passes != 4 {
		t.Fatalf("page 0 starts with %d after %d passes, want 4", mem.mem[0], res.Stats.Passes)
	}
}

func TestCPUCheck(t *testing.T) {
	guest := genGuest(256*PageSize, 5, false)
	incompatible := errors.New("destination lacks AVX-512 (CPUID.7.EBX bit 16); migrate to a host with it")
	for _, tc := range []struct {
		name    string
		cpu     []byte
		check   func([]byte) error
		wantErr error
	}{
		{"compatible", []byte("cpuid-v1"), func(b []byte) error { return nil }, nil},
		{"incompatible", []byte("cpuid-v1"), func(b []byte) error { return incompatible }, ErrCPU},
		{"missing", nil, func(b []byte) error { return nil }, ErrOrder},
		{"not-checked", []byte("cpuid-v1"), nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, _ := capture(t, 3, Options{CPU: tc.cpu}, guest)
			res, _, err := receive(c.conns, testKey, len(guest), ReceiverOptions{CheckCPU: tc.check})
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil) != (err == nil) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if errors.Is(err, ErrCPU) && !errors.Is(err, incompatible) {
				t.Fatalf("the checker's message is lost: %v", err)
			}
			if err == nil && !bytes.Equal(res.CPU, tc.cpu) {
				t.Fatalf("cpu record %q", res.CPU)
			}
		})
	}
}

func TestCompression(t *testing.T) {
	const size = 8 << 20
	text := make([]byte, size)
	random := genGuest(size, 9, true)
	for off := 0; off < size; off += PageSize {
		fillPage(text[off:off+PageSize], kindText, newRand(uint64(off)))
	}
	for _, tc := range []struct {
		name           string
		mem            []byte
		mode           Compression
		minCompressed  float64 // fraction of pages
		maxCompressed  float64
		maxWireVsRawPc float64
	}{
		{"text/auto", text, CompressAuto, 1, 1, 50},
		{"text/off", text, CompressOff, 0, 0, 101},
		{"mixed/auto", random, CompressAuto, 0.2, 0.9, 100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			ctx := context.Background()
			s, err := NewSender([]io.Writer{&buf}, testKey, Options{GuestMemSize: size, Compression: tc.mode, ignoreLink: true})
			if err != nil {
				t.Fatal(err)
			}
			if err := s.SendRange(ctx, 0, tc.mem); err != nil {
				t.Fatal(err)
			}
			st, err := s.Finish(ctx)
			if err != nil {
				t.Fatal(err)
			}
			frac := float64(st.CompressedPages) / float64(st.Pages)
			if frac < tc.minCompressed || frac > tc.maxCompressed {
				t.Fatalf("%.2f of pages compressed, want %.2f..%.2f", frac, tc.minCompressed, tc.maxCompressed)
			}
			if pc := 100 * float64(st.WireBytes) / size; pc > tc.maxWireVsRawPc {
				t.Fatalf("wire is %.1f%% of raw, want <= %.0f%%", pc, tc.maxWireVsRawPc)
			}
			if uint64(buf.Len()) != st.WireBytes {
				t.Fatalf("stats say %d wire bytes, %d written", st.WireBytes, buf.Len())
			}
			_, mem, err := receive([][]byte{buf.Bytes()}, testKey, size, ReceiverOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(mem.mem, tc.mem) {
				t.Fatal("memory differs")
			}
		})
	}
}

// The auto policy stops trying on incompressible data and probes again.
func TestCompressionPolicy(t *testing.T) {
	c, err := newCompressor(CompressAuto)
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	rnd := make([]byte, 8*PageSize)
	fillRandom(rnd)
	text := make([]byte, 8*PageSize)
	for off := 0; off < len(text); off += PageSize {
		fillPage(text[off:off+PageSize], kindText, newRand(uint64(off)))
	}
	tried := 0
	for range 1000 {
		if c.shouldTry(true) {
			tried++
			c.compress(nil, rnd)
		}
	}
	if tried > 100 {
		t.Fatalf("tried %d of 1000 incompressible batches", tried)
	}
	if tried <= policyWindow {
		t.Fatalf("never probed again (tried %d)", tried)
	}
	// Compressible data comes back: within a pause plus a window it is
	// compressed again, and stays so.
	used := 0
	for range maxBackoff + 100 {
		if c.shouldTry(true) {
			if _, ok := c.compress(nil, text); ok {
				used++
			}
			if used == 90 {
				break
			}
		}
	}
	if used < 90 {
		t.Fatalf("compression resumed for only %d batches", used)
	}
}

// CompressAuto compresses where the link is the bottleneck, or where by
// the measured costs compressing takes less CPU time than sealing the
// bytes it saves; otherwise only an occasional probe batch.
func TestCompressionCostModel(t *testing.T) {
	for _, tc := range []struct {
		name                  string
		linkBound             bool
		compNs, sealNs, ratio float64
		wantMin, wantMax      int // batches tried of 1000
	}{
		{"fast AES, CPU bound", false, 2, 0.3, 0.4, 1, 1000 / probeEvery * 2},
		{"fast AES, link bound", true, 2, 0.3, 0.4, 1000, 1000},
		{"emulated AES, compressible", false, 15, 50, 0.4, 1000, 1000},
		{"emulated AES, barely compressible", false, 15, 50, 0.8, 1, 1000 / probeEvery * 2},
		{"nothing measured yet", false, 0, 0, 0, 1, 1 + 1000/probeEvery},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &compressor{mode: CompressAuto, backoff: minBackoff, compNs: tc.compNs, sealNs: tc.sealNs, ratio: tc.ratio}
			tried := 0
			for range 1000 {
				if c.shouldTry(tc.linkBound) {
					tried++
					if tc.compNs == 0 {
						// What compress would measure: too costly to pay.
						c.compNs, c.sealNs, c.ratio = 10, 1, 0.5
					}
				}
			}
			if tried < tc.wantMin || tried > tc.wantMax {
				t.Fatalf("tried %d of 1000 batches, want %d..%d", tried, tc.wantMin, tc.wantMax)
			}
		})
	}
}

func fillRandom(b []byte) {
	for off := 0; off < len(b); off += PageSize {
		fillPage(b[off:off+PageSize], kindRandom, newRand(uint64(off)))
	}
}

// Zero pages cost at most 16 bytes each on the wire, counted from the
// bytes written, in the best case (one long run) and the worst (every
// other page zero).
func TestZeroPageCost(t *testing.T) {
	const pages = 4096
	alternating := make([]byte, pages*PageSize)
	for i := 1; i < pages; i += 2 {
		fillPage(alternating[i*PageSize:(i+1)*PageSize], kindText, newRand(uint64(i)))
	}
	for _, tc := range []struct {
		name    string
		mem     []byte
		maxCost float64
	}{
		{"all-zero", make([]byte, pages*PageSize), 0.5},
		{"alternating", alternating, 16},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			ctx := context.Background()
			s, err := NewSender([]io.Writer{&buf}, testKey, Options{GuestMemSize: uint64(len(tc.mem)), Compression: CompressOff})
			if err != nil {
				t.Fatal(err)
			}
			if err := s.SendRange(ctx, 0, tc.mem); err != nil {
				t.Fatal(err)
			}
			st, err := s.Finish(ctx)
			if err != nil {
				t.Fatal(err)
			}
			// Everything on the wire that is not a page batch is charged
			// to the zero pages: header, zero runs, markers, manifest.
			zeroCost := float64(uint64(buf.Len())-st.PageWireBytes) / float64(st.ZeroPages)
			t.Logf("%d zero pages, %.3f wire bytes each", st.ZeroPages, zeroCost)
			if zeroCost > tc.maxCost {
				t.Fatalf("zero page costs %.2f bytes, want <= %.1f", zeroCost, tc.maxCost)
			}
			if _, _, err := receive([][]byte{buf.Bytes()}, testKey, len(tc.mem), ReceiverOptions{}); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestSenderRefusesBadInput(t *testing.T) {
	ctx := context.Background()
	s, err := NewSender([]io.Writer{io.Discard}, testKey, Options{GuestMemSize: 16 * PageSize})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	page := make([]byte, PageSize)
	for _, tc := range []struct {
		name string
		err  error
	}{
		{"unaligned", s.SendPages(ctx, []Page{{GPA: 100, Data: page}})},
		{"outside", s.SendPages(ctx, []Page{{GPA: 16 * PageSize, Data: page}})},
		{"short", s.SendPages(ctx, []Page{{GPA: 0, Data: page[:100]}})},
		{"range-outside", s.SendRange(ctx, 15*PageSize, make([]byte, 2*PageSize))},
		{"bad-id", s.SendState(ctx, "vcpu 0", nil)},
		{"huge-state", s.SendState(ctx, "big", make([]byte, 4<<20))},
	} {
		if tc.err == nil {
			t.Errorf("%s: accepted", tc.name)
		}
	}
	if _, err := NewSender([]io.Writer{io.Discard}, testKey[:16], Options{GuestMemSize: PageSize}); !errors.Is(err, ErrKey) {
		t.Errorf("short key: %v", err)
	}
}

// Cancelling the context unblocks a sender whose destination stopped
// reading, and the receiver whose source went away.
func TestContextCancel(t *testing.T) {
	ws, rs := pipes(t, 2)
	guest := genGuest(1<<20, 1, true)
	s, err := NewSender([]io.Writer{ws[0], ws[1]}, testKey, Options{GuestMemSize: uint64(len(guest))})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	err = s.SendRange(ctx, 0, guest)
	if err == nil {
		_, err = s.Finish(ctx)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("sender: %v", err)
	}
	r, err := NewReceiver([]io.Reader{rs[0], rs[1]}, testKey, newMemSink(len(guest)), ReceiverOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rctx, rcancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer rcancel()
	if _, err := r.Run(rctx); err == nil {
		t.Fatal("receiver succeeded on an aborted stream")
	}
}

func ExampleSender() {
	guest := make([]byte, 64*PageSize)
	copy(guest[PageSize:], "hello")
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	ctx := context.Background()
	mem := newMemSink(len(guest))
	done := make(chan error, 1)
	go func() {
		r, err := NewReceiver([]io.Reader{b}, testKey, mem, ReceiverOptions{})
		if err == nil {
			_, err = r.Run(ctx)
		}
		if err == nil {
			err = r.Acknowledge(ctx, b)
		}
		done <- err
	}()
	s, _ := NewSender([]io.Writer{a}, testKey, Options{GuestMemSize: uint64(len(guest))})
	_ = s.SendRange(ctx, 0, guest)
	_ = s.SendState(ctx, "vcpu/0", []byte{1, 2, 3})
	st, _ := s.Finish(ctx)
	fmt.Println(s.AwaitAck(ctx, a), <-done)
	fmt.Println(st.Pages, st.ZeroPages, string(mem.mem[PageSize:PageSize+5]))
	// Output:
	// <nil> <nil>
	// 1 63 hello
}

// TestAcceptOrdersConnections dials the connections in the reverse of
// their index order: Accept must still return the source's connection 0
// first, the one the acknowledgement travels back on.
func TestAcceptOrdersConnections(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	guest := genGuest(64*PageSize, 3, true)
	done := acceptAndRun(ctx, ln, newMemSink(len(guest)))
	const n = 3
	ws := make([]net.Conn, n)
	for i := n - 1; i >= 0; i-- { // connection 2 reaches Accept first
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		ws[i] = c
	}
	writers := make([]io.Writer, n)
	for i, c := range ws {
		writers[i] = c
	}
	s, _, _ := scenario(t, writers, Options{}, guest)
	o := <-done
	if o.err != nil {
		t.Fatalf("receive: %v", o.err)
	}
	go func() { _ = o.r.Acknowledge(ctx, o.conns[0]) }()
	if err := s.AwaitAck(ctx, ws[0]); err != nil {
		t.Fatalf("await ack on connection 0: %v", err)
	}
}

// gateWriter blocks every Write until open is closed.
type gateWriter struct {
	open chan struct{}
	mu   sync.Mutex
	n    int
}

func (g *gateWriter) Write(b []byte) (int, error) {
	<-g.open
	g.mu.Lock()
	defer g.mu.Unlock()
	g.n += len(b)
	return len(b), nil
}

// TestDrain checks that Drain returns only once every record is written,
// where EndPass returns as soon as the records are queued.
func TestDrain(t *testing.T) {
	ctx := context.Background()
	guest := genGuest(16*PageSize, 5, true)
	g := &gateWriter{open: make(chan struct{})}
	s, err := NewSender([]io.Writer{g}, testKey, Options{GuestMemSize: uint64(len(guest))})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.SendRange(ctx, 0, guest); err != nil {
		t.Fatal(err)
	}
	if _, err := s.EndPass(ctx); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := s.Drain(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Drain with the writer blocked: %v; want a deadline error", err)
	}

	g2 := &gateWriter{open: make(chan struct{})}
	s, err = NewSender([]io.Writer{g2}, testKey, Options{GuestMemSize: uint64(len(guest))})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.SendRange(ctx, 0, guest); err != nil {
		t.Fatal(err)
	}
	if _, err := s.EndPass(ctx); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Drain(ctx) }()
	select {
	case err := <-done:
		t.Fatalf("Drain returned %v while the writer was blocked", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(g2.open)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	g2.mu.Lock()
	n := g2.n
	g2.mu.Unlock()
	close(g.open) // let the first sender's writer finish
	if st := s.Stats(); uint64(n) != st.WireBytes {
		t.Fatalf("after Drain %d bytes written, stats say %d", n, st.WireBytes)
	}
}

// TestAcceptSkipsStrayConnections: connections that close at once or send
// garbage before the source connects do not end the receive.
func TestAcceptSkipsStrayConnections(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for _, junk := range []string{"", "GET / HTTP/1.0\r\n\r\n" + strings.Repeat("x", 64)} {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte(junk))
		c.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const size = 16 * PageSize
	done := make(chan error, 1)
	go func() {
		var conns []net.Conn
		var ws []io.Writer
		for range 2 {
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				done <- err
				return
			}
			defer c.Close()
			conns, ws = append(conns, c), append(ws, c)
		}
		s, err := NewSender(ws, testKey, Options{GuestMemSize: size})
		if err == nil {
			_, err = s.EndPass(ctx)
		}
		if err == nil {
			_, err = s.Finish(ctx)
		}
		if err == nil {
			err = s.AwaitAck(ctx, conns[0])
		}
		done <- err
	}()
	r, conns, err := Accept(ctx, ln, testKey, newMemSink(size), ReceiverOptions{})
	if err != nil {
		t.Fatalf("Accept after stray connections: %v", err)
	}
	if _, err := r.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.Acknowledge(ctx, conns[0]); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("sender: %v", err)
	}
}

// slowWriter is a link slower than the workers: each write takes a while.
type slowWriter struct {
	bytes.Buffer
	delay time.Duration
}

func (w *slowWriter) Write(p []byte) (int, error) {
	time.Sleep(w.delay)
	return w.Buffer.Write(p)
}

// CompressAuto compresses only where the link is the bottleneck: over a
// writer that keeps up, compressible memory goes raw; over a slow one it
// is compressed. Both streams decode to the same memory.
func TestCompressAutoFollowsTheLink(t *testing.T) {
	const size = 4 << 20
	text := make([]byte, size)
	for off := 0; off < size; off += PageSize {
		fillPage(text[off:off+PageSize], kindText, newRand(uint64(off)))
	}
	for _, tc := range []struct {
		name string
		w    interface {
			io.Writer
			Bytes() []byte
		}
		min, max float64 // fraction of pages compressed
	}{
		{"fast link", &bytes.Buffer{}, 0, 0.5},
		{"slow link", &slowWriter{delay: 5 * time.Millisecond}, 0.8, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			s, err := NewSender([]io.Writer{tc.w}, testKey, Options{GuestMemSize: size, Workers: 2, BatchPages: 16})
			if err != nil {
				t.Fatal(err)
			}
			if err := s.SendRange(ctx, 0, text); err != nil {
				t.Fatal(err)
			}
			st, err := s.Finish(ctx)
			if err != nil {
				t.Fatal(err)
			}
			frac := float64(st.CompressedPages) / float64(st.Pages)
			if frac < tc.min || frac > tc.max {
				t.Fatalf("%.2f of pages compressed, want %.2f..%.2f", frac, tc.min, tc.max)
			}
			_, mem, err := receive([][]byte{tc.w.Bytes()}, testKey, size, ReceiverOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(mem.mem, text) {
				t.Fatal("memory differs after the round trip")
			}
		})
	}
}
