package vmm

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"reflect"
	"strings"
	"testing"
)

// TestSerialSaveRestore moves a UART with unread input, a pending THR
// interrupt and programmed registers into a new one: it reads the same
// registers, delivers the same input and raises its line again.
func TestSerialSaveRestore(t *testing.T) {
	a := newUART()
	a.outb(uartLCR, lcrDLAB)
	a.outb(uartRBR, 0x01) // DLL
	a.outb(uartLCR, 0x03)
	a.outb(uartMCR, mcrOut2|mcrDTR)
	a.outb(uartIER, ierRDI|ierTHRI)
	a.outb(uartSCR, 0x5a)
	a.outb(uartRBR, 'x') // output, flushed by save
	a.s.Input([]byte("ab"))
	st := a.s.save()
	if a.out.String() != "x" {
		t.Fatalf("save did not flush output: %q", a.out.String())
	}
	b := newUART()
	if err := b.s.restore(st); err != nil {
		t.Fatal(err)
	}
	if len(b.levels) == 0 || !b.levels[len(b.levels)-1] {
		t.Fatalf("restored UART with pending input did not raise its line: %v", b.levels)
	}
	for _, r := range []uint16{uartLCR, uartMCR, uartIER, uartSCR} {
		if x, y := a.in(r), b.in(r); x != y {
			t.Errorf("register %d: %#x before, %#x after", r, x, y)
		}
	}
	if got := string([]byte{b.in(uartRBR), b.in(uartRBR)}); got != "ab" {
		t.Fatalf("restored input %q, want ab", got)
	}
	b.outb(uartLCR, lcrDLAB)
	if got := b.in(uartRBR); got != 0x01 {
		t.Fatalf("divisor latch %#x after restore", got)
	}
}

func TestSerialRestoreRefusesBadState(t *testing.T) {
	for _, tc := range []struct {
		name string
		st   serialState
	}{
		{"input too long", serialState{In: make([]byte, serialInputMax+1)}},
		{"IER reserved bits", serialState{IER: 0xf0}},
		{"MCR reserved bits", serialState{MCR: 0xe0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := newUART().s.restore(tc.st); err == nil {
				t.Fatal("restore accepted it")
			}
		})
	}
}

func TestComponentCodec(t *testing.T) {
	in := Description{CPUs: 2, MemoryBytes: 512 << 20, Devices: []DeviceDescription{{Name: "virtio-rng"}}}
	c, err := encodeComponent("machine", in)
	if err != nil {
		t.Fatal(err)
	}
	var out Description
	if err := decodeComponent(c, &out); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(in, out) {
		t.Fatalf("round trip: %+v != %+v", out, in)
	}
	bad := []struct {
		name string
		data []byte
		want string
	}{
		{"later version", fmt.Appendf(nil, `{"v":%d,"s":{"CPUs":1}}`, stateVersion+1), fmt.Sprintf("version %d", stateVersion+1)},
		{"version 0", []byte(`{"v":0,"s":{"CPUs":1}}`), "version 0"},
		{"unknown field", []byte(`{"v":1,"s":{"CPUs":1,"Evil":1}}`), "unknown field"},
		{"unknown envelope field", []byte(`{"v":1,"s":{},"x":1}`), "trailing data"},
		{"unknown envelope field first", []byte(`{"x":1,"v":1,"s":{}}`), "unknown field"},
		{"stray brace", []byte(`{"v":2,"s":{}}}`), "trailing data"},
		{"version with a leading zero", []byte(`{"v":02,"s":{}}`), "invalid"},
		{"negative version", []byte(`{"v":-1,"s":{}}`), "version -1"},
		{"no value", []byte(`{"v":2,"s":}`), "invalid"},
		{"trailing data", []byte(`{"v":1,"s":{}} {}`), "trailing"},
		{"not JSON", []byte("\x00\x01"), "invalid"},
		{"too large", append([]byte(`{"v":1,"s":"`), bytes.Repeat([]byte("a"), maxComponentBytes)...), "at most"},
		{"wrong type", []byte(`{"v":1,"s":{"CPUs":"two"}}`), "cannot unmarshal"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			var d Description
			err := decodeComponent(StateComponent{ID: "machine", Data: tc.data}, &d)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("decode: %v, want an error with %q", err, tc.want)
			}
		})
	}
}

