package snapshot

import (
	"bytes"
	"context"
	"encoding/binary"
	"testing"

	"github.com/gvmm/gvmm/migration"
)

// BenchmarkSnapshot writes and reads back a 64 MiB guest, half of its
// pages zero.
func BenchmarkSnapshot(b *testing.B) {
	const size = 64 << 20
	mem := make([]byte, size)
	for off := 0; off < size; off += 2 * PageSize {
		for i := off; i < off+PageSize; i += 8 {
			binary.LittleEndian.PutUint64(mem[i:], uint64(i)*0x9e3779b97f4a7c15)
		}
	}
	regs := []migration.Region{{GPA: 0, Data: mem}}
	dst := []migration.Region{{GPA: 0, Data: make([]byte, size)}}
	comps := []migration.Component{{ID: "vcpu/0", Data: make([]byte, 8<<10)}}
	ctx := context.Background()
	var buf bytes.Buffer
	b.SetBytes(size)
	b.ResetTimer()
	for range b.N {
		buf.Reset()
		if err := Write(ctx, &buf, regs, comps, Meta{}); err != nil {
			b.Fatal(err)
		}
		if _, _, err := Read(ctx, bytes.NewReader(buf.Bytes()), dst, Limits{}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(buf.Len())/(1<<20), "fileMiB")
}
