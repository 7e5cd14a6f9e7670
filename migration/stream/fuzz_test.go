package stream

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"
)

const fuzzGuest = 64 * PageSize

// fuzzSeeds are valid (and some invalid) decoder inputs: a selector byte
// then a record body, or a whole connection stream (selector 0).
func fuzzSeeds(t testing.TB) [][]byte {
	page := bytes.Repeat([]byte{0xa5}, PageSize)
	seeds := [][]byte{
		append([]byte{byte(RecordPages)}, pagesRec(0, []run{{0, 1}}, page, 0)...),
		append([]byte{byte(RecordPages)}, pagesRec(2, []run{{PageSize, 1}, {10 * PageSize, 1}}, bytes.Repeat(page, 2), 0)...),
		append([]byte{byte(RecordZeroRuns)}, 0, 0, 0, 0, 0, 0, 0, 2, 0, 3, 8, 1),
		append([]byte{byte(RecordState)}, 0, 6, 'v', 'c', 'p', 'u', '/', '0', 1, 2, 3),
		{byte(RecordEndPass), 0, 0, 0, 1},
		append([]byte{byte(RecordManifest)}, (&manifest{passes: 1, pages: 3, conns: make([]connSummary, 2)}).marshal()...),
	}
	// A compressed batch.
	c, err := newCompressor(CompressAlways)
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	z, _ := c.compress(nil, make([]byte, 2*PageSize))
	seeds = append(seeds, append([]byte{byte(RecordPages)}, pagesRec(0, []run{{0, 2}}, z, pagesFlagZstd)...))
	// A whole small stream.
	h := testHeader(fuzzGuest)
	seeds = append(seeds, append([]byte{0}, craftValid(t, h, testKey,
		[]craftRec{{RecordZeroRuns, []byte{0, 0, 0, 0, 0, 0, 0, 1, 0, 2}}, {RecordEndPass, be32(0)}}, 0, 2, 1)...))
	return seeds
}

// FuzzDecode feeds arbitrary bytes to the record body decoders (which is
// where an attacker who holds the key, or a buggy source, reaches) and, as
// a whole connection stream, to the receiver. Nothing may panic, hang or
// allocate beyond the limits, and whatever decodes must respect them.
func FuzzDecode(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 {
			return
		}
		body := data[1:]
		switch RecordType(data[0]) {
		case 0:
			// Whole stream: header, records, manifest.
			mem := newMemSink(fuzzGuest)
			r, err := NewReceiver([]io.Reader{bytes.NewReader(body)}, testKey, mem,
				ReceiverOptions{Limits: Limits{MaxGuestMemory: fuzzGuest, MaxRecordSize: 1 << 20}})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, _ = r.Run(ctx)
			if ctx.Err() != nil {
				t.Fatal("receiver hung")
			}
		case RecordPages:
			p, err := decodePages(body, fuzzGuest, 128)
			if err != nil {
				return
			}
			if p.npages == 0 || p.npages > 128 {
				t.Fatalf("batch of %d pages decoded", p.npages)
			}
			var total uint64
			for p.runs.n > 0 {
				r, err := p.runs.next()
				if err != nil {
					t.Fatalf("runs validated once but fail on replay: %v", err)
				}
				if r.gpa%PageSize != 0 || r.gpa+r.pages*PageSize > fuzzGuest {
					t.Fatalf("run %+v escapes the guest", r)
				}
				total += r.pages
			}
			if total != uint64(p.npages) {
				t.Fatalf("runs cover %d of %d pages", total, p.npages)
			}
		case RecordZeroRuns:
			z, err := decodeZeroRuns(body, fuzzGuest)
			if err != nil {
				return
			}
			for z.runs.n > 0 {
				r, err := z.runs.next()
				if err != nil {
					t.Fatalf("zero runs validated once but fail on replay: %v", err)
				}
				if r.gpa%PageSize != 0 || r.gpa+r.pages*PageSize > fuzzGuest {
					t.Fatalf("zero run %+v escapes the guest", r)
				}
			}
		case RecordState:
			id, d, err := decodeState(body, 128)
			if err == nil && (len(id) == 0 || len(id) > 128 || len(id)+len(d)+2 != len(body)) {
				t.Fatalf("state %q with %d bytes from %d", id, len(d), len(body))
			}
		case RecordManifest:
			m, err := decodeManifest(body, 2)
			if err == nil && !bytes.Equal(m.marshal(), body) {
				t.Fatal("manifest does not re-encode to its input")
			}
		default:
			if len(body) >= headerSize {
				if h, err := parseHeader(body[:headerSize], nil); err == nil {
					if !bytes.Equal(h.marshal(), body[:headerSize]) {
						t.Fatal("header does not re-encode to its input")
					}
				}
			}
			if len(body) >= recordHeaderSize {
				_, _ = parseRecordHeader(body[:recordHeaderSize], 0, binary.BigEndian.Uint64(body[8:]), 1<<20)
			}
		}
	})
}

// TestWriteFuzzSeeds rewrites the committed seed corpus when
// GVMM_WRITE_FUZZ_SEEDS=1.
func TestWriteFuzzSeeds(t *testing.T) {
	if os.Getenv("GVMM_WRITE_FUZZ_SEEDS") != "1" {
		t.Skip("set GVMM_WRITE_FUZZ_SEEDS=1 to rewrite testdata/fuzz/FuzzDecode")
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzDecode")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for i, s := range fuzzSeeds(t) {
		content := "go test fuzz v1\n[]byte(" + quoteBytes(s) + ")\n"
		if err := os.WriteFile(filepath.Join(dir, "seed-"+string(rune('a'+i))), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func quoteBytes(b []byte) string {
	var sb bytes.Buffer
	sb.WriteByte('"')
	for _, c := range b {
		sb.WriteString(`\x`)
		sb.WriteByte("0123456789abcdef"[c>>4])
		sb.WriteByte("0123456789abcdef"[c&15])
	}
	sb.WriteByte('"')
	return sb.String()
}
