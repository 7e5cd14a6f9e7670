package vmm

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"

	"github.com/gvmm/gvmm/kvm"
)

// fill sets every field of the fixed-size values vs from a seeded source,
// so that a round trip that drops or swaps a field shows.
func fill(t testing.TB, seed uint64, vs ...any) {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 1))
	for _, v := range vs {
		b := make([]byte, binary.Size(v))
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		if _, err := binary.Decode(b, binary.LittleEndian, v); err != nil {
			t.Fatal(err)
		}
	}
}

func testVCPUState(t testing.TB, id int) VCPUState {
	st := VCPUState{ID: id, MSRs: make(kvm.MSREntries, 97), CPUID: make(kvm.CPUIDEntries, 43),
		XSave: kvm.XSave{Region: make([]byte, 2696)}}
	fill(t, uint64(id)+7, &st.TSCKHz, &st.MPState, &st.Events, &st.LAPIC, []kvm.MSREntry(st.MSRs),
		st.XSave.Region, &st.XCRs, &st.Sregs, &st.Regs, &st.DebugRegs, []kvm.CPUIDEntry(st.CPUID))
	return st
}

func withTSCOffset(st VCPUState, off uint64) VCPUState {
	st.TSCOffset, st.HasTSCOffset = off, true
	return st
}

func testVMState(t testing.TB) VMState {
	var st VMState
	fill(t, 3, &st.PICMaster, &st.PICSlave, &st.IOAPIC, &st.PIT, &st.Clock)
	return st
}

func TestBinaryStateRoundTrip(t *testing.T) {
	empty := VCPUState{ID: 3} // no MSRs, CPUID or XSAVE area
	for _, tc := range []struct {
		name string
		in   any
		out  func() any
	}{
		{"vcpu", testVCPUState(t, 1), func() any { return &VCPUState{} }},
		{"vcpu with a TSC offset", withTSCOffset(testVCPUState(t, 4), 1<<63|12345), func() any { return &VCPUState{} }},
		{"vcpu with a zero TSC offset", withTSCOffset(testVCPUState(t, 5), 0), func() any { return &VCPUState{} }},
		{"vcpu without tables", empty, func() any { return &VCPUState{} }},
		{"vcpu 255", testVCPUState(t, MaxCPUs-1), func() any { return &VCPUState{} }},
		{"vm", testVMState(t), func() any { return &VMState{} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := encodeComponent("x", tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.HasPrefix(c.Data, binMagic) {
				t.Fatalf("not the binary encoding: %q", c.Data[:min(16, len(c.Data))])
			}
			out := tc.out()
			if err := decodeComponent(c, out); err != nil {
				t.Fatal(err)
			}
			if got := reflect.ValueOf(out).Elem().Interface(); !reflect.DeepEqual(got, tc.in) {
				t.Fatalf("round trip changed the state:\n got %+v\nwant %+v", got, tc.in)
			}
		})
	}
}

// States saved by versions 1 and 2 are JSON: they must still restore.
func TestBinaryStateReadsJSON(t *testing.T) {
	for _, in := range []any{testVCPUState(t, 2), testVMState(t)} {
		s, err := json.Marshal(in)
		if err != nil {
			t.Fatal(err)
		}
		c := StateComponent{ID: "old", Data: fmt.Appendf(nil, `{"v":2,"s":%s}`, s)}
		out := reflect.New(reflect.TypeOf(in))
		if err := decodeComponent(c, out.Interface()); err != nil {
			t.Fatalf("%T: %v", in, err)
		}
		if !reflect.DeepEqual(out.Elem().Interface(), in) {
			t.Fatalf("%T from JSON differs", in)
		}
	}
}

func TestBinaryStateRefusals(t *testing.T) {
	good, err := encodeComponent("vcpu/0", testVCPUState(t, 0))
	if err != nil {
		t.Fatal(err)
	}
	hdr := len(binMagic) + 2
	// field returns the offset of the field with tag in good's body.
	field := func(tag uint16) int {
		off := hdr
		for off < len(good.Data) {
			if binary.LittleEndian.Uint16(good.Data[off:]) == tag {
				return off
			}
			off += 6 + int(binary.LittleEndian.Uint32(good.Data[off+2:]))
		}
		t.Fatalf("no field %d", tag)
		return 0
	}
	withOffset, err := encodeComponent("vcpu/0", withTSCOffset(testVCPUState(t, 0), 99))
	if err != nil {
		t.Fatal(err)
	}
	edit := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good.Data)) }
	setLen := func(tag uint16, n uint32) []byte {
		return edit(func(b []byte) []byte { binary.LittleEndian.PutUint32(b[field(tag)+2:], n); return b })
	}
	for _, tc := range []struct {
		name string
		data []byte
		into any
		want string
	}{
		{"later version", edit(func(b []byte) []byte { b[4] = stateVersion + 1; return b }), &VCPUState{}, fmt.Sprintf("version %d", stateVersion+1)},
		{"version 2 in binary", edit(func(b []byte) []byte { b[4] = 2; return b }), &VCPUState{}, "version 2"},
		{"no version", binMagic, &VCPUState{}, "truncated header"},
		{"empty body", good.Data[:hdr], &VCPUState{}, "id: truncated"},
		{"truncated", good.Data[:len(good.Data)-1], &VCPUState{}, "cpuid"},
		{"a byte after cpuid", append(bytes.Clone(good.Data), 0), &VCPUState{}, "tsc_offset: truncated"},
		{"trailing data", append(bytes.Clone(withOffset.Data), 0), &VCPUState{}, "trailing"},
		{"another field after cpuid", binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint16(bytes.Clone(good.Data), 99), 0),
			&VCPUState{}, "field 99 where tsc_offset"},
		{"short tsc offset", func() []byte {
			b := bytes.Clone(withOffset.Data[:len(withOffset.Data)-14])
			b = binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint16(b, vcpuTagTSCOffset), 7)
			return append(b, make([]byte, 7)...)
		}(), &VCPUState{}, "tsc_offset: 7 bytes"},
		{"tsc offset in a version 3 state", func() []byte {
			b := bytes.Clone(withOffset.Data)
			b[4] = 3
			return b
		}(), &VCPUState{}, "trailing"},
		{"fields swapped", edit(func(b []byte) []byte {
			binary.LittleEndian.PutUint16(b[field(vcpuTagRegs):], vcpuTagSregs)
			return b
		}), &VCPUState{}, "where regs"},
		{"id out of range", edit(func(b []byte) []byte {
			binary.LittleEndian.PutUint32(b[field(vcpuTagID)+6:], MaxCPUs)
			return b
		}), &VCPUState{}, "out of range"},
		{"short lapic", setLen(vcpuTagLAPIC, 1023), &VCPUState{}, "lapic: 1023 bytes"},
		{"length past the end", setLen(vcpuTagXSave, 1<<31), &VCPUState{}, "xsave: 2147483648 bytes, only"},
		{"msrs not whole", setLen(vcpuTagMSRs, 97*16-1), &VCPUState{}, "not a whole number"},
		{"too many msrs", edit(func(b []byte) []byte {
			at := field(vcpuTagMSRs)
			n := (maxSavedMSRs + 1) * 16
			rest := bytes.Clone(b[at+6+97*16:])
			b = binary.LittleEndian.AppendUint32(b[:at+2], uint32(n))
			return append(append(b, make([]byte, n)...), rest...)
		}), &VCPUState{}, "more than"},
		{"vm state into a vcpu", func() []byte {
			c, _ := encodeComponent("kvm/vm", testVMState(t))
			return c.Data
		}(), &VCPUState{}, "id: 520 bytes, want 4"},
		{"binary where JSON belongs", good.Data, &Description{}, "JSON belongs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := decodeComponent(StateComponent{ID: "vcpu/0", Data: tc.data}, tc.into)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("decode: %v, want an error with %q", err, tc.want)
			}
		})
	}
	if _, err := encodeComponent("vcpu/x", VCPUState{ID: -1}); err == nil {
		t.Fatal("encoded a negative vCPU id")
	}
}

