package snapshot

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/gvmm/gvmm/migration"
)

// testMachine is a small machine: region 0 of 3 pages at 0 (page 1 zero),
// region 1 of 9 pages at 64 KiB (a page count that is not a multiple of 8,
// pages 0, 4 and 8 zero), two components.
func testMachine(seed uint64) ([]migration.Region, []migration.Component, Meta) {
	rng := rand.New(rand.NewPCG(seed, 3))
	fill := func(pages int, zero ...int) []byte {
		b := make([]byte, pages*PageSize)
		for i := 0; i < len(b); i += 8 {
			binary.LittleEndian.PutUint64(b[i:], rng.Uint64())
		}
		for _, z := range zero {
			clear(b[z*PageSize : (z+1)*PageSize])
		}
		return b
	}
	regs := []migration.Region{{GPA: 0, Data: fill(3, 1)}, {GPA: 64 << 10, Data: fill(9, 0, 4, 8)}}
	comps := []migration.Component{
		{ID: "vcpu/0", Data: []byte("registers of vcpu 0")},
		{ID: "vcpu/1", Data: []byte("registers of vcpu 1")},
		{ID: "vm.clock", Data: nil},
	}
	meta := Meta{Created: time.Unix(1764110000, 123456789), CPU: []byte("cpuid"), Machine: []byte("memory=48K cpus=2")}
	return regs, comps, meta
}

// blankLike returns regions of regs' layout filled with garbage.
func blankLike(regs []migration.Region) []migration.Region {
	out := make([]migration.Region, len(regs))
	for i, r := range regs {
		out[i] = migration.Region{GPA: r.GPA, Data: bytes.Repeat([]byte{0xa5}, len(r.Data))}
	}
	return out
}

func encode(t testing.TB, regs []migration.Region, comps []migration.Component, meta Meta) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := Write(context.Background(), &buf, regs, comps, meta); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// resum recomputes the trailer after a deliberate edit, so that the edit is
// caught by the structural check it targets, not by the checksum.
func resum(b []byte) []byte {
	n := len(b) - trailerSize
	s := sha256.Sum256(b[:n])
	copy(b[n:], s[:])
	return b
}