func TestDescriptionConfigRoundTrip(t *testing.T) {
	mac, _ := net.ParseMAC("52:54:00:12:34:56")
	cfg := Config{CPUs: 2, MemoryBytes: 256 << 20,
		Disks:   []DiskConfig{{Path: "/a.img"}, {Path: "/b.img", ReadOnly: true}},
		Nets:    []NetConfig{{TAP: "tap0", Bridge: "br0", MAC: mac}},
		Channel: "/run/ch.sock"}
	d := describe(&cfg)
	names := deviceNames(d.Devices)
	if names != "virtio-blk0, virtio-blk1, virtio-net0, virtio-console, virtio-rng" {
		t.Fatalf("device order %q", names)
	}
	back, err := d.Config()
	if err != nil {
		t.Fatal(err)
	}
	if !back.Incoming || back.CPUs != 2 || back.MemoryBytes != cfg.MemoryBytes || back.Channel != cfg.Channel ||
		!reflect.DeepEqual(back.Disks, cfg.Disks) || len(back.Nets) != 1 || back.Nets[0].MAC.String() != mac.String() ||
		back.Nets[0].TAP != "tap0" || back.Nets[0].Bridge != "br0" {
		t.Fatalf("config from description: %+v", back)
	}
	if err := describe(&back).sameShape(d); err != nil {
		t.Fatalf("same machine has another shape: %v", err)
	}
}

func TestDescriptionRefusals(t *testing.T) {
	base := Description{CPUs: 1, MemoryBytes: 128 << 20, Devices: []DeviceDescription{{Name: "virtio-blk0"}, {Name: "virtio-rng"}}}
	shape := []struct {
		name  string
		other Description
		want  string
	}{
		{"cpus", Description{CPUs: 2, MemoryBytes: base.MemoryBytes, Devices: base.Devices}, "vCPUs"},
		{"memory", Description{CPUs: 1, MemoryBytes: 64 << 20, Devices: base.Devices}, "memory"},
		{"device count", Description{CPUs: 1, MemoryBytes: base.MemoryBytes, Devices: base.Devices[1:]}, "devices"},
		{"device order", Description{CPUs: 1, MemoryBytes: base.MemoryBytes,
			Devices: []DeviceDescription{{Name: "virtio-rng"}, {Name: "virtio-blk0"}}}, "position 0"},
	}
	for _, tc := range shape {
		t.Run(tc.name, func(t *testing.T) {
			if err := base.sameShape(tc.other); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("sameShape: %v, want %q", err, tc.want)
			}
		})
	}
	configs := []struct {
		name string
		d    Description
	}{
		{"no cpus", Description{CPUs: 0, MemoryBytes: 128 << 20}},
		{"unknown device", Description{CPUs: 1, Devices: []DeviceDescription{{Name: "virtio-gpu0"}}}},
		{"disk out of order", Description{CPUs: 1, Devices: []DeviceDescription{{Name: "virtio-blk1"}}}},
		{"bad MAC", Description{CPUs: 1, Devices: []DeviceDescription{{Name: "virtio-net0", MAC: "zz"}}}},
	}
	for _, tc := range configs {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := tc.d.Config(); err == nil {
				t.Fatal("Config accepted it")
			}
		})
	}
}

func TestMigrationInfoDecode(t *testing.T) {
	ok, err := encodeComponent("migration-info", MigrationInfo{Description: Description{CPUs: 1}, TSCKHz: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if info, err := DecodeMigrationInfo(ok.Data); err != nil || info.TSCKHz != 1000 {
		t.Fatalf("decode: %+v, %v", info, err)
	}
	var many struct {
		V int                        `json:"v"`
		S struct{ CPUID []struct{} } `json:"s"`
	}
	many.V = 1
	many.S.CPUID = make([]struct{}, maxGuestCPUIDEntries+1)
	b, _ := json.Marshal(many)
	if _, err := DecodeMigrationInfo(b); err == nil {
		t.Fatal("accepted more CPUID entries than KVM takes")
	}
}

// TestDirtyRegions checks the per-region split of the VMM-side bitmap on
// a machine with RAM above the device hole: a write in each region shows
// up at its page in that region's bitmap, and nowhere else.
func TestDirtyRegions(t *testing.T) {
	m, err := NewMemory(mmioHoleStart + 8<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.WriteAt([]byte{1}, 5*pageSize); err != nil {
		t.Fatal(err)
	}
	if err := m.WriteAt([]byte{1}, mmioHoleEnd+3*pageSize); err != nil {
		t.Fatal(err)
	}
	regs := m.Regions()
	if len(regs) != 2 || regs[1].GPA != mmioHoleEnd || uint64(len(regs[1].Data)) != 8<<20 {
		t.Fatalf("regions %d", len(regs))
	}
	if regs[1].Data[3*pageSize] != 1 {
		t.Fatal("Regions does not alias guest memory")
	}
	d := m.takeDirtyRegions()
	want := [][2]int{{0, 5}, {1, 3}}
	for r, bm := range d {
		for w, word := range bm {
			for b := 0; b < 64; b++ {
				set := word&(1<<b) != 0
				page := 64*w + b
				expect := false
				for _, x := range want {
					if x[0] == r && x[1] == page {
						expect = true
					}
				}
				if set != expect {
					t.Fatalf("region %d page %d dirty=%v, want %v", r, page, set, expect)
				}
			}
		}
	}
}
