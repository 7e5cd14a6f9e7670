package virtio_test

import (
	"encoding/binary"
	"sync"
	"testing"
	"time"

	"github.com/gvmm/gvmm/virtio"
	"github.com/gvmm/gvmm/virtio/rng"
	"github.com/gvmm/gvmm/virtio/virtiotest"
)

type fakeIRQ struct {
	mu   sync.Mutex
	msix []uint16
	msgs []virtio.MSIMessage
	intx bool
}

func (f *fakeIRQ) MSIX(v uint16, m virtio.MSIMessage) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.msix = append(f.msix, v)
	f.msgs = append(f.msgs, m)
}

func (f *fakeIRQ) INTx(level bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.intx = level
}

func (f *fakeIRQ) vectors() []uint16 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]uint16(nil), f.msix...)
}

func (f *fakeIRQ) level() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.intx
}

// Common configuration offsets (struct virtio_pci_common_cfg).
const (
	ccDevFeatSel = 0x00
	ccDevFeat    = 0x04
	ccDrvFeatSel = 0x08
	ccDrvFeat    = 0x0c
	ccConfigVec  = 0x10
	ccNumQueues  = 0x12
	ccStatus     = 0x14
	ccQueueSel   = 0x16
	ccQueueSize  = 0x18
	ccQueueVec   = 0x1a
	ccQueueEn    = 0x1c
	ccQueueDesc  = 0x20
	ccQueueDrv   = 0x28
	ccQueueDev   = 0x30
	barISR       = 0x1000
	barMSIX      = 0x4000
	barPBA       = 0x5000
)

type fn struct {
	t   *testing.T
	pci *virtio.PCI
}

func (f fn) bw(off uint64, size int, v uint64) {
	b := make([]byte, 8)
	binary.LittleEndian.PutUint64(b, v)
	f.pci.BARWrite(off, b[:size])
}

func (f fn) br(off uint64, size int) uint64 {
	b := make([]byte, 8)
	f.pci.BARRead(off, b[:size])
	return binary.LittleEndian.Uint64(b)
}

func (f fn) cw(off uint16, size int, v uint32) {
	b := make([]byte, 4)
	binary.LittleEndian.PutUint32(b, v)
	f.pci.ConfigWrite(off, b[:size])
}

func (f fn) cr(off uint16, size int) uint32 {
	b := make([]byte, 4)
	f.pci.ConfigRead(off, b[:size])
	return binary.LittleEndian.Uint32(b)
}

func (f fn) status() uint8 { return uint8(f.br(ccStatus, 1)) }

func (f fn) negotiate(features uint64) {
	f.bw(ccStatus, 1, uint64(virtio.StatusAcknowledge))
	f.bw(ccStatus, 1, uint64(virtio.StatusAcknowledge|virtio.StatusDriver))
	f.bw(ccDrvFeatSel, 4, 0)
	f.bw(ccDrvFeat, 4, features&0xffffffff)
	f.bw(ccDrvFeatSel, 4, 1)
	f.bw(ccDrvFeat, 4, features>>32)
	f.bw(ccStatus, 1, uint64(virtio.StatusAcknowledge|virtio.StatusDriver|virtio.StatusFeaturesOK))
}

func (f fn) setupQueue(q uint16, d *virtiotest.Driver, vector uint16) {
	f.bw(ccQueueSel, 2, uint64(q))
	f.bw(ccQueueSize, 2, uint64(d.Size))
	f.bw(ccQueueVec, 2, uint64(vector))
	f.bw(ccQueueDesc, 8, d.Desc)
	f.bw(ccQueueDrv, 4, d.Avail&0xffffffff) // halves, as some drivers do
	f.bw(ccQueueDrv+4, 4, d.Avail>>32)
	f.bw(ccQueueDev, 8, d.Used)
	f.bw(ccQueueEn, 2, 1)
}

func newFn(t *testing.T, mem *virtiotest.Memory) (fn, *fakeIRQ, *rng.Device) {
	t.Helper()
	mem.SnapshotReads = true // these tests write rings while rng runs
	irq := &fakeIRQ{}
	dev := rng.New(nil)
	p, err := virtio.NewPCI(dev, mem, irq, virtio.PCIOptions{BARAddr: 0xe000_0000})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return fn{t, p}, irq, dev
}

