package kvm

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"reflect"
	"testing"
)

// checkRaw checks that T's raw bytes are exactly its encoding/binary
// little-endian encoding (so no padding hides in it and the saved format
// is the documented one), and that they decode back.
func checkRaw[T Raw](t *testing.T) {
	var zero T
	t.Run(reflect.TypeOf(zero).Name(), func(t *testing.T) {
		if got, want := RawSize[T](), binary.Size(zero); got != want {
			t.Fatalf("RawSize %d, binary.Size %d: the Go struct has padding", got, want)
		}
		r := rand.New(rand.NewPCG(1, 2))
		in := make([]T, 3)
		p := make([]byte, 3*RawSize[T]())
		for i := range p {
			p[i] = byte(r.Uint32())
		}
		if _, err := binary.Decode(p, binary.LittleEndian, in); err != nil {
			t.Fatal(err)
		}
		raw := AppendRaw([]byte("x"), in...)
		enc, err := binary.Append([]byte("x"), binary.LittleEndian, in)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(raw, enc) {
			t.Fatal("raw bytes differ from encoding/binary's little-endian encoding")
		}
		out := make([]T, 3)
		if err := DecodeRaw(raw[1:], out); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(in, out) {
			t.Fatal("round trip changed the values")
		}
		var v T
		if err := DecodeRawValue(raw[1:1+RawSize[T]()], &v); err != nil || !reflect.DeepEqual(v, in[0]) {
			t.Fatalf("DecodeRawValue: %v", err)
		}
		if err := DecodeRaw(raw[2:], out); err == nil {
			t.Fatal("decoded a short buffer")
		}
		if err := DecodeRaw(raw, out); err == nil {
			t.Fatal("decoded a long buffer")
		}
	})
}

func TestRaw(t *testing.T) {
	checkRaw[MPState](t)
	checkRaw[VCPUEvents](t)
	checkRaw[LAPICState](t)
	checkRaw[XCRs](t)
	checkRaw[Sregs](t)
	checkRaw[Regs](t)
	checkRaw[DebugRegs](t)
	checkRaw[IRQChip](t)
	checkRaw[PITState2](t)
	checkRaw[ClockData](t)
	checkRaw[MSREntry](t)
	checkRaw[CPUIDEntry](t)
	if got := AppendRaw[Regs](nil); got != nil {
		t.Fatalf("AppendRaw of nothing: %v", got)
	}
}
