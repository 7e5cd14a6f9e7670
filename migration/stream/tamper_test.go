package stream

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"testing"
)

// tamperStream is a small stream over 2 connections: 2 passes, zero runs,
// compressed and raw batches, state blobs, CPU record.
func tamperStream(t *testing.T) captured {
	t.Helper()
	guest := genGuest(24*PageSize, 21, false)
	c, _ := capture(t, 2, Options{BatchPages: 4, Workers: 1, CPU: []byte("cpu"), StreamID: [16]byte{9}}, guest)
	return c
}

// mustRefuse runs a receiver over conns and fails the test if it succeeds
// or if the error is not one of want (when given).
func mustRefuse(t *testing.T, name string, conns [][]byte, size int, opts ReceiverOptions, want ...error) {
	t.Helper()
	_, _, err := receive(conns, testKey, size, opts)
	if err == nil {
		t.Errorf("%s: accepted", name)
		return
	}
	if len(want) == 0 {
		return
	}
	for _, w := range want {
		if errors.Is(err, w) {
			return
		}
	}
	t.Errorf("%s: %v, want one of %v", name, err, want)
}

func TestTamperBaselineAccepted(t *testing.T) {
	c := tamperStream(t)
	_, mem, err := receive(c.conns, testKey, len(c.guest), ReceiverOptions{StreamID: c.id})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(mem.mem, c.guest) {
		t.Fatal("memory differs")
	}
}

// Flipping any byte of any connection is refused: in the header (version,
// parameters or key binding), in a record header (limits, sequence) or in a
// sealed body (authentication).
func TestTamperFlipEveryByte(t *testing.T) {
	c := tamperStream(t)
	for ci, conn := range c.conns {
		_, recs := records(t, conn)
		// Every byte of the header, every record header and tag, the
		// first and last bytes of every body, and a stride elsewhere.
		check := make(map[int]bool)
		for i := range headerSize {
			check[i] = true
		}
		off := headerSize
		for _, r := range recs {
			for i := range 48 {
				check[off+i] = true
			}
			for i := len(r) - 32; i < len(r); i++ {
				check[off+i] = true
			}
			for i := 0; i < len(r); i += 97 {
				check[off+i] = true
			}
			off += len(r)
		}
		for pos := range check {
			if pos >= len(conn) {
				continue
			}
			for _, bit := range []byte{0x01, 0x80} {
				mod := bytes.Clone(conn)
				mod[pos] ^= bit
				conns := append([][]byte(nil), c.conns...)
				conns[ci] = mod
				mustRefuse(t, fmt.Sprintf("conn %d byte %d ^%#x", ci, pos, bit), conns, len(c.guest), ReceiverOptions{})
			}
		}
	}
}