func TestPCIConfigSpace(t *testing.T) {
	f, _, _ := newFn(t, virtiotest.NewMemory(memBase, memSize))
	if v, d := f.cr(0, 2), f.cr(2, 2); v != 0x1af4 || d != 0x1044 {
		t.Fatalf("ids %#x:%#x", v, d)
	}
	if rev := f.cr(8, 1); rev != 1 {
		t.Fatalf("revision %d", rev)
	}
	// BAR sizing: all ones reads back the size mask with the type bits.
	if lo := f.cr(0x10, 4); lo != 0xe000_000c {
		t.Fatalf("BAR0 %#x", lo)
	}
	f.cw(0x10, 4, 0xffffffff)
	if lo := f.cr(0x10, 4); lo != ^uint32(virtio.BARSize-1)|0xc {
		t.Fatalf("BAR0 sizing %#x", lo)
	}
	f.cw(0x10, 4, 0xd000_0000)
	f.cw(0x14, 4, 0x1)
	f.cw(0x04, 2, 0x6)
	if addr, on := f.pci.BAR0(); addr != 0x1_d000_0000 || !on {
		t.Fatalf("BAR0 = %#x %v", addr, on)
	}
	// Read-only fields stay put.
	f.cw(0, 4, 0)
	if v := f.cr(0, 2); v != 0x1af4 {
		t.Fatal("vendor id writable")
	}
	// Walk the capability list: four virtio structures, PCI cfg, MSI-X.
	types := map[uint32]bool{}
	var msix bool
	for off := f.cr(0x34, 1); off != 0; off = f.cr(uint16(off)+1, 1) {
		switch f.cr(uint16(off), 1) {
		case 0x09:
			types[f.cr(uint16(off)+3, 1)] = true
		case 0x11:
			msix = true
			if n := f.cr(uint16(off)+2, 2)&0x7ff + 1; n != 2 {
				t.Fatalf("MSI-X table size %d", n)
			}
		}
		if len(types) > 10 {
			t.Fatal("capability loop")
		}
	}
	if len(types) != 5 || !msix {
		t.Fatalf("capabilities %v msix %v", types, msix)
	}
	// Past the end: all ones.
	b := []byte{0, 0}
	f.pci.ConfigRead(255, b)
	if b[0] != 0xff {
		t.Fatal("read past config space")
	}
}

