package kvm

import (
	"encoding/json"
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