func TestTamperRecords(t *testing.T) {
	c := tamperStream(t)
	size := len(c.guest)
	type op struct {
		name string
		mod  func(h0 []byte, r0 [][]byte, h1 []byte, r1 [][]byte) [][]byte
		want []error
	}
	h0, r0 := records(t, c.conns[0])
	h1, r1 := records(t, c.conns[1])
	var ops []op
	n := min(len(r0), len(r1))
	for i := range len(r0) {
		ops = append(ops, op{fmt.Sprintf("drop conn0 record %d", i), func(h0 []byte, r0 [][]byte, h1 []byte, r1 [][]byte) [][]byte {
			return [][]byte{join(h0, append(r0[:i:i], r0[i+1:]...)), join(h1, r1)}
		}, []error{ErrSequence, ErrTruncated}})
		if i == len(r0)-1 {
			// The receiver stops reading a connection at its final
			// record: bytes after the manifest are not part of the
			// stream and are never applied, so there is nothing to
			// refuse.
			continue
		}
		ops = append(ops, op{fmt.Sprintf("duplicate conn0 record %d", i), func(h0 []byte, r0 [][]byte, h1 []byte, r1 [][]byte) [][]byte {
			d := append(append(r0[:i+1:i+1], r0[i]), r0[i+1:]...)
			return [][]byte{join(h0, d), join(h1, r1)}
		}, []error{ErrSequence}})
		if i+1 < len(r0) {
			ops = append(ops, op{fmt.Sprintf("swap conn0 records %d,%d", i, i+1), func(h0 []byte, r0 [][]byte, h1 []byte, r1 [][]byte) [][]byte {
				s := append([][]byte(nil), r0...)
				s[i], s[i+1] = s[i+1], s[i]
				return [][]byte{join(h0, s), join(h1, r1)}
			}, []error{ErrSequence}})
		}
		// Replay an earlier record at the end, in place of the manifest.
		ops = append(ops, op{fmt.Sprintf("replay conn0 record %d at the end", i), func(h0 []byte, r0 [][]byte, h1 []byte, r1 [][]byte) [][]byte {
			return [][]byte{join(h0, append(append([][]byte(nil), r0[:len(r0)-1]...), r0[i])), join(h1, r1)}
		}, []error{ErrSequence}})
	}
	for i := range len(r1) {
		ops = append(ops, op{fmt.Sprintf("drop conn1 record %d", i), func(h0 []byte, r0 [][]byte, h1 []byte, r1 [][]byte) [][]byte {
			return [][]byte{join(h0, r0), join(h1, append(r1[:i:i], r1[i+1:]...))}
		}, []error{ErrSequence, ErrTruncated}})
	}
	for i := range n {
		ops = append(ops, op{fmt.Sprintf("swap record %d between connections", i), func(h0 []byte, r0 [][]byte, h1 []byte, r1 [][]byte) [][]byte {
			a, b := append([][]byte(nil), r0...), append([][]byte(nil), r1...)
			a[i], b[i] = b[i], a[i]
			return [][]byte{join(h0, a), join(h1, b)}
		}, []error{ErrSequence}})
		// Same record moved with its connection field rewritten: the key
		// and additional data still differ.
		ops = append(ops, op{fmt.Sprintf("move record %d to the other connection, relabelled", i), func(h0 []byte, r0 [][]byte, h1 []byte, r1 [][]byte) [][]byte {
			b := append([][]byte(nil), r1...)
			m := bytes.Clone(r0[i])
			binary.BigEndian.PutUint16(m[2:], 1)
			b[i] = m
			return [][]byte{join(h0, r0), join(h1, b)}
		}, []error{ErrAuth}})
	}
	ops = append(ops, op{"swap connection headers", func(h0 []byte, r0 [][]byte, h1 []byte, r1 [][]byte) [][]byte {
		return [][]byte{join(h1, r0), join(h0, r1)}
	}, []error{ErrSequence, ErrAuth}})
	ops = append(ops, op{"connection given twice", func(h0 []byte, r0 [][]byte, h1 []byte, r1 [][]byte) [][]byte {
		return [][]byte{join(h0, r0), join(h0, r0)}
	}, []error{ErrHeader}})
	ops = append(ops, op{"one connection missing", func(h0 []byte, r0 [][]byte, h1 []byte, r1 [][]byte) [][]byte {
		return [][]byte{join(h0, r0)}
	}, []error{ErrHeader}})
	for _, o := range ops {
		mustRefuse(t, o.name, o.mod(h0, r0, h1, r1), size, ReceiverOptions{}, o.want...)
	}
}

// Truncation at every record boundary and in the middle of every record,
// of either connection, is refused.
func TestTamperTruncate(t *testing.T) {
	c := tamperStream(t)
	for ci, conn := range c.conns {
		_, recs := records(t, conn)
		cuts := []int{0, 1, headerSize - 1, headerSize}
		off := headerSize
		for _, r := range recs {
			cuts = append(cuts, off+1, off+recordHeaderSize-1, off+recordHeaderSize, off+len(r)/2, off+len(r)-1)
			off += len(r)
			if off < len(conn) {
				cuts = append(cuts, off)
			}
		}
		for _, cut := range cuts {
			conns := append([][]byte(nil), c.conns...)
			conns[ci] = conn[:cut]
			mustRefuse(t, fmt.Sprintf("conn %d cut at %d of %d", ci, cut, len(conn)), conns, len(c.guest), ReceiverOptions{}, ErrTruncated)
		}
	}
}