func TestPCIStatusAndFeatures(t *testing.T) {
	mem := virtiotest.NewMemory(memBase, memSize)
	f, _, _ := newFn(t, mem)
	if n := f.br(ccNumQueues, 2); n != 1 {
		t.Fatalf("num_queues %d", n)
	}
	f.bw(ccDevFeatSel, 4, 1)
	if hi := f.br(ccDevFeat, 4); hi&1 == 0 {
		t.Fatal("VERSION_1 not offered")
	}
	f.bw(ccDevFeatSel, 4, 7)
	if v := f.br(ccDevFeat, 4); v != 0 {
		t.Fatal("feature word 7 not zero")
	}

	for _, tc := range []struct {
		name     string
		features uint64
		ok       bool
	}{
		{"version1", virtio.FVersion1, true},
		{"all", virtio.FVersion1 | virtio.FEventIdx | virtio.FIndirectDesc, true},
		{"legacy", 0, false},
		{"unoffered", virtio.FVersion1 | 1<<40, false},
		{"unoffered-low", virtio.FVersion1 | 1, false},
	} {
		f.bw(ccStatus, 1, 0)
		if f.status() != 0 {
			t.Fatal("reset did not clear status")
		}
		f.negotiate(tc.features)
		if got := f.status()&virtio.StatusFeaturesOK != 0; got != tc.ok {
			t.Errorf("%s: FEATURES_OK = %v", tc.name, got)
		}
	}

	// DRIVER_OK without FEATURES_OK needs a reset.
	f.bw(ccStatus, 1, 0)
	f.bw(ccStatus, 1, uint64(virtio.StatusAcknowledge|virtio.StatusDriver|virtio.StatusDriverOK))
	if s := f.status(); s&virtio.StatusDeviceNeedsReset == 0 || s&virtio.StatusDriverOK != 0 {
		t.Fatalf("status %#x", s)
	}
	f.bw(ccStatus, 1, 0)
	if f.status() != 0 {
		t.Fatal("reset did not clear DEVICE_NEEDS_RESET")
	}
	// Clearing a bit other than by reset needs a reset.
	f.negotiate(virtio.FVersion1)
	f.bw(ccStatus, 1, uint64(virtio.StatusAcknowledge))
	if f.status()&virtio.StatusDeviceNeedsReset == 0 {
		t.Fatal("clearing status bits accepted")
	}
	// Feature writes after FEATURES_OK are ignored.
	f.bw(ccStatus, 1, 0)
	f.negotiate(virtio.FVersion1)
	f.bw(ccDrvFeatSel, 4, 0)
	f.bw(ccDrvFeat, 4, uint64(virtio.FEventIdx))
	if v := f.br(ccDrvFeat, 4); v != 0 {
		t.Fatalf("driver features changed after FEATURES_OK: %#x", v)
	}
	// Bad queue setups need a reset: not a power of two, above the maximum,
	// rings outside RAM.
	for _, bad := range []struct {
		size uint16
		desc uint64
	}{{6, memBase}, {512, memBase}, {8, memBase + memSize}} {
		f.bw(ccStatus, 1, 0)
		f.negotiate(virtio.FVersion1)
		f.bw(ccQueueSel, 2, 0)
		f.bw(ccQueueSize, 2, uint64(bad.size))
		f.bw(ccQueueDesc, 8, bad.desc)
		f.bw(ccQueueDrv, 8, memBase+0x1000)
		f.bw(ccQueueDev, 8, memBase+0x2000)
		f.bw(ccQueueEn, 2, 1)
		if f.br(ccQueueEn, 2) != 0 || f.status()&virtio.StatusDeviceNeedsReset == 0 {
			t.Errorf("bad queue %+v accepted", bad)
		}
	}
	// A vector beyond the table reads back as NO_VECTOR.
	f.bw(ccConfigVec, 2, 5)
	if v := f.br(ccConfigVec, 2); v != uint64(virtio.NoVector) {
		t.Fatalf("config vector %d", v)
	}
	f.bw(ccQueueSel, 2, 9)
	if v := f.br(ccQueueSize, 2); v != 0 {
		t.Fatal("nonexistent queue has a size")
	}
}

// TestPCIEndToEndMSIX drives virtio-rng through the transport the way
// Linux does, with MSI-X, then resets it.
func TestPCIEndToEndMSIX(t *testing.T) {
	mem := virtiotest.NewMemory(memBase, memSize)
	f, irq, _ := newFn(t, mem)
	d := virtiotest.NewDriver(mem, 16)
	buf := d.Alloc(32)
	d.AddChain(virtiotest.Buf{Addr: buf, Len: 32, Write: true})

	// Program MSI-X entry 1 and enable MSI-X.
	f.bw(barMSIX+16, 8, 0xfee0_0000)
	f.bw(barMSIX+16+8, 4, 0x4041)
	f.bw(barMSIX+16+12, 4, 0) // unmask
	f.cw(0x98+2, 2, 0x8000)

	f.negotiate(virtio.FVersion1 | virtio.FEventIdx)
	f.setupQueue(0, d, 1)
	f.bw(ccConfigVec, 2, 0)
	f.bw(ccStatus, 1, uint64(f.status()|virtio.StatusDriverOK))
	if s := f.status(); s&virtio.StatusDriverOK == 0 {
		t.Fatalf("status %#x", s)
	}
	waitUsed(t, d, 1)
	waitVector(t, irq, 1)
	if m := irq.msgs[0]; m.Addr != 0xfee0_0000 || m.Data != 0x4041 {
		t.Fatalf("message %+v", m)
	}
	// Masked vectors go pending, and fire on unmask.
	f.bw(barMSIX+16+12, 4, 1)
	d.SetUsedEvent(1) // event idx: interrupt when used idx passes 1
	d.AddChain(virtiotest.Buf{Addr: buf, Len: 32, Write: true})
	f.bw(0x3000, 2, 0) // notify queue 0
	waitUsed(t, d, 2)
	deadline := time.Now().Add(5 * time.Second)
	for f.br(barPBA, 8)&2 == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if f.br(barPBA, 8)&2 == 0 {
		t.Fatal("masked vector not pending")
	}
	f.bw(barMSIX+16+12, 4, 0)
	if len(irq.vectors()) != 2 || f.br(barPBA, 8) != 0 {
		t.Fatalf("pending vector not delivered on unmask: %v", irq.vectors())
	}
	// Reset stops the device and clears the virtio registers.
	f.bw(ccStatus, 1, 0)
	if f.status() != 0 || f.br(ccQueueEn, 2) != 0 || f.br(ccQueueVec, 2) != uint64(virtio.NoVector) {
		t.Fatal("reset left state behind")
	}
	if bad, _ := mem.Undirtied(8); len(bad) > 0 {
		t.Fatalf("undirtied writes %#x", bad)
	}
}

