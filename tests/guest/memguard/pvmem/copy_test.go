//go:build linux && amd64

package pvmem

import (
	"bytes"
	"testing"
)

func TestCopies(t *testing.T) {
	b, err := Alloc(3 * 4096)
	if err != nil {
		t.Skipf("alloc (mlock limit?): %v", err)
	}
	defer b.Free()
	tests := []struct{ off, n int }{{0, 0}, {0, 1}, {1, 7}, {3, 8}, {7, 9}, {4090, 20}, {5, 4096 + 13}, {3*4096 - 3, 3}}
	for _, tt := range tests {
		src := make([]byte, tt.n)
		for i := range src {
			src[i] = byte(i*7 + tt.off)
		}
		if err := b.WriteAt(src, tt.off); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, tt.n)
		if err := b.ReadAt(got, tt.off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, src) || !bytes.Equal(b.b[tt.off:tt.off+tt.n], src) {
			t.Errorf("off %d n %d: round trip differs", tt.off, tt.n)
		}
	}
	if b.WriteAt([]byte{1}, 3*4096) == nil || b.ReadAt(make([]byte, 2), 3*4096-1) == nil || b.WriteAt(nil, -1) == nil {
		t.Error("out-of-range access accepted")
	}
}
