package stream

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"
)

// testKey is a fixed test key.
var testKey = bytes.Repeat([]byte{0x42}, KeySize)

// memSink is a Memory over a byte slice. Pages of one pass are distinct, so
// concurrent writers never touch the same bytes.
type memSink struct {
	mem    []byte
	mu     sync.Mutex
	writes int
}

func newMemSink(size int) *memSink { return &memSink{mem: make([]byte, size)} }

func (m *memSink) WritePage(gpa uint64, data []byte) error {
	copy(m.mem[gpa:gpa+PageSize], data)
	return nil
}

func newRand(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, 1)) }

// pageKind selects a page's content in genGuest.
type pageKind int

const (
	kindZero   pageKind = iota
	kindText            // compressible
	kindRandom          // incompressible
)

// fillPage fills p deterministically with content of kind k.
func fillPage(p []byte, k pageKind, rng *rand.Rand) {
	switch k {
	case kindZero:
		clear(p)
	case kindText:
		words := []string{"kernel ", "page ", "struct ", "0x00000000 ", "task_struct ", "migration ", "\n", "    ", "return 0;"}
		off := 0
		for off < len(p) {
			off += copy(p[off:], words[rng.IntN(len(words))])
		}
	case kindRandom:
		for i := 0; i < len(p); i += 8 {
			binary.LittleEndian.PutUint64(p[i:], rng.Uint64())
		}
	}
}

// genGuest makes size bytes of guest-like memory: runs of zero pages (about
// 40 %), compressible pages (30 %) and random pages (30 %), deterministic
// for a seed. With nonzero it makes no zero pages.
func genGuest(size int, seed uint64, nonzero bool) []byte {
	mem := make([]byte, size)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	for off := 0; off < size; {
		// Regions of 1 to 64 pages of one kind, as in real guests.
		n := min(1+rng.IntN(64), (size-off)/PageSize)
		var k pageKind
		switch r := rng.IntN(10); {
		case nonzero:
			k = kindText + pageKind(r%2)
		case r < 4:
			k = kindZero
		case r < 7:
			k = kindText
		default:
			k = kindRandom
		}
		for range n {
			fillPage(mem[off:off+PageSize], k, rng)
			off += PageSize
		}
	}
	return mem
}

// capture runs a sender over in-memory buffers and returns each
// connection's bytes.
type captured struct {
	conns [][]byte
	id    [16]byte
	stats Stats
	guest []byte
}

