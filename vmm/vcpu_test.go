package vmm

import "testing"

func TestBootGDTSegments(t *testing.T) {
	gdt := bootGDT()
	code := segmentFromGDT(gdt[2], gdtSelCode)
	if code.L != 1 || code.DB != 0 || code.Type != 0xb || code.Present != 1 || code.S != 1 || code.Limit != 0xffffffff || code.Base != 0 || code.Unusable != 0 {
		t.Errorf("code segment %+v", code)
	}
	data := segmentFromGDT(gdt[3], gdtSelData)
	if data.L != 0 || data.DB != 1 || data.Type != 3 || data.Present != 1 || data.G != 1 || data.Limit != 0xffffffff {
		t.Errorf("data segment %+v", data)
	}
	tss := segmentFromGDT(gdt[4], gdtSelTSS)
	if tss.S != 0 || tss.Type != 0xb || tss.Present != 1 {
		t.Errorf("tss segment %+v", tss)
	}
	if null := segmentFromGDT(0, 0); null.Unusable != 1 {
		t.Errorf("null segment usable: %+v", null)
	}
	// A descriptor with base and limit scattered over its fields.
	e := gdtEntry(0x4093, 0x12345678, 0xabcde)
	s := segmentFromGDT(e, 8)
	if s.Base != 0x12345678 || s.Limit != 0xabcde || s.G != 0 || s.DB != 1 {
		t.Errorf("round trip %+v", s)
	}
}