func TestRoundTrip(t *testing.T) {
	regs, comps, meta := testMachine(1)
	// Regions are accepted in any order.
	file := encode(t, []migration.Region{regs[1], regs[0]}, comps, meta)
	dst := blankLike(regs)
	got, gotMeta, err := Read(context.Background(), bytes.NewReader(file), dst, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range regs {
		if !bytes.Equal(dst[i].Data, regs[i].Data) {
			t.Errorf("region %d differs", i)
		}
	}
	if len(got) != len(comps) {
		t.Fatalf("%d components, want %d", len(got), len(comps))
	}
	for i := range comps {
		if got[i].ID != comps[i].ID || !bytes.Equal(got[i].Data, comps[i].Data) {
			t.Errorf("component %d: %q %q, want %q %q", i, got[i].ID, got[i].Data, comps[i].ID, comps[i].Data)
		}
	}
	if !gotMeta.Created.Equal(meta.Created) || !bytes.Equal(gotMeta.CPU, meta.CPU) || !bytes.Equal(gotMeta.Machine, meta.Machine) {
		t.Errorf("meta %+v, want %+v", gotMeta, meta)
	}
	// Zero pages are not stored: 8 of 12 pages present.
	want := headerSize + 2*16 + (2+6+8)*2 + (2 + 8 + 8) + len(meta.CPU) + len(meta.Machine) +
		1 + 2 + 8*PageSize + 19 + 19 + trailerSize
	if len(file) != want {
		t.Errorf("file of %d bytes, want %d", len(file), want)
	}
	// Canonical: writing what was read gives the same bytes.
	if again := encode(t, dst, got, gotMeta); !bytes.Equal(again, file) {
		t.Error("re-encoding differs")
	}
	// The layout is readable before the memory.
	sr, err := NewReader(bytes.NewReader(file), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if rs := sr.Regions(); len(rs) != 2 || rs[1] != (RegionInfo{GPA: 64 << 10, Size: 9 * PageSize}) {
		t.Errorf("regions %+v", rs)
	}
}

func TestWriteRefuses(t *testing.T) {
	regs, comps, meta := testMachine(2)
	tests := []struct {
		name  string
		regs  []migration.Region
		comps []migration.Component
	}{
		{"no-regions", nil, comps},
		{"overlap", []migration.Region{regs[0], {GPA: PageSize, Data: regs[1].Data}}, comps},
		{"unaligned", []migration.Region{{GPA: 1, Data: regs[0].Data}}, comps},
		{"duplicate-id", regs, []migration.Component{{ID: "a"}, {ID: "a"}}},
		{"bad-id", regs, []migration.Component{{ID: "a b"}}},
		{"empty-id", regs, []migration.Component{{ID: ""}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := Write(context.Background(), &buf, tc.regs, tc.comps, meta); err == nil {
				t.Fatal("Write succeeded")
			}
		})
	}
}

// offsets of a test file's parts, for targeted edits.
const (
	offRegionTable = headerSize
	offCompTable   = headerSize + 2*16
)

func TestReadRefuses(t *testing.T) {
	regs, comps, meta := testMachine(3)
	file := encode(t, regs, comps, meta)
	// Where things are in the test file.
	compTableLen := 0
	for _, c := range comps {
		compTableLen += 2 + len(c.ID) + 8
	}
	offMeta := offCompTable + compTableLen
	offMem := offMeta + len(meta.CPU) + len(meta.Machine)
	offPage0 := offMem + 1              // region 0: 1 bitmap byte, then page 0
	offBitmap1 := offPage0 + 2*PageSize // region 1's bitmap (2 bytes)
	offState := len(file) - trailerSize - 38
	put64 := func(off int, v uint64) func([]byte) []byte {
		return func(b []byte) []byte { binary.BigEndian.PutUint64(b[off:], v); return b }
	}
	put32 := func(off int, v uint32) func([]byte) []byte {
		return func(b []byte) []byte { binary.BigEndian.PutUint32(b[off:], v); return b }
	}
	tests := []struct {
		name string
		edit func([]byte) []byte
		dst  func([]migration.Region) []migration.Region
		lim  Limits
		want error
	}{
		{name: "magic", edit: func(b []byte) []byte { b[0] = 'X'; return b }, want: ErrMagic},
		{name: "version", edit: func(b []byte) []byte { b[9] = 2; return b }, want: ErrVersion},
		{name: "flags", edit: func(b []byte) []byte { b[11] = 1; return b }, want: ErrFormat},
		{name: "reserved", edit: put32(28, 1), want: ErrFormat},
		{name: "no-regions", edit: put32(12, 0), want: ErrLimit},
		{name: "many-regions", edit: put32(12, 1<<31), want: ErrLimit},
		{name: "many-components", edit: put32(16, 1<<31), want: ErrLimit},
		{name: "huge-cpu-record", edit: put32(20, 1<<31), want: ErrLimit},
		{name: "huge-machine-record", edit: put32(24, 1<<31), want: ErrLimit},
		{name: "huge-state", edit: put64(40, 1<<62), want: ErrLimit},
		{name: "state-mismatch", edit: func(b []byte) []byte { return resum(put64(40, 37)(b)) }, want: ErrFormat},
		{name: "region-limit", lim: Limits{MaxRegions: 1}, want: ErrLimit},
		{name: "memory-limit", lim: Limits{MaxMemory: 11 * PageSize}, want: ErrLimit},
		{name: "component-size-limit", lim: Limits{MaxComponentSize: 18}, want: ErrLimit},
		{name: "state-limit", lim: Limits{MaxStateBytes: 37}, want: ErrLimit},
		{name: "id-limit", lim: Limits{MaxComponentID: 5}, want: ErrLimit},
		{name: "record-limit", lim: Limits{MaxRecord: 4}, want: ErrLimit},
		{name: "regions-overlap", edit: func(b []byte) []byte { return resum(put64(offRegionTable+16, PageSize)(b)) }, want: ErrFormat},
		{name: "region-unaligned", edit: func(b []byte) []byte { return resum(put64(offRegionTable+24, 9*PageSize-1)(b)) }, want: ErrFormat},
		{name: "region-wraps", edit: func(b []byte) []byte { return resum(put64(offRegionTable+16, ^uint64(0)-PageSize+1)(b)) }, want: ErrFormat},
		{name: "duplicate-id", edit: func(b []byte) []byte { b[offCompTable+2+16+5] = '0'; return resum(b) }, want: ErrFormat},
		{name: "bad-id", edit: func(b []byte) []byte { b[offCompTable+2] = ' '; return resum(b) }, want: ErrFormat},
		{name: "zero-id", edit: func(b []byte) []byte { b[offCompTable+1] = 0; return resum(b) }, want: ErrLimit},
		{name: "bitmap-padding", edit: func(b []byte) []byte { b[offBitmap1+1] |= 0x80; return resum(b) }, want: ErrFormat},
		{name: "bitmap-padding-region0", edit: func(b []byte) []byte { b[offMem] |= 0x08; return resum(b) }, want: ErrFormat},
		{name: "stored-zero-page", edit: func(b []byte) []byte { clear(b[offPage0 : offPage0+PageSize]); return resum(b) }, want: ErrFormat},
		{name: "page-flipped", edit: func(b []byte) []byte { b[offPage0+100] ^= 1; return b }, want: ErrChecksum},
		{name: "state-flipped", edit: func(b []byte) []byte { b[offState] ^= 0x40; return b }, want: ErrChecksum},
		{name: "meta-flipped", edit: func(b []byte) []byte { b[offMeta] ^= 1; return b }, want: ErrChecksum},
		{name: "trailer-flipped", edit: func(b []byte) []byte { b[len(b)-1] ^= 1; return b }, want: ErrChecksum},
		{name: "trailing-byte", edit: func(b []byte) []byte { return append(b, 0) }, want: ErrTrailing},
		{name: "trailing-snapshot", edit: func(b []byte) []byte { return append(b, b...) }, want: ErrTrailing},
		{name: "empty", edit: func(b []byte) []byte { return nil }, want: ErrTruncated},
		{name: "no-trailer", edit: func(b []byte) []byte { return b[:len(b)-trailerSize] }, want: ErrTruncated},
		{name: "half-trailer", edit: func(b []byte) []byte { return b[:len(b)-trailerSize/2] }, want: ErrTruncated},
		{name: "dst-moved", dst: func(r []migration.Region) []migration.Region { r[1].GPA += PageSize; return r }, want: ErrLayout},
		{name: "dst-smaller", dst: func(r []migration.Region) []migration.Region { r[1].Data = r[1].Data[:8*PageSize]; return r }, want: ErrLayout},
		{name: "dst-extra-region", dst: func(r []migration.Region) []migration.Region {
			return append(r, migration.Region{GPA: 1 << 30, Data: make([]byte, PageSize)})
		}, want: ErrLayout},
		{name: "dst-missing-region", dst: func(r []migration.Region) []migration.Region { return r[:1] }, want: ErrLayout},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := bytes.Clone(file)
			if tc.edit != nil {
				b = tc.edit(b)
			}
			dst := blankLike(regs)
			if tc.dst != nil {
				dst = tc.dst(dst)
			}
			_, _, err := Read(context.Background(), bytes.NewReader(b), dst, tc.lim)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Read: %v; want %v", err, tc.want)
			}
		})
	}
}

