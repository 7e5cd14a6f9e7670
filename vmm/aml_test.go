package vmm

import (
	"bytes"
	"testing"
)

func TestAMLEncoding(t *testing.T) {
	tests := []struct {
		name string
		got  []byte
		want []byte
	}{
		// Byte sequences as iasl compiles the same ASL.
		{"S5 package", amlName("_S5_", amlPackage(amlInteger(5), amlInteger(0), amlInteger(0), amlInteger(0))),
			[]byte{0x08, '_', 'S', '5', '_', 0x12, 0x07, 0x04, 0x0a, 0x05, 0x00, 0x00, 0x00}},
		{"EisaId PNP0501", amlEISAID("PNP0501"), []byte{0x0c, 0x41, 0xd0, 0x05, 0x01}},
		{"EisaId PNP0A03", amlEISAID("PNP0A03"), []byte{0x0c, 0x41, 0xd0, 0x0a, 0x03}},
		{"integers", append(append(amlInteger(0), amlInteger(1)...), amlInteger(0x1234)...), []byte{0x00, 0x01, 0x0b, 0x34, 0x12}},
		{"dword", amlInteger(0xfee00000), []byte{0x0c, 0x00, 0x00, 0xe0, 0xfe}},
		{"IO descriptor", resIO(0x3f8, 8), []byte{0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x01, 0x08}},
		{"IRQ 4", resIRQNoFlags(4), []byte{0x22, 0x10, 0x00}},
		{"empty device", amlDevice("COM1"), []byte{0x5b, 0x82, 0x05, 'C', 'O', 'M', '1'}},
		{"WordBusNumber 0-0", resWordBusNumber(0, 0), []byte{0x88, 0x0d, 0x00, 0x02, 0x0c, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x00}},
		{"DWordMemory", resDWordMemory(0xc0000000, 0xfbffffff), []byte{0x87, 0x17, 0x00, 0x00, 0x0c, 0x01,
			0, 0, 0, 0, 0x00, 0x00, 0x00, 0xc0, 0xff, 0xff, 0xff, 0xfb, 0, 0, 0, 0, 0x00, 0x00, 0x00, 0x3c}},
	}
	for _, tt := range tests {
		if !bytes.Equal(tt.got, tt.want) {
			t.Errorf("%s: % x, want % x", tt.name, tt.got, tt.want)
		}
	}
}

func TestAMLPkgLength(t *testing.T) {
	tests := []struct {
		n    int
		want []byte
	}{
		{0, []byte{0x01}},
		{62, []byte{0x3f}},
		{63, []byte{0x41, 0x04}},         // 65 in all: one extra byte, low nibble 1, then 65>>4
		{300, []byte{0x4e, 0x12}},        // 302 = 0x12e
		{4093, []byte{0x4f, 0xff}},       // 4095: the most one extra byte holds
		{4094, []byte{0x81, 0x00, 0x01}}, // 4097 needs two
	}
	for _, tt := range tests {
		if got := amlPkgLength(tt.n); !bytes.Equal(got, tt.want) {
			t.Errorf("PkgLength(%d) = % x, want % x", tt.n, got, tt.want)
		}
	}
	// Decode what the encoder writes for a range of sizes.
	for n := 0; n < 1<<20; n += 997 {
		b := amlPkgLength(n)
		extra := int(b[0] >> 6)
		var total int
		if extra == 0 {
			total = int(b[0] & 0x3f)
		} else {
			total = int(b[0] & 0x0f)
			for i := 0; i < extra; i++ {
				total |= int(b[1+i]) << (4 + 8*i)
			}
		}
		if len(b) != extra+1 || total != n+len(b) {
			t.Fatalf("PkgLength(%d) = % x decodes to %d", n, b, total)
		}
	}
}
