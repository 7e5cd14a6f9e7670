package vmm

import (
	"encoding/binary"
	"testing"
)

type fakeFunction struct {
	cfg    [256]byte
	writes []uint16
}

func (f *fakeFunction) ConfigRead(off uint16, data []byte) { copy(data, f.cfg[off:]) }
func (f *fakeFunction) ConfigWrite(off uint16, data []byte) {
	f.writes = append(f.writes, off)
	copy(f.cfg[off:], data)
}

func confAddr(bus, slot, fn, reg uint32) []byte {
	d := make([]byte, 4)
	putLE(d, pciConfAddrOn|bus<<16|slot<<11|fn<<8|reg)
	return d
}

func TestPCIBus(t *testing.T) {
	b := newPCIBus(func(powerEvent) {})
	dev := &fakeFunction{}
	binary.LittleEndian.PutUint32(dev.cfg[0:], 0x10421af4)
	slot, err := b.add(dev)
	if err != nil || slot != 1 {
		t.Fatalf("add: slot %d, %v", slot, err)
	}
	read := func(addr []byte, off uint16, n int) uint32 {
		b.PortWrite(0, addr)
		d := make([]byte, n)
		b.PortRead(4+off, d)
		return getLE(d)
	}
	tests := []struct {
		name string
		addr []byte
		off  uint16
		n    int
		want uint32
	}{
		{"host bridge ids", confAddr(0, 0, 0, 0), 0, 4, hostBridgeDID<<16 | hostBridgeVID},
		{"host bridge class", confAddr(0, 0, 0, 8), 3, 1, pciClassBridge},
		{"device ids", confAddr(0, 1, 0, 0), 0, 4, 0x10421af4},
		{"device id word at 0xcfe", confAddr(0, 1, 0, 0), 2, 2, 0x1042},
		{"empty slot", confAddr(0, 2, 0, 0), 0, 4, 0xffffffff},
		{"other bus", confAddr(1, 1, 0, 0), 0, 4, 0xffffffff},
		{"function 1", confAddr(0, 1, 1, 0), 0, 4, 0xffffffff},
		{"enable bit clear", []byte{0, 0x08, 0, 0}, 0, 4, 0xffffffff},
	}
	for _, tt := range tests {
		if got := read(tt.addr, tt.off, tt.n); got != tt.want {
			t.Errorf("%s: %#x, want %#x", tt.name, got, tt.want)
		}
	}
	// The address latch reads back (Linux's conf1 detection).
	b.PortWrite(0, confAddr(0, 0, 0, 0))
	d := make([]byte, 4)
	b.PortRead(0, d)
	if getLE(d) != pciConfAddrOn {
		t.Errorf("latch reads %#x", getLE(d))
	}
	// Writes reach the function at the decoded register; the host bridge
	// ignores them.
	b.PortWrite(0, confAddr(0, 1, 0, 0x10))
	b.PortWrite(4+2, []byte{0xaa, 0xbb})
	if len(dev.writes) != 1 || dev.writes[0] != 0x12 {
		t.Errorf("device saw writes at %v, want [0x12]", dev.writes)
	}
	b.PortWrite(0, confAddr(0, 0, 0, 0))
	b.PortWrite(4, []byte{0, 0, 0, 0})
	if read(confAddr(0, 0, 0, 0), 0, 2) != hostBridgeVID {
		t.Error("host bridge config changed by a write")
	}
	for i := 2; i < pciSlots; i++ {
		if _, err := b.add(&fakeFunction{}); err != nil {
			t.Fatalf("slot %d: %v", i, err)
		}
	}
	if _, err := b.add(&fakeFunction{}); err == nil {
		t.Error("a 32nd function was accepted on a 31-slot bus")
	}
}