// TestReadRefusesEveryTruncationAndFlip cuts the file at every length and
// flips one bit at every offset.
func TestReadRefusesEveryTruncationAndFlip(t *testing.T) {
	regs, comps, meta := testMachine(4)
	file := encode(t, regs, comps, meta)
	dst := blankLike(regs)
	// Every offset outside page data, every 61st inside it.
	pagesFrom, pagesTo := 200, len(file)-200
	step := func(off int) int {
		if off >= pagesFrom && off < pagesTo {
			return 61
		}
		return 1
	}
	for n := 0; n < len(file); n += step(n) {
		if _, _, err := Read(context.Background(), bytes.NewReader(file[:n]), dst, Limits{}); !errors.Is(err, ErrTruncated) {
			t.Fatalf("file cut at %d of %d: %v; want ErrTruncated", n, len(file), err)
		}
	}
	for off := 0; off < len(file); off += step(off) {
		b := bytes.Clone(file)
		b[off] ^= 1 << (off % 8)
		if _, _, err := Read(context.Background(), bytes.NewReader(b), dst, Limits{}); err == nil {
			t.Fatalf("bit %d of byte %d flipped: Read succeeded", off%8, off)
		}
	}
}

func TestReadCanceled(t *testing.T) {
	regs, comps, meta := testMachine(5)
	file := encode(t, regs, comps, meta)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := Read(ctx, bytes.NewReader(file), blankLike(regs), Limits{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("Read: %v; want context.Canceled", err)
	}
}
