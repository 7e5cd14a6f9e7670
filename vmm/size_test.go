package vmm

import "testing"

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want uint64
		ok   bool
	}{
		{"512M", 512 << 20, true}, {"512m", 512 << 20, true}, {"2G", 2 << 30, true},
		{"65536K", 64 << 20, true}, {"1048576", 1 << 20, true}, {"1GiB", 1 << 30, true},
		{"4MB", 4 << 20, true}, {"0", 0, true}, {"1T", 1 << 40, true},
		{"", 0, false}, {"M", 0, false}, {"-1M", 0, false}, {"1.5G", 0, false},
		{"12X", 0, false}, {"99999999999999999999", 0, false}, {"17179869184G", 0, false},
	}
	for _, tt := range tests {
		got, err := ParseSize(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
	}
	for _, v := range []uint64{512 << 20, 3 << 30, 4096, 1000} {
		back, err := ParseSize(FormatSize(v))
		if err != nil || back != v {
			t.Errorf("FormatSize(%d) = %q does not parse back", v, FormatSize(v))
		}
	}
}