// scenario sends two passes over guest memory (the second rewrites a few
// pages, zeroes some), then two state blobs, and finishes.
func scenario(t testing.TB, conns []io.Writer, opts Options, guest []byte) (*Sender, Stats, []byte) {
	t.Helper()
	ctx := context.Background()
	opts.GuestMemSize = uint64(len(guest))
	s, err := NewSender(conns, testKey, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SendRange(ctx, 0, guest); err != nil {
		t.Fatal(err)
	}
	if _, err := s.EndPass(ctx); err != nil {
		t.Fatal(err)
	}
	// Pass 1: dirty every third page: some become zero, some new data.
	final := bytes.Clone(guest)
	rng := rand.New(rand.NewPCG(7, 7))
	var dirty []Page
	for off := 0; off < len(final); off += 3 * PageSize {
		p := final[off : off+PageSize]
		fillPage(p, pageKind(rng.IntN(3)), rng)
		dirty = append(dirty, Page{GPA: uint64(off), Data: p})
	}
	if err := s.SendPages(ctx, dirty); err != nil {
		t.Fatal(err)
	}
	if _, err := s.EndPass(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.SendState(ctx, "vcpu/0", []byte("registers of vcpu 0")); err != nil {
		t.Fatal(err)
	}
	if err := s.SendState(ctx, "vm.pit2", bytes.Repeat([]byte{1}, 300)); err != nil {
		t.Fatal(err)
	}
	st, err := s.Finish(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return s, st, final
}

func capture(t testing.TB, n int, opts Options, guest []byte) (captured, []byte) {
	t.Helper()
	bufs := make([]*bytes.Buffer, n)
	ws := make([]io.Writer, n)
	for i := range bufs {
		bufs[i] = new(bytes.Buffer)
		ws[i] = bufs[i]
	}
	s, st, final := scenario(t, ws, opts, guest)
	c := captured{id: s.StreamID(), stats: st, guest: final}
	for _, b := range bufs {
		c.conns = append(c.conns, b.Bytes())
	}
	return c, final
}

// receive runs a receiver over in-memory connection bytes.
func receive(conns [][]byte, key []byte, size int, opts ReceiverOptions) (Result, *memSink, error) {
	rs := make([]io.Reader, len(conns))
	for i, c := range conns {
		rs[i] = bytes.NewReader(c)
	}
	mem := newMemSink(size)
	r, err := NewReceiver(rs, key, mem, opts)
	if err != nil {
		return Result{}, nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	res, err := r.Run(ctx)
	return res, mem, err
}

// records splits one connection's bytes into its header and records.
func records(t testing.TB, b []byte) (hdr []byte, recs [][]byte) {
	t.Helper()
	hdr, b = b[:headerSize], b[headerSize:]
	for len(b) > 0 {
		n := recordHeaderSize + int(binary.BigEndian.Uint32(b[4:]))
		recs = append(recs, b[:n])
		b = b[n:]
	}
	return hdr, recs
}

func join(hdr []byte, recs [][]byte) []byte {
	out := bytes.Clone(hdr)
	for _, r := range recs {
		out = append(out, r...)
	}
	return out
}

// craft builds a connection stream from raw bodies, sealed with the real
// key derivation, for records a correct sender never writes.
type craftRec struct {
	typ  RecordType
	body []byte
}

func craft(t testing.TB, h Header, key []byte, recs []craftRec) []byte {
	t.Helper()
	hb := h.marshal()
	a, err := connAEAD(key, hb, h.StreamID, dirSource)
	if err != nil {
		t.Fatal(err)
	}
	c := &sconn{idx: h.ConnIndex, aead: a}
	out := bytes.Clone(hb)
	for _, r := range recs {
		out = append(out, c.seal(r.typ, c.reserve(), nil, r.body)...)
	}
	return out
}

// craftManifest seals a correct manifest for a crafted single-connection
// stream of recs.
func craftValid(t testing.TB, h Header, key []byte, recs []craftRec, pages, zero uint64, passes uint32) []byte {
	t.Helper()
	hb := h.marshal()
	a, err := connAEAD(key, hb, h.StreamID, dirSource)
	if err != nil {
		t.Fatal(err)
	}
	c := &sconn{idx: 0, aead: a, hash: newChain(hb)}
	out := bytes.Clone(hb)
	for _, r := range recs {
		rec := c.seal(r.typ, c.reserve(), nil, r.body)
		c.hash.absorb(rec[:recordHeaderSize], rec[len(rec)-tagSize:])
		out = append(out, rec...)
	}
	m := manifest{passes: passes, pages: pages, zeroPages: zero, conns: []connSummary{{records: c.seq, hash: c.hash}}}
	return append(out, c.seal(RecordManifest, c.reserve(), nil, m.marshal())...)
}

func testHeader(guest uint64) Header {
	return Header{Version: Version, Features: FeatureZstd, StreamID: [16]byte{1, 2, 3}, ConnCount: 1,
		PageSize: PageSize, GuestMemSize: guest, MaxRecordSize: 1 << 20, MaxBatchPages: 128, Suite: suiteAES256GCM}
}

// accepted is what acceptAndRun's receiver ended with.
type accepted struct {
	r     *Receiver
	conns []net.Conn
	err   error
}

// acceptAndRun accepts one stream on ln and runs it into mem, in the
// background.
func acceptAndRun(ctx context.Context, ln net.Listener, mem Memory) <-chan accepted {
	done := make(chan accepted, 1)
	go func() {
		r, conns, err := Accept(ctx, ln, testKey, mem, ReceiverOptions{})
		if err == nil {
			_, err = r.Run(ctx)
		}
		done <- accepted{r, conns, err}
	}()
	return done
}