func FuzzDecodeVCPUState(f *testing.F) {
	// Mostly small seeds: the engine minimises each input it finds
	// interesting, which takes long on a 10 KB one.
	st := VCPUState{ID: 1, MSRs: make(kvm.MSREntries, 2), CPUID: make(kvm.CPUIDEntries, 1),
		XSave: kvm.XSave{Region: make([]byte, 8)}}
	fill(f, 5, &st.Regs, []kvm.MSREntry(st.MSRs))
	c, err := encodeComponent("vcpu/0", st)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(c.Data)
	f.Add(c.Data[:40])
	if full, err := encodeComponent("vcpu/0", testVCPUState(f, 0)); err == nil {
		f.Add(full.Data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var st VCPUState
		if err := decodeComponent(StateComponent{ID: "vcpu/0", Data: data}, &st); err != nil {
			return
		}
		// What decodes re-encodes to a state that decodes the same.
		c, err := encodeComponent("vcpu/0", st)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		var again VCPUState
		if err := decodeComponent(c, &again); err != nil {
			t.Fatalf("decode of the re-encoding: %v", err)
		}
		if !reflect.DeepEqual(st, again) {
			t.Fatal("re-encoding changed the state")
		}
	})
}

// BenchmarkVCPUStateCodec compares the binary encoding of a vCPU (version
// 3) with the JSON of version 2, both ways; run it under nested emulation
// to see what each costs in a switchover.
func BenchmarkVCPUStateCodec(b *testing.B) {
	st := testVCPUState(b, 0)
	bin, err := encodeComponent("vcpu/0", st)
	if err != nil {
		b.Fatal(err)
	}
	s, err := json.Marshal(st)
	if err != nil {
		b.Fatal(err)
	}
	js := StateComponent{ID: "vcpu/0", Data: fmt.Appendf(nil, `{"v":2,"s":%s}`, s)}
	b.Run("encode/binary", func(b *testing.B) {
		b.SetBytes(int64(len(bin.Data)))
		for b.Loop() {
			if _, err := encodeComponent("vcpu/0", &st); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encode/json", func(b *testing.B) {
		b.SetBytes(int64(len(js.Data)))
		for b.Loop() {
			if _, err := json.Marshal(&st); err != nil {
				b.Fatal(err)
			}
		}
	})
	for _, c := range []struct {
		name string
		c    StateComponent
	}{{"decode/binary", bin}, {"decode/json", js}} {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(int64(len(c.c.Data)))
			for b.Loop() {
				var out VCPUState
				if err := decodeComponent(c.c, &out); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// A version 3 vCPU state has no TSC offset field: it decodes without one.
func TestBinaryStateVersion3(t *testing.T) {
	in := testVCPUState(t, 6)
	c, err := encodeComponent("vcpu/0", in)
	if err != nil {
		t.Fatal(err)
	}
	c.Data[len(binMagic)] = 3
	var out VCPUState
	if err := decodeComponent(c, &out); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(out, in) || out.HasTSCOffset {
		t.Fatalf("version 3 state decoded differently (TSC offset %v %d)", out.HasTSCOffset, out.TSCOffset)
	}
}