func TestTamperWrongParameters(t *testing.T) {
	c := tamperStream(t)
	size := len(c.guest)
	otherKey := bytes.Repeat([]byte{0x43}, KeySize)
	if _, _, err := receive(c.conns, otherKey, size, ReceiverOptions{}); !errors.Is(err, ErrAuth) {
		t.Errorf("wrong key: %v", err)
	}
	mustRefuse(t, "wrong expected stream id", c.conns, size, ReceiverOptions{StreamID: [16]byte{8}}, ErrStreamID)

	// A header field changed in transit on both connections alike, so the
	// headers agree and pass the checks: the key derivation refuses it.
	rewrite := func(off int, val []byte) [][]byte {
		var out [][]byte
		for _, conn := range c.conns {
			m := bytes.Clone(conn)
			copy(m[off:], val)
			out = append(out, m)
		}
		return out
	}
	mustRefuse(t, "stream id rewritten", rewrite(20, []byte{7}), size, ReceiverOptions{}, ErrAuth)
	mustRefuse(t, "features rewritten", rewrite(19, []byte{0}), size, ReceiverOptions{}, ErrAuth)
	mustRefuse(t, "guest size rewritten", rewrite(44, be64(uint64(size)*2)), 2*size, ReceiverOptions{}, ErrAuth)
	mustRefuse(t, "bad version", rewrite(8, []byte{0, 2}), size, ReceiverOptions{}, ErrVersion)
	mustRefuse(t, "bad magic", rewrite(0, []byte("X")), size, ReceiverOptions{}, ErrMagic)
	mustRefuse(t, "unknown feature", rewrite(12, []byte{0x80}), size, ReceiverOptions{}, ErrHeader)
	mustRefuse(t, "huge declared record size", rewrite(52, be32(1<<30)), size, ReceiverOptions{}, ErrLimit)
	mustRefuse(t, "huge declared batch", rewrite(56, be32(1<<20)), size, ReceiverOptions{}, ErrLimit)
	mustRefuse(t, "guest larger than the limit", rewrite(44, be64(1<<50)), size, ReceiverOptions{}, ErrLimit)
	mustRefuse(t, "too many connections", rewrite(38, []byte{0, 200}), size, ReceiverOptions{}, ErrLimit)
	mustRefuse(t, "declared record size above the receiver's limit", c.conns, size,
		ReceiverOptions{Limits: Limits{MaxRecordSize: 64 << 10}}, ErrLimit)

	// Record length fields beyond the limit are refused before reading.
	for _, l := range []uint32{0, tagSize - 1, 1<<31 + 5, 0xffffffff} {
		m := bytes.Clone(c.conns[0])
		binary.BigEndian.PutUint32(m[headerSize+4:], l)
		mustRefuse(t, fmt.Sprintf("record length %d", l), [][]byte{m, c.conns[1]}, size, ReceiverOptions{}, ErrLimit)
	}
}

func be32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
func be64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

// pagesRec builds a page batch body.
func pagesRec(pass uint32, runs []run, data []byte, flags byte) []byte {
	var np uint64
	for _, r := range runs {
		np += r.pages
	}
	b := binary.BigEndian.AppendUint32(nil, pass)
	b = append(b, flags)
	b = binary.BigEndian.AppendUint32(b, uint32(np))
	b = binary.BigEndian.AppendUint32(b, uint32(len(runs)))
	b = appendRuns(b, runs)
	return append(b, data...)
}

// rawRuns encodes runs from explicit (gap, count) pairs, which may be
// invalid.
func rawRuns(pairs ...uint64) []byte {
	var b []byte
	for _, p := range pairs {
		b = binary.AppendUvarint(b, p)
	}
	return b
}

