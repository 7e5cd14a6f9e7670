package vmm

import (
	"sort"
	"sync"
)

// portDevice is a device on the I/O port bus. off is the port minus the
// device's base; data is the access (1, 2 or 4 bytes), filled in on reads.
type portDevice interface {
	PortRead(off uint16, data []byte)
	PortWrite(off uint16, data []byte)
}

type portRange struct {
	base, size uint16
	dev        portDevice
}

// ioBus dispatches port I/O exits. It is built before the vCPUs start and
// read-only afterwards, so lookups take no lock.
type ioBus struct {
	ranges []portRange // sorted by base, non-overlapping
}

func (b *ioBus) add(base, size uint16, dev portDevice) {
	b.ranges = append(b.ranges, portRange{base, size, dev})
	sort.Slice(b.ranges, func(i, j int) bool { return b.ranges[i].base < b.ranges[j].base })
	for i := 1; i < len(b.ranges); i++ {
		if p := b.ranges[i-1]; uint32(p.base)+uint32(p.size) > uint32(b.ranges[i].base) {
			panic("vmm: overlapping port ranges") // a wiring bug in this package, never input
		}
	}
}

func (b *ioBus) find(port uint16) (portDevice, uint16, bool) {
	i := sort.Search(len(b.ranges), func(i int) bool {
		r := b.ranges[i]
		return uint32(r.base)+uint32(r.size) > uint32(port)
	})
	if i < len(b.ranges) && b.ranges[i].base <= port {
		return b.ranges[i].dev, port - b.ranges[i].base, true
	}
	return nil, 0, false
}

// read dispatches a read; unclaimed ports read as all ones, as on a PC.
func (b *ioBus) read(port uint16, data []byte) bool {
	if d, off, ok := b.find(port); ok {
		d.PortRead(off, data)
		return true
	}
	for i := range data {
		data[i] = 0xff
	}
	return false
}

// write dispatches a write; writes to unclaimed ports are dropped.
func (b *ioBus) write(port uint16, data []byte) bool {
	if d, off, ok := b.find(port); ok {
		d.PortWrite(off, data)
		return true
	}
	return false
}

// sink accepts and ignores writes and reads as zero (port 0x80 POST codes).
type sink struct{}

func (sink) PortRead(_ uint16, data []byte) {
	for i := range data {
		data[i] = 0
	}
}
func (sink) PortWrite(uint16, []byte) {}

// cmos is a CMOS/RTC with every register zero. The FADT tells Linux there
// is no CMOS RTC (the guest gets wall time from kvmclock); this only keeps
// stray probes from seeing an update-in-progress bit stuck at one.
type cmos struct {
	mu    sync.Mutex
	index uint8
}

func (c *cmos) PortRead(off uint16, data []byte) {
	for i := range data {
		data[i] = 0
	}
}

func (c *cmos) PortWrite(off uint16, data []byte) {
	if off == 0 && len(data) > 0 {
		c.mu.Lock()
		c.index = data[0] & 0x7f
		c.mu.Unlock()
	}
}

// powerEvent is how the guest asked the machine to end.
type powerEvent int

const (
	powerOff powerEvent = iota + 1
	powerReset
)

// powerPorts implements the ACPI sleep control/status and reset registers
// named in the FADT, the i8042 reset command (0xfe to port 0x64) and the
// PCI reset control register at 0xcf9.
type powerPorts struct {
	base   uint16
	notify func(powerEvent)
}

func (p *powerPorts) PortRead(off uint16, data []byte) {
	for i := range data {
		data[i] = 0
	}
}

func (p *powerPorts) PortWrite(off uint16, data []byte) {
	if len(data) == 0 {
		return
	}
	v := data[0]
	switch p.base + off {
	case portSleepCtl:
		if v&sleepEnableBit != 0 && (v>>2)&7 == sleepTypeS5 {
			p.notify(powerOff)
		}
	case portResetReg:
		if v == resetValue {
			p.notify(powerReset)
		}
	case portI8042Cmd:
		if v == 0xfe {
			p.notify(powerReset)
		}
	}
}

func putLE(b []byte, v uint32) {
	for i := range b {
		b[i] = byte(v >> (8 * i))
	}
}

func getLE(b []byte) uint32 {
	var v uint32
	for i := range b {
		v |= uint32(b[i]) << (8 * i)
	}
	return v
}
