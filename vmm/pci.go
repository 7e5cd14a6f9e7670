package vmm

import (
	"encoding/binary"
	"fmt"
	"sync"
)

// PCI bus 0, reached through configuration mechanism #1 (ports 0xcf8 and
// 0xcfc..0xcff). Slot 0 holds a host bridge (Linux's conf1 probe looks for
// one before it trusts the mechanism); virtio functions take slots 1 and
// up. The bus is built before the vCPUs start; slots do not change after.

const (
	pciSlots       = 32
	pciConfAddrOn  = 1 << 31
	pciMMIOBase    = mmioHoleStart // BARs are placed from here...
	pciMMIOEnd     = 0xfc000000    // ...up to here (below the IOAPIC)
	hostBridgeVID  = 0x8086
	hostBridgeDID  = 0x1237 // an i440FX-style host bridge, as QEMU's "pc"
	pciClassBridge = 0x06
)

// pciFunction is function 0 of a device on bus 0: its configuration space.
type pciFunction interface {
	ConfigRead(off uint16, data []byte)
	ConfigWrite(off uint16, data []byte)
}

// pciBus implements the configuration ports and dispatches to functions.
type pciBus struct {
	reset func(powerEvent)
	slots [pciSlots]pciFunction

	mu   sync.Mutex
	addr uint32 // CONFIG_ADDRESS latch, guarded by mu
}

func newPCIBus(reset func(powerEvent)) *pciBus {
	b := &pciBus{reset: reset}
	b.slots[0] = newHostBridge()
	return b
}

// add puts f in the first free slot and returns the slot number.
func (b *pciBus) add(f pciFunction) (int, error) {
	for i := 1; i < pciSlots; i++ {
		if b.slots[i] == nil {
			b.slots[i] = f
			return i, nil
		}
	}
	return 0, fmt.Errorf("pci: all %d slots of bus 0 are used", pciSlots-1)
}

// target decodes the latched address: the function and register an access
// to the data port at off (0..3) reaches, or nil.
func (b *pciBus) target(off uint16) (pciFunction, uint16) {
	b.mu.Lock()
	a := b.addr
	b.mu.Unlock()
	bus, slot, fn := (a>>16)&0xff, (a>>11)&0x1f, (a>>8)&0x7
	if a&pciConfAddrOn == 0 || bus != 0 || fn != 0 {
		return nil, 0
	}
	return b.slots[slot], uint16(a&0xfc) + off
}

func (b *pciBus) PortRead(off uint16, data []byte) {
	switch {
	case off == 0 && len(data) == 4:
		b.mu.Lock()
		putLE(data, b.addr)
		b.mu.Unlock()
		return
	case off >= 4:
		if f, reg := b.target(off - 4); f != nil && int(reg)+len(data) <= 256 {
			f.ConfigRead(reg, data)
			return
		}
	}
	for i := range data {
		data[i] = 0xff
	}
}

func (b *pciBus) PortWrite(off uint16, data []byte) {
	switch {
	case off == portResetCF9-portPCIAddr && len(data) == 1:
		// The PCI reset control register at 0xcf9: "reset CPU" is bit 2.
		if data[0]&0x04 != 0 {
			b.reset(powerReset)
		}
	case off == 0 && len(data) == 4:
		b.mu.Lock()
		b.addr = getLE(data)
		b.mu.Unlock()
	case off >= 4:
		if f, reg := b.target(off - 4); f != nil && int(reg)+len(data) <= 256 {
			f.ConfigWrite(reg, data)
		}
	}
}

// hostBridge is a read-only configuration space: vendor, device, class
// "host bridge", header type 0, no BARs, no capabilities.
type hostBridge struct {
	cfg [256]byte
}

func newHostBridge() *hostBridge {
	h := &hostBridge{}
	binary.LittleEndian.PutUint16(h.cfg[0x00:], hostBridgeVID)
	binary.LittleEndian.PutUint16(h.cfg[0x02:], hostBridgeDID)
	h.cfg[0x0b] = pciClassBridge // class; subclass 0 = host bridge
	return h
}

func (h *hostBridge) ConfigRead(off uint16, data []byte) {
	copy(data, h.cfg[off:])
}

func (h *hostBridge) ConfigWrite(uint16, []byte) {}
