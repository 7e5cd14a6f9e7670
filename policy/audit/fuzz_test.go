package audit

import (
	"bytes"
	"testing"
)

// FuzzVerify: no input panics, and an accepted log re-verifies to the same
// head.
func FuzzVerify(f *testing.F) {
	var buf bytes.Buffer
	l := New(&buf, Head{}, nil)
	for range 3 {
		if _, err := l.Append(Event{Kind: "migrate-out"}); err != nil {
			f.Fatal(err)
		}
	}
	f.Add(buf.Bytes())
	f.Add([]byte("{}\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := Verify(bytes.NewReader(b))
		if err != nil {
			return
		}
		if h2, err := Verify(bytes.NewReader(b)); err != nil || h2 != h {
			t.Fatalf("not deterministic: %v %v", h, h2)
		}
	})
}
