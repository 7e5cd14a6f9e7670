package vmm

import (
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/gvmm/gvmm/vmm/vmmtest"
)

// fakeBzImage is vmmtest's synthetic bzImage with a payload of payloadLen
// bytes, damaged by mutate.
func fakeBzImage(payloadLen int, mutate func([]byte)) []byte {
	b := vmmtest.BzImage(make([]byte, payloadLen-0x200), 32<<20)
	if mutate != nil {
		mutate(b)
	}
	return b
}

func TestParseBzImage(t *testing.T) {
	le := binary.LittleEndian
	tests := []struct {
		name    string
		data    []byte
		wantErr string
	}{
		{"valid", fakeBzImage(4096, nil), ""},
		{"setup_sects zero means four", fakeBzImage(4096, func(b []byte) { b[hdrSetupSects] = 0 }), ""},
		{"empty", nil, "too short"},
		{"short", make([]byte, 0x100), "too short"},
		{"no magic", fakeBzImage(4096, func(b []byte) { copy(b[hdrMagic:], "XXXX") }), "not a bzImage"},
		{"no boot flag", fakeBzImage(4096, func(b []byte) { b[hdrBootFlag] = 0 }), "not a bzImage"},
		{"old protocol", fakeBzImage(4096, func(b []byte) { le.PutUint16(b[hdrVersion:], 0x0204) }), "too old"},
		{"zImage", fakeBzImage(4096, func(b []byte) { b[hdrLoadflags] = 0 }), "zImage"},
		{"no 64-bit entry", fakeBzImage(4096, func(b []byte) { le.PutUint16(b[hdrXloadflags:], 0) }), "64-bit"},
		{"truncated payload", fakeBzImage(4096, nil)[:5*512+100], "truncated"},
		{"setup larger than file", fakeBzImage(4096, func(b []byte) { b[hdrSetupSects] = 200 }), "truncated"},
		{"header length past file", fakeBzImage(0x200, func(b []byte) { b[0x201] = 0xff; le.PutUint32(b[hdrSyssize:], 0) })[:0x270], "header length"},
		{"no init_size", fakeBzImage(4096, func(b []byte) { le.PutUint32(b[hdrInitSize:], 0) }), "init_size"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			img, err := parseBzImage(tt.data)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("parseBzImage: %v", err)
				}
				if len(img.payload) != 4096 || img.version != 0x020f || img.initSize != 32<<20 {
					t.Fatalf("parsed %+v", img)
				}
				return
			}
			if err == nil {
				t.Fatalf("parseBzImage accepted a bad image, want error containing %q", tt.wantErr)
			}
			if !errors.Is(err, ErrBadKernel) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %q, want ErrBadKernel containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestPlanBoot(t *testing.T) {
	img, err := parseBzImage(fakeBzImage(8<<20, nil))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		lowEnd     uint64
		initrd     uint64
		wantInitrd uint64
		wantErr    string
	}{
		{"no initrd", 512 << 20, 0, 0, ""},
		{"initrd at top", 512 << 20, 10<<20 + 5, (512<<20 - (10<<20 + 5)) &^ 0xfff, ""},
		{"capped by initrd_addr_max", 3 << 30, 1 << 20, 0x80000000 - 1<<20, ""},
		{"initrd too big for RAM", 64 << 20, 100 << 20, 0, "does not fit"},
		{"initrd overlaps kernel", 64 << 20, 40 << 20, 0, "does not fit"},
		{"kernel alone too big", 32 << 20, 0, 0, "decompress"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := planBoot(img, tt.lowEnd, tt.initrd)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p.initrdAddr != tt.wantInitrd {
				t.Fatalf("initrd at %#x, want %#x", p.initrdAddr, tt.wantInitrd)
			}
			if tt.initrd > 0 && p.initrdAddr < p.kernelEnd {
				t.Fatalf("initrd %#x overlaps kernel end %#x", p.initrdAddr, p.kernelEnd)
			}
		})
	}
}

func TestBuildZeroPage(t *testing.T) {
	img, err := parseBzImage(fakeBzImage(4096, nil))
	if err != nil {
		t.Fatal(err)
	}
	e820 := e820Map(ramLayout(4 << 30))
	zp, err := buildZeroPage(img, zeroPageInput{cmdlineLen: 12, initrdAddr: 0x1234000, initrdSize: 0x5000, e820: e820, rsdpAddr: acpiAddr})
	if err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	checks := []struct {
		name string
		got  uint64
		want uint64
	}{
		{"magic copied", uint64(le.Uint32(zp[hdrMagic:])), hdrSMagic},
		{"type_of_loader", uint64(zp[hdrTypeOfLoader]), 0xff},
		{"loadflags", uint64(zp[hdrLoadflags]), loadedHigh | canUseHeap},
		{"cmd_line_ptr", uint64(le.Uint32(zp[hdrCmdLinePtr:])), cmdlineAddr},
		{"ramdisk_image", uint64(le.Uint32(zp[hdrRamdiskImage:])), 0x1234000},
		{"ramdisk_size", uint64(le.Uint32(zp[hdrRamdiskSize:])), 0x5000},
		{"rsdp", le.Uint64(zp[bpACPIRSDPAddr:]), acpiAddr},
		{"e820 entries", uint64(zp[bpE820Entries]), uint64(len(e820))},
		{"last e820 addr", le.Uint64(zp[bpE820Table+20*(len(e820)-1):]), mmioHoleEnd},
		{"last e820 size", le.Uint64(zp[bpE820Table+20*(len(e820)-1)+8:]), 1 << 30},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %#x, want %#x", c.name, c.got, c.want)
		}
	}
	if _, err := buildZeroPage(img, zeroPageInput{cmdlineLen: 4096}); err == nil {
		t.Error("a command line longer than cmdline_size was accepted")
	}
	if _, err := buildZeroPage(img, zeroPageInput{e820: make([]e820Entry, 129)}); err == nil {
		t.Error("129 e820 entries were accepted")
	}
}

func TestE820Map(t *testing.T) {
	tests := []struct {
		mem  uint64
		want []e820Entry
	}{
		{512 << 20, []e820Entry{{0, ebdaStart, e820RAM}, {ebdaStart, highMemStart - ebdaStart, e820Reserved}, {highMemStart, 512<<20 - highMemStart, e820RAM}}},
		{4 << 30, []e820Entry{{0, ebdaStart, e820RAM}, {ebdaStart, highMemStart - ebdaStart, e820Reserved},
			{highMemStart, mmioHoleStart - highMemStart, e820RAM}, {mmioHoleEnd, 1 << 30, e820RAM}}},
	}
	for _, tt := range tests {
		got := e820Map(ramLayout(tt.mem))
		if len(got) != len(tt.want) {
			t.Fatalf("%d: got %v, want %v", tt.mem, got, tt.want)
		}
		for i := range got {
			if got[i] != tt.want[i] {
				t.Errorf("%d: entry %d = %+v, want %+v", tt.mem, i, got[i], tt.want[i])
			}
		}
	}
}
