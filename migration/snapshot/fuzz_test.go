package snapshot

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/gvmm/gvmm/migration"
)

var updateSeeds = flag.Bool("update-seeds", false, "rewrite testdata/fuzz/FuzzRead from fuzzMachine")

// fuzzLimits keep a fuzzed file's allocations small.
var fuzzLimits = Limits{MaxRegions: 4, MaxMemory: 1 << 20, MaxComponents: 8, MaxComponentSize: 4096, MaxStateBytes: 16384, MaxRecord: 256}

// fuzzMachine is a machine small enough to fuzz, whose file quotes
// compactly: region 0 of 2 pages at 0 (page 1 zero), region 1 of 3 pages at
// 64 KiB (pages 0 and 2 zero).
func fuzzMachine() ([]migration.Region, []migration.Component, Meta) {
	r0 := make([]byte, 2*PageSize)
	copy(r0, bytes.Repeat([]byte("a"), PageSize))
	r1 := make([]byte, 3*PageSize)
	copy(r1[PageSize:], bytes.Repeat([]byte("page b "), PageSize/7))
	return []migration.Region{{GPA: 0, Data: r0}, {GPA: 64 << 10, Data: r1}},
		[]migration.Component{{ID: "vcpu/0", Data: []byte("regs")}, {ID: "vm.clock", Data: []byte("12345")}},
		Meta{CPU: []byte("cpuid"), Machine: []byte("cpus=1")}
}

func blankZero(regs []migration.Region) []migration.Region {
	out := blankLike(regs)
	for _, r := range out {
		clear(r.Data)
	}
	return out
}

// TestFuzzSeedReads checks that the valid seed passes fuzzLimits, so the
// fuzzer starts from a file that reaches the end of Read.
func TestFuzzSeedReads(t *testing.T) {
	regs, comps, meta := fuzzMachine()
	if _, _, err := Read(context.Background(), bytes.NewReader(encode(t, regs, comps, meta)), blankLike(regs), fuzzLimits); err != nil {
		t.Fatal(err)
	}
}

// FuzzRead feeds arbitrary files to Read with fuzzMachine's layout: it must
// never panic or allocate past the limits, and a file it accepts must be
// the canonical encoding of what it read.
func FuzzRead(f *testing.F) {
	regs, comps, meta := fuzzMachine()
	f.Add(encode(f, regs, comps, meta))
	f.Fuzz(func(t *testing.T, file []byte) {
		dst := blankLike(regs)
		got, m, err := Read(context.Background(), bytes.NewReader(file), dst, fuzzLimits)
		if err != nil {
			return
		}
		var buf bytes.Buffer
		if err := Write(context.Background(), &buf, dst, got, m); err != nil {
			t.Fatalf("accepted file does not write back: %v", err)
		}
		if !bytes.Equal(buf.Bytes(), file) {
			t.Fatalf("accepted a non-canonical file of %d bytes (re-encodes to %d)", len(file), buf.Len())
		}
	})
}

// TestWriteSeeds rewrites the committed seed corpus with -update-seeds: a
// valid file, a truncated one, one with a flipped page bit and one with
// trailing bytes.
func TestWriteSeeds(t *testing.T) {
	if !*updateSeeds {
		t.Skip("run with -update-seeds to rewrite testdata/fuzz/FuzzRead")
	}
	regs, comps, meta := fuzzMachine()
	valid := encode(t, regs, comps, meta)
	flipped := bytes.Clone(valid)
	flipped[len(flipped)/2] ^= 1
	seeds := map[string][]byte{
		"valid":         valid,
		"truncated":     valid[:len(valid)-100],
		"flipped":       flipped,
		"trailing":      append(bytes.Clone(valid), "junk"...),
		"empty-machine": encode(t, blankZero(regs), nil, Meta{}),
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzRead")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, b := range seeds {
		if err := os.WriteFile(filepath.Join(dir, name), fmt.Appendf(nil, "go test fuzz v1\n[]byte(%q)\n", b), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