// TestPCIINTxAndBrokenDevice: without MSI-X, a hostile chain sets
// DEVICE_NEEDS_RESET and raises a configuration interrupt through the ISR.
func TestPCIINTxAndBrokenDevice(t *testing.T) {
	mem := virtiotest.NewMemory(memBase, memSize)
	f, irq, _ := newFn(t, mem)
	d := virtiotest.NewDriver(mem, 16)
	f.negotiate(virtio.FVersion1)
	f.setupQueue(0, d, virtio.NoVector)
	f.bw(ccStatus, 1, uint64(f.status()|virtio.StatusDriverOK))

	buf := d.Alloc(8)
	d.AddChain(virtiotest.Buf{Addr: buf, Len: 8, Write: true})
	f.pci.Notify(0)
	waitUsed(t, d, 1)
	waitFor(t, irq.level, "INTx")
	if isr := f.br(barISR, 1); isr != 1 {
		t.Fatalf("ISR %#x", isr)
	}
	if irq.level() || f.br(barISR, 1) != 0 {
		t.Fatal("ISR read did not clear and lower INTx")
	}

	d.SetDesc(d.Desc, 5, buf, 8, virtiotest.DescWrite|virtiotest.DescNext, 5)
	d.Publish(5)
	f.pci.Notify(0)
	waitFor(t, func() bool { return f.status()&virtio.StatusDeviceNeedsReset != 0 }, "DEVICE_NEEDS_RESET")
	waitFor(t, irq.level, "config interrupt")
	if isr := f.br(barISR, 1); isr&2 == 0 {
		t.Fatalf("ISR %#x lacks the config bit", isr)
	}
	f.bw(ccStatus, 1, 0)
	if f.status() != 0 {
		t.Fatal("reset did not recover")
	}
}

func TestPCIConfigWindow(t *testing.T) {
	f, _, _ := newFn(t, virtiotest.NewMemory(memBase, memSize))
	// VIRTIO_PCI_CAP_PCI_CFG at 0x84: read num_queues through it.
	f.cw(0x84+4, 1, 0)
	f.cw(0x84+8, 4, ccNumQueues)
	f.cw(0x84+12, 4, 2)
	if v := f.cr(0x84+16, 2); v != 1 {
		t.Fatalf("num_queues through the window = %d", v)
	}
	f.cw(0x84+8, 4, ccStatus)
	f.cw(0x84+12, 4, 1)
	f.cw(0x84+16, 1, uint32(virtio.StatusAcknowledge))
	if f.status() != virtio.StatusAcknowledge {
		t.Fatal("status write through the window lost")
	}
}

func waitUsed(t *testing.T, d *virtiotest.Driver, idx uint16) {
	t.Helper()
	waitFor(t, func() bool { return d.UsedIdx() == idx }, "used index")
}

func waitVector(t *testing.T, irq *fakeIRQ, n int) {
	t.Helper()
	waitFor(t, func() bool { return len(irq.vectors()) >= n }, "MSI-X")
}

func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}