// Authenticated records with bad contents (a buggy or compromised source)
// are refused by the decoder's checks.
func TestTamperAuthenticatedContents(t *testing.T) {
	const guest = 16 * PageSize
	h := testHeader(guest)
	page := bytes.Repeat([]byte{7}, PageSize)
	badPages := func(np, nruns uint32, runs []byte, data []byte) []byte {
		b := binary.BigEndian.AppendUint32(nil, 0)
		b = append(b, 0)
		b = binary.BigEndian.AppendUint32(b, np)
		b = binary.BigEndian.AppendUint32(b, nruns)
		return append(append(b, runs...), data...)
	}
	zeroRuns := func(nruns uint32, runs []byte) []byte {
		b := binary.BigEndian.AppendUint32(nil, 0)
		b = binary.BigEndian.AppendUint32(b, nruns)
		return append(b, runs...)
	}
	state := func(id string, idLen uint16) []byte {
		b := binary.BigEndian.AppendUint16(nil, idLen)
		return append(append(b, id...), 1, 2, 3)
	}
	for _, tc := range []struct {
		name string
		recs []craftRec
		want error
	}{
		{"unaligned page", []craftRec{{RecordPages, badPages(1, 1, rawRuns(100, 1), page)}}, ErrAddress},
		{"page beyond guest memory", []craftRec{{RecordPages, badPages(1, 1, rawRuns(guest, 1), page)}}, ErrAddress},
		{"run crossing the end", []craftRec{{RecordPages, badPages(2, 1, rawRuns(guest-PageSize, 2), bytes.Repeat(page, 2))}}, ErrAddress},
		{"address overflow", []craftRec{{RecordPages, badPages(2, 2, rawRuns(0, 1, 1<<64-PageSize, 1), bytes.Repeat(page, 2))}}, ErrAddress},
		{"batch over the declared maximum", []craftRec{{RecordPages, badPages(129, 1, rawRuns(0, 129), nil)}}, ErrLimit},
		{"runs disagree with count", []craftRec{{RecordPages, badPages(2, 1, rawRuns(0, 1), page)}}, ErrFormat},
		{"more runs than pages", []craftRec{{RecordPages, badPages(1, 5, rawRuns(0, 1), page)}}, ErrFormat},
		{"short data", []craftRec{{RecordPages, badPages(1, 1, rawRuns(0, 1), page[:100])}}, ErrFormat},
		{"bad zstd frame", []craftRec{{RecordPages, pagesRec(0, []run{{0, 1}}, []byte("not zstd"), pagesFlagZstd)}}, ErrFormat},
		{"unknown batch flag", []craftRec{{RecordPages, pagesRec(0, []run{{0, 1}}, page, 0x40)}}, ErrFormat},
		{"page of a future pass", []craftRec{{RecordPages, pagesRec(1, []run{{0, 1}}, page, 0)}}, ErrOrder},
		{"zero run beyond memory", []craftRec{{RecordZeroRuns, zeroRuns(1, rawRuns(8*PageSize, 9))}}, ErrAddress},
		{"zero runs count lies", []craftRec{{RecordZeroRuns, zeroRuns(1000, rawRuns(0, 1))}}, ErrFormat},
		{"component id too long", []craftRec{{RecordState, state(string(bytes.Repeat([]byte("a"), 200)), 200)}}, ErrLimit},
		{"component id beyond record", []craftRec{{RecordState, state("vcpu/0", 60)}}, ErrFormat},
		{"component id with a space", []craftRec{{RecordState, state("vcpu 0", 6)}}, ErrFormat},
		{"state twice", []craftRec{{RecordState, state("vcpu/0", 6)}, {RecordState, state("vcpu/0", 6)}}, ErrOrder},
		{"end of the wrong pass", []craftRec{{RecordEndPass, be32(3)}}, ErrOrder},
		{"connection end on connection 0", []craftRec{{RecordConnEnd, be32(0)}}, ErrOrder},
		{"ack in the source direction", []craftRec{{RecordAck, make([]byte, 32)}}, ErrOrder},
		{"CPU record late", []craftRec{{RecordEndPass, be32(0)}, {RecordCPU, []byte("x")}}, ErrOrder},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn := craft(t, h, testKey, tc.recs)
			mustRefuse(t, tc.name, [][]byte{conn}, guest, ReceiverOptions{}, tc.want)
		})
	}
	// The crafting helper makes streams the receiver accepts when valid.
	ok := craftValid(t, h, testKey, []craftRec{{RecordPages, pagesRec(0, []run{{PageSize, 1}}, page, 0)}, {RecordEndPass, be32(0)}}, 1, 0, 1)
	if _, mem, err := receive([][]byte{ok}, testKey, guest, ReceiverOptions{}); err != nil || mem.mem[PageSize] != 7 {
		t.Fatalf("valid crafted stream: %v", err)
	}
	// A manifest that lies about the counts is refused.
	lie := craftValid(t, h, testKey, []craftRec{{RecordPages, pagesRec(0, []run{{PageSize, 1}}, page, 0)}, {RecordEndPass, be32(0)}}, 2, 0, 1)
	mustRefuse(t, "manifest lies", [][]byte{lie}, guest, ReceiverOptions{}, ErrManifest)
}

// A stream recorded under one stream id cannot be replayed into another
// with the same key: its records fail under the other stream's keys.
func TestTamperCrossStreamReplay(t *testing.T) {
	guest := genGuest(24*PageSize, 21, false)
	a, _ := capture(t, 1, Options{StreamID: [16]byte{1}}, guest)
	b, _ := capture(t, 1, Options{StreamID: [16]byte{2}}, guest)
	ha, ra := records(t, a.conns[0])
	_, rb := records(t, b.conns[0])
	mixed := append(append([][]byte(nil), ra[:1]...), rb[1:]...)
	mustRefuse(t, "records of stream b after header of stream a", [][]byte{join(ha, mixed)}, len(guest), ReceiverOptions{}, ErrAuth)
}

// The acknowledgement is bound to the stream: a forged or wrong one is
// refused by the sender.
func TestAckRefused(t *testing.T) {
	guest := genGuest(24*PageSize, 21, false)
	var w0 bytes.Buffer
	s, _, _ := scenario(t, []io.Writer{&w0}, Options{}, guest)
	var ack bytes.Buffer
	r, err := NewReceiver([]io.Reader{bytes.NewReader(w0.Bytes())}, testKey, newMemSink(len(guest)), ReceiverOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Acknowledge(t.Context(), &ack); err == nil {
		t.Fatal("acknowledged before Run")
	}
	if _, err := r.Run(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := r.Acknowledge(t.Context(), &ack); err != nil {
		t.Fatal(err)
	}
	good := ack.Bytes()
	for pos := range good {
		bad := bytes.Clone(good)
		bad[pos] ^= 1
		if err := s.AwaitAck(t.Context(), bytes.NewReader(bad)); err == nil {
			t.Fatalf("ack with byte %d flipped accepted", pos)
		}
	}
	if err := s.AwaitAck(t.Context(), bytes.NewReader(good[:len(good)-1])); !errors.Is(err, ErrTruncated) {
		t.Fatalf("short ack: %v", err)
	}
	if err := s.AwaitAck(t.Context(), bytes.NewReader(good)); err != nil {
		t.Fatal(err)
	}
}
