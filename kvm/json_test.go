package kvm

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
)

// LAPICState and IRQChip travel as base64 and still read the arrays of
// numbers that states saved before were written with.
func TestByteArrayJSON(t *testing.T) {
	var l LAPICState
	for i := range l.Regs {
		l.Regs[i] = byte(i * 7)
	}
	c := IRQChip{ChipID: 2, Chip: [512]byte{1, 2, 3, 255}}
	c.Chip[511] = 9

	b, err := json.Marshal(l)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(b), `{"Regs":"`) {
		t.Fatalf("LAPIC state encodes as %.40s..., want a base64 string", b)
	}
	var l2 LAPICState
	if err := json.Unmarshal(b, &l2); err != nil || l2 != l {
		t.Fatalf("LAPIC round trip: %v, equal %v", err, l2 == l)
	}
	b, err = json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	var c2 IRQChip
	if err := json.Unmarshal(b, &c2); err != nil || c2 != c {
		t.Fatalf("irqchip round trip: %v, equal %v", err, c2 == c)
	}

	// The old form: what encoding/json writes for the plain structs.
	type plainLAPIC struct{ Regs [1024]byte }
	type plainChip struct {
		ChipID, Pad uint32
		Chip        [512]byte
	}
	old, _ := json.Marshal(plainLAPIC{l.Regs})
	if err := json.Unmarshal(old, &l2); err != nil || l2 != l {
		t.Fatalf("old LAPIC form: %v, equal %v", err, l2 == l)
	}
	old, _ = json.Marshal(plainChip{c.ChipID, c.Pad, c.Chip})
	if err := json.Unmarshal(old, &c2); err != nil || c2 != c {
		t.Fatalf("old irqchip form: %v, equal %v", err, c2 == c)
	}

	for _, tc := range []struct {
		name, in string
		v        any
	}{
		{"short base64", `{"Regs":"AAEC"}`, &LAPICState{}},
		{"short array", `{"Regs":[1,2,3]}`, &LAPICState{}},
		{"missing regs", `{}`, &LAPICState{}},
		{"null regs", `{"Regs":null}`, &LAPICState{}},
		{"unknown field", `{"Regs":"AAEC","Evil":1}`, &LAPICState{}},
		{"number out of range", `{"Regs":[256]}`, &LAPICState{}},
		{"chip too long", `{"ChipID":0,"Pad":0,"Chip":"` + strings.Repeat("A", 688) + `"}`, &IRQChip{}},
		{"chip id not a number", `{"ChipID":"x","Pad":0,"Chip":""}`, &IRQChip{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := json.Unmarshal([]byte(tc.in), tc.v); err == nil {
				t.Fatalf("%s decoded", tc.in)
			}
		})
	}
}

// CPUID and MSR entries travel as base64 of their kernel layout, read the
// array form of states saved before, and refuse bad lengths and counts.
func TestEntriesJSON(t *testing.T) {
	cpuid := CPUIDEntries{{Function: 1, Index: 2, Flags: 3, EAX: 4, EBX: 5, ECX: 6, EDX: 7}, {Function: 0x8000_0001, EDX: 1 << 31}}
	msrs := MSREntries{{Index: 0x10, Data: 1 << 40}, {Index: 0xc000_0080, Data: 0xd01}}
	b, err := json.Marshal(cpuid)
	if err != nil || b[0] != '"' {
		t.Fatalf("cpuid encodes as %.30s (%v), want a base64 string", b, err)
	}
	var c2 CPUIDEntries
	if err := json.Unmarshal(b, &c2); err != nil || !slices.Equal(c2, cpuid) {
		t.Fatalf("cpuid round trip: %v, %v", err, c2)
	}
	b, _ = json.Marshal(msrs)
	var m2 MSREntries
	if err := json.Unmarshal(b, &m2); err != nil || !slices.Equal(m2, msrs) {
		t.Fatalf("msr round trip: %v, %v", err, m2)
	}
	// The old form: arrays of objects.
	old, _ := json.Marshal([]CPUIDEntry(cpuid))
	if err := json.Unmarshal(old, &c2); err != nil || !slices.Equal(c2, cpuid) {
		t.Fatalf("old cpuid form: %v, %v", err, c2)
	}
	old, _ = json.Marshal([]MSREntry(msrs))
	if err := json.Unmarshal(old, &m2); err != nil || !slices.Equal(m2, msrs) {
		t.Fatalf("old msr form: %v, %v", err, m2)
	}
	var none MSREntries
	if b, _ := json.Marshal(none); string(b) != "null" {
		t.Fatalf("nil entries encode as %s", b)
	}
	for _, tc := range []struct{ name, in string }{
		{"partial entry", `"AAECAwQ="`},
		{"unknown field in old form", `[{"Index":1,"Data":2,"Evil":3}]`},
		{"not base64", `"!!"`},
		{"a number", `7`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var m MSREntries
			if err := json.Unmarshal([]byte(tc.in), &m); err == nil {
				t.Fatalf("%s decoded as %v", tc.in, m)
			}
		})
	}
	big := make([]byte, (maxMSRIndices+1)*sizeofMSREntry)
	b, _ = json.Marshal(big)
	if err := json.Unmarshal(b, &m2); err == nil {
		t.Fatal("more MSR entries than KVM can list decoded")
	}
}
