package virtio

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
)

// PCI identity of a modern (non-transitional) virtio function (§4.1.2).
const (
	PCIVendorID     = 0x1af4
	PCIDeviceIDBase = 0x1040 // + device type
	pciRevision     = 1
	pciSubsystemID  = 0x1100
)

// BAR0 layout: one 64-bit memory BAR holding every virtio structure and the
// MSI-X table and PBA, each in its own 4 KiB page.
const (
	BARSize = 0x8000

	barCommon    = 0x0000
	barISR       = 0x1000
	barDevice    = 0x2000
	barNotify    = 0x3000
	barMSIXTable = 0x4000
	barMSIXPBA   = 0x5000
	barPage      = 0x1000

	// NotifyMultiplier is notify_off_multiplier: queue q's notification
	// register is at BAR0 + NotifyOffset(q).
	NotifyMultiplier = 4

	commonCfgLen = 0x3c // struct virtio_pci_common_cfg with notify_data, queue_reset
	maxVectors   = barPage / 16
)

// Configuration space layout.
const (
	cfgSpaceSize = 256

	cfgCommand  = 0x04
	cfgStatus   = 0x06
	cfgBAR0     = 0x10
	cfgCapPtr   = 0x34
	cfgIntLine  = 0x3c
	cfgIntPin   = 0x3d
	cmdMemory   = 1 << 1
	statusCaps  = 1 << 4
	barMem64    = 0x4 // memory, 64-bit
	barPrefetch = 0x8

	capIDVendor = 0x09
	capIDMSIX   = 0x11

	capCommon = 0x40 // struct virtio_pci_cap, 16 bytes
	capNotify = 0x50 // struct virtio_pci_notify_cap, 20 bytes
	capISR    = 0x64
	capDevice = 0x74
	capPCICfg = 0x84 // struct virtio_pci_cfg_cap, 20 bytes
	capMSIX   = 0x98 // 12 bytes

	cfgTypeCommon = 1
	cfgTypeNotify = 2
	cfgTypeISR    = 3
	cfgTypeDevice = 4
	cfgTypePCI    = 5

	msixEnable = 0x80 // in the high byte of Message Control
	msixFnMask = 0x40

	isrQueue  = 1
	isrConfig = 2
)

// MSIMessage is an MSI-X table entry's message as the guest programmed it.
type MSIMessage struct {
	Addr uint64
	Data uint32
}

// Interrupter is what the VMM implements to deliver a function's
// interrupts. Calls come from device workers and vCPU threads, with a
// transport lock held: they must not call back into the PCI function.
type Interrupter interface {
	// MSIX delivers vector with its current message; the transport has
	// already applied masking and the pending bits. A VMM on KVM uses
	// KVM_SIGNAL_MSI, or an irqfd per vector whose GSI route it updates
	// when msg differs from the last one it saw for that vector.
	MSIX(vector uint16, msg MSIMessage)
	// INTx sets the level of the function's INTA# pin (used only while
	// MSI-X is disabled).
	INTx(asserted bool)
}

// PCIOptions configure a PCI function. The zero value is usable.
type PCIOptions struct {
	// BARAddr is where the VMM placed BAR0 (BARSize aligned); the guest may
	// move it, and OnBARMove then says where.
	BARAddr uint64
	// OnBARMove, if set, is called outside the transport's locks after the
	// guest reprograms BAR0, so the VMM can move its MMIO dispatch and
	// ioeventfds.
	OnBARMove func(addr uint64)
	// Context is the parent of the device workers' contexts; nil means
	// context.Background.
	Context context.Context
	// Doorbells, if set, has one Doorbell per queue (nil entries allowed)
	// that the VMM bound to BAR0+NotifyOffset(q) with KVM_IOEVENTFD. The
	// device's workers wait on them directly (Env.Doorbells, NewKick), so
	// nothing else may read them; the VMM closes them after Close.
	Doorbells []*Doorbell
	Log       *slog.Logger
}

type queueCfg struct {
	max     uint16
	size    uint16
	enabled bool
	desc    uint64
	driver  uint64
	device  uint64
}

// PCI is a virtio-pci modern function (§4.1) wrapping a Device: PCI
// configuration space with the virtio vendor capabilities and MSI-X, and
// BAR0 holding the common configuration, notification, ISR and device
// configuration structures and the MSI-X table and PBA.
//
// The VMM routes configuration accesses for the function's bus/device/
// function to ConfigRead/ConfigWrite, MMIO in [BAR0, BAR0+BARSize) to
// BARRead/BARWrite, and, for a fast path, an ioeventfd per queue at
// BAR0+NotifyOffset(q) to Notify(q). All methods are safe for concurrent use.
type PCI struct {
	dev  Device
	mem  GuestMemory
	irq  Interrupter
	opts PCIOptions
	log  *slog.Logger
	ctx  context.Context

	// cfgMu guards cfg, the configuration space image; wmask marks its
	// guest-writable bits and never changes.
	cfgMu sync.Mutex
	cfg   [cfgSpaceSize]byte
	wmask [cfgSpaceSize]byte

	// mu guards the virtio state below and serializes activation and reset.
	// Lock order: mu, then irqMu. Workers never take mu.
	mu          sync.Mutex
	status      uint8
	devFeatSel  uint32
	drvFeatSel  uint32
	drvFeatures uint64
	queueSel    uint16
	queues      []queueCfg
	active      bool
	cancel      context.CancelFunc
	// vqs are the queues handed to the device at activation (nil where
	// not enabled), kept to read their indices when it is quiesced.
	vqs []*Queue
	// quiesced: the device is stopped for a snapshot or migration while
	// the driver still considers it running; notifications are noted in
	// pending and delivered when it starts again. resume, when set, gives
	// the indices the next activation starts its queues at.
	quiesced bool
	pending  []bool
	resume   []QueueIndices
	// stopped is closed once the quiesced device's workers are gone.
	stopped chan struct{}
	// needsReset is DEVICE_NEEDS_RESET; workers set it without mu.
	needsReset atomic.Bool
	configGen  atomic.Uint32

	// irqMu guards interrupt state: vectors, the MSI-X table, PBA and
	// control bits, ISR and the INTx level.
	irqMu        sync.Mutex
	configVector uint16
	queueVectors []uint16
	msixTable    []byte // 16 bytes per vector
	pba          []uint64
	msixEnabled  bool
	msixFnMask   bool
	isr          uint8
	intx         bool
}

// NewPCI makes a PCI function for dev over guest memory mem, delivering
// interrupts through irq.
func NewPCI(dev Device, mem GuestMemory, irq Interrupter, opts PCIOptions) (*PCI, error) {
	sizes := dev.QueueSizes()
	if len(sizes) == 0 || len(sizes) >= maxVectors {
		return nil, fmt.Errorf("virtio-pci: %d queues (want 1..%d)", len(sizes), maxVectors-1)
	}
	for i, s := range sizes {
		if s == 0 || s > MaxQueueSize || s&(s-1) != 0 {
			return nil, fmt.Errorf("virtio-pci: queue %d maximum size %d is not a power of two up to %d", i, s, MaxQueueSize)
		}
	}
	if opts.BARAddr%BARSize != 0 {
		return nil, fmt.Errorf("virtio-pci: BAR0 address %#x not aligned to %#x", opts.BARAddr, BARSize)
	}
	if opts.Doorbells != nil && len(opts.Doorbells) != len(sizes) {
		return nil, fmt.Errorf("virtio-pci: %d doorbells for %d queues", len(opts.Doorbells), len(sizes))
	}
	p := &PCI{dev: dev, mem: mem, irq: irq, opts: opts, log: opts.Log, ctx: opts.Context}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	p.log = p.log.With("virtio", dev.Type())
	if p.ctx == nil {
		p.ctx = context.Background()
	}
	nvec := len(sizes) + 1 // one per queue and one for configuration changes
	p.queues = make([]queueCfg, len(sizes))
	p.pending = make([]bool, len(sizes))
	p.queueVectors = make([]uint16, len(sizes))
	p.msixTable = make([]byte, 16*nvec)
	p.pba = make([]uint64, (nvec+63)/64)
	for i := range nvec {
		p.msixTable[16*i+12] = 1 // vector control: masked at reset
	}
	p.resetState()
	p.buildConfig(nvec)
	return p, nil
}

func classCode(t DeviceType) uint32 {
	switch t {
	case TypeBlock:
		return 0x010000 // mass storage, SCSI (as QEMU)
	case TypeNet:
		return 0x020000 // network, Ethernet
	case TypeConsole:
		return 0x078000 // communication, other
	default:
		return 0xff0000 // unclassified
	}
}

func (p *PCI) buildConfig(nvec int) {
	c, w := &p.cfg, &p.wmask
	le16 := func(off int, v uint16) { binary.LittleEndian.PutUint16(c[off:], v) }
	le32 := func(off int, v uint32) { binary.LittleEndian.PutUint32(c[off:], v) }
	le16(0x00, PCIVendorID)
	le16(0x02, PCIDeviceIDBase+uint16(p.dev.Type()))
	le16(cfgStatus, statusCaps)
	le32(0x08, classCode(p.dev.Type())<<8|pciRevision)
	le32(cfgBAR0, uint32(p.opts.BARAddr)|barMem64|barPrefetch)
	le32(cfgBAR0+4, uint32(p.opts.BARAddr>>32))
	le16(0x2c, PCIVendorID)
	le16(0x2e, pciSubsystemID)
	c[cfgCapPtr] = capCommon
	c[cfgIntPin] = 1 // INTA#

	// Writable: command (I/O, memory, bus master, INTx disable), BAR0's
	// address bits above its size (which is how sizing works), the
	// interrupt line.
	w[cfgCommand], w[cfgCommand+1] = 0x07, 0x04
	binary.LittleEndian.PutUint32(w[cfgBAR0:], ^uint32(BARSize-1))
	binary.LittleEndian.PutUint32(w[cfgBAR0+4:], 0xffffffff)
	w[cfgIntLine] = 0xff

	vcap := func(off, next int, typ uint8, length uint8, barOff, barLen uint32) {
		c[off], c[off+1], c[off+2], c[off+3] = capIDVendor, byte(next), length, typ
		c[off+4] = 0 // BAR0
		le32(off+8, barOff)
		le32(off+12, barLen)
	}
	vcap(capCommon, capNotify, cfgTypeCommon, 16, barCommon, barPage)
	vcap(capNotify, capISR, cfgTypeNotify, 20, barNotify, uint32(NotifyMultiplier*len(p.queues)))
	le32(capNotify+16, NotifyMultiplier)
	vcap(capISR, capDevice, cfgTypeISR, 16, barISR, barPage)
	vcap(capDevice, capPCICfg, cfgTypeDevice, 16, barDevice, barPage)
	vcap(capPCICfg, capMSIX, cfgTypePCI, 20, 0, 0)
	// VIRTIO_PCI_CAP_PCI_CFG: bar, offset, length and data are the driver's.
	w[capPCICfg+4] = 0xff
	for i := 8; i < 20; i++ {
		w[capPCICfg+i] = 0xff
	}

	c[capMSIX], c[capMSIX+1] = capIDMSIX, 0
	le16(capMSIX+2, uint16(nvec-1))
	le32(capMSIX+4, barMSIXTable) // BIR 0
	le32(capMSIX+8, barMSIXPBA)   // BIR 0
	w[capMSIX+3] = msixEnable | msixFnMask
}

// NumQueues is the number of virtqueues.
func (p *PCI) NumQueues() int { return len(p.queues) }

// NotifyOffset is the offset in BAR0 of queue q's notification register,
// where the VMM may bind an ioeventfd (any 2- or 4-byte write, no datamatch).
func (p *PCI) NotifyOffset(q int) uint64 { return barNotify + NotifyMultiplier*uint64(q) }

// BAR0 returns BAR0's current guest-physical address and whether memory
// decoding is enabled in the command register.
func (p *PCI) BAR0() (addr uint64, enabled bool) {
	p.cfgMu.Lock()
	defer p.cfgMu.Unlock()
	return p.bar0Locked(), p.cfg[cfgCommand]&cmdMemory != 0
}

func (p *PCI) bar0Locked() uint64 {
	lo := binary.LittleEndian.Uint32(p.cfg[cfgBAR0:]) &^ 0xf
	hi := binary.LittleEndian.Uint32(p.cfg[cfgBAR0+4:])
	return uint64(hi)<<32 | uint64(lo)
}

func overlaps(off, n, start, length int) bool { return off < start+length && start < off+n }

// ConfigRead reads PCI configuration space at off (1, 2 or 4 bytes);
// accesses past its 256 bytes read as all ones.
func (p *PCI) ConfigRead(off uint16, data []byte) {
	if int(off)+len(data) > cfgSpaceSize {
		for i := range data {
			data[i] = 0xff
		}
		return
	}
	if overlaps(int(off), len(data), capPCICfg+16, 4) {
		p.pciCfgWindow(false)
	}
	p.cfgMu.Lock()
	copy(data, p.cfg[off:])
	p.cfgMu.Unlock()
}

// ConfigWrite writes PCI configuration space at off; read-only bits keep
// their values.
func (p *PCI) ConfigWrite(off uint16, data []byte) {
	if int(off)+len(data) > cfgSpaceSize {
		return
	}
	p.cfgMu.Lock()
	oldBAR := p.bar0Locked()
	for i, b := range data {
		o := int(off) + i
		p.cfg[o] = p.cfg[o]&^p.wmask[o] | b&p.wmask[o]
	}
	newBAR := p.bar0Locked()
	ctrl := p.cfg[capMSIX+3]
	p.cfgMu.Unlock()

	if overlaps(int(off), len(data), capMSIX+2, 2) {
		p.setMSIXControl(ctrl)
	}
	if overlaps(int(off), len(data), capPCICfg+16, 4) {
		p.pciCfgWindow(true)
	}
	if newBAR != oldBAR && p.opts.OnBARMove != nil {
		p.opts.OnBARMove(newBAR)
	}
}

// pciCfgWindow carries out an access through VIRTIO_PCI_CAP_PCI_CFG
// (§4.1.4.9): the data field reads or writes length bytes at offset in the
// BAR the capability names. Anything but BAR0 and an aligned 1, 2 or 4
// byte access inside it is ignored.
func (p *PCI) pciCfgWindow(write bool) {
	p.cfgMu.Lock()
	bar := p.cfg[capPCICfg+4]
	off := uint64(binary.LittleEndian.Uint32(p.cfg[capPCICfg+8:]))
	n := binary.LittleEndian.Uint32(p.cfg[capPCICfg+12:])
	var data [4]byte
	copy(data[:], p.cfg[capPCICfg+16:])
	p.cfgMu.Unlock()
	if bar != 0 || (n != 1 && n != 2 && n != 4) || off%uint64(n) != 0 || off+uint64(n) > BARSize {
		return
	}
	if write {
		p.BARWrite(off, data[:n])
		return
	}
	p.BARRead(off, data[:n])
	p.cfgMu.Lock()
	copy(p.cfg[capPCICfg+16:capPCICfg+20], data[:])
	p.cfgMu.Unlock()
}

// BARRead reads BAR0 at off (1, 2, 4 or 8 bytes). Unimplemented registers
// read as zero.
func (p *PCI) BARRead(off uint64, data []byte) {
	clear(data)
	n := uint64(len(data))
	if n == 0 || n > 8 || off >= BARSize || n > BARSize-off {
		return
	}
	switch {
	case off < barISR:
		p.commonRead(off, data)
	case off < barDevice:
		if off == barISR {
			data[0] = p.readISR()
		}
	case off < barNotify:
		p.dev.ReadConfig(uint32(off-barDevice), data)
	case off < barMSIXTable:
		// notification registers read as zero
	case off < barMSIXPBA:
		p.msixTableRead(off-barMSIXTable, data)
	case off < barMSIXPBA+barPage:
		p.pbaRead(off-barMSIXPBA, data)
	}
}

// BARWrite writes BAR0 at off (1, 2, 4 or 8 bytes); writes to read-only or
// unimplemented registers are ignored.
func (p *PCI) BARWrite(off uint64, data []byte) {
	n := uint64(len(data))
	if n == 0 || n > 8 || off >= BARSize || n > BARSize-off {
		return
	}
	switch {
	case off < barISR:
		p.commonWrite(off, data)
	case off < barDevice:
		// ISR is read-only
	case off < barNotify:
		p.dev.WriteConfig(uint32(off-barDevice), data)
	case off < barMSIXTable:
		if q := (off - barNotify) / NotifyMultiplier; q < uint64(len(p.queues)) {
			p.Notify(int(q))
		}
	case off < barMSIXPBA:
		p.msixTableWrite(off-barMSIXTable, data)
	}
}

// Notify is the driver's notification for queue q: what a write to its
// notification register does, and what the VMM's ioeventfd handler calls.
func (p *PCI) Notify(q int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if q < 0 || q >= len(p.queues) || !p.queues[q].enabled {
		return
	}
	switch {
	case p.quiesced:
		p.pending[q] = true
	case p.active:
		p.dev.Notify(q)
	}
}

func le(data []byte) uint64 {
	var v uint64
	for i, b := range data {
		v |= uint64(b) << (8 * i)
	}
	return v
}

// Status returns device_status as the driver reads it.
func (p *PCI) Status() uint8 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.statusLocked()
}

func (p *PCI) statusLocked() uint8 {
	s := p.status
	if p.needsReset.Load() {
		s |= StatusDeviceNeedsReset
	}
	return s
}

func (p *PCI) offered() uint64 { return p.dev.Features() | transportFeatures }

// commonRead serializes struct virtio_pci_common_cfg and copies the
// requested bytes, so any access width reads consistent values.
func (p *PCI) commonRead(off uint64, data []byte) {
	if off >= commonCfgLen {
		return
	}
	var b [commonCfgLen + 8]byte
	p.mu.Lock()
	p.irqMu.Lock()
	put16 := func(o int, v uint16) { binary.LittleEndian.PutUint16(b[o:], v) }
	put32 := func(o int, v uint32) { binary.LittleEndian.PutUint32(b[o:], v) }
	put64 := func(o int, v uint64) { binary.LittleEndian.PutUint64(b[o:], v) }
	put32(0x00, p.devFeatSel)
	if p.devFeatSel < 2 {
		put32(0x04, uint32(p.offered()>>(32*p.devFeatSel)))
	}
	put32(0x08, p.drvFeatSel)
	if p.drvFeatSel < 2 {
		put32(0x0c, uint32(p.drvFeatures>>(32*p.drvFeatSel)))
	}
	put16(0x10, p.configVector)
	put16(0x12, uint16(len(p.queues)))
	b[0x14] = p.statusLocked()
	b[0x15] = uint8(p.configGen.Load())
	put16(0x16, p.queueSel)
	if qs := int(p.queueSel); qs < len(p.queues) {
		q := &p.queues[qs]
		put16(0x18, q.size)
		put16(0x1a, p.queueVectors[qs])
		if q.enabled {
			put16(0x1c, 1)
		}
		put16(0x1e, uint16(qs)) // queue_notify_off
		put64(0x20, q.desc)
		put64(0x28, q.driver)
		put64(0x30, q.device)
	}
	p.irqMu.Unlock()
	p.mu.Unlock()
	copy(data, b[off:])
}

func (p *PCI) commonWrite(off uint64, data []byte) {
	w := len(data)
	v := le(data)
	p.mu.Lock()
	defer p.mu.Unlock()
	qs := int(p.queueSel)
	var q *queueCfg
	if qs < len(p.queues) {
		q = &p.queues[qs]
	}
	// Queue setup is allowed until DRIVER_OK and until the queue is enabled.
	setup := q != nil && !q.enabled && p.status&StatusDriverOK == 0
	switch {
	case off == 0x00 && w == 4:
		p.devFeatSel = uint32(v)
	case off == 0x08 && w == 4:
		p.drvFeatSel = uint32(v)
	case off == 0x0c && w == 4:
		if p.status&StatusFeaturesOK == 0 && p.drvFeatSel < 2 {
			shift := 32 * p.drvFeatSel
			p.drvFeatures = p.drvFeatures&^(0xffffffff<<shift) | v<<shift
		}
	case off == 0x10 && w == 2:
		p.irqMu.Lock()
		p.configVector = p.checkVector(uint16(v))
		p.irqMu.Unlock()
	case off == 0x14 && w == 1:
		p.writeStatus(uint8(v))
	case off == 0x16 && w == 2:
		p.queueSel = uint16(v)
	case off == 0x18 && w == 2:
		if setup {
			q.size = uint16(v)
		}
	case off == 0x1a && w == 2:
		if q != nil {
			p.irqMu.Lock()
			p.queueVectors[qs] = p.checkVector(uint16(v))
			p.irqMu.Unlock()
		}
	case off == 0x1c && w == 2:
		if setup && v == 1 {
			p.enableQueue(qs)
		}
	case off >= 0x20 && off < 0x38 && (w == 8 && off%8 == 0 || w == 4 && off%4 == 0):
		if !setup {
			return
		}
		field := [...]*uint64{&q.desc, &q.driver, &q.device}[(off-0x20)/8]
		if w == 8 {
			*field = v
		} else if off%8 == 0 {
			*field = *field&^0xffffffff | v
		} else {
			*field = *field&0xffffffff | v<<32
		}
	default:
		p.log.Debug("virtio-pci: ignored common config write", "off", off, "len", w)
	}
}

// checkVector returns v, or NoVector when v names no table entry, which is
// how the driver learns a vector could not be assigned (§4.1.4.3). irqMu held.
func (p *PCI) checkVector(v uint16) uint16 {
	if int(v) >= len(p.msixTable)/16 {
		return NoVector
	}
	return v
}

func (p *PCI) enableQueue(qs int) {
	q := &p.queues[qs]
	cfg := QueueConfig{Size: q.size, Desc: q.desc, Driver: q.driver, Device: q.device}
	err := cfg.Validate(p.mem)
	if err == nil && q.size > q.max {
		err = fmt.Errorf("virtqueue: size %d above maximum %d", q.size, q.max)
	}
	if err != nil {
		p.brokenLocked(fmt.Errorf("enable queue %d: %w", qs, err))
		return
	}
	q.enabled = true
}

// writeStatus applies a device_status write (§2.1, §3.1.1). mu held.
func (p *PCI) writeStatus(v uint8) {
	if v == 0 {
		p.resetLocked()
		return
	}
	v &^= StatusDeviceNeedsReset // the device's bit, not the driver's
	old := p.status
	if old&^v != 0 {
		p.brokenLocked(fmt.Errorf("driver cleared status bits %#x (status %#x)", old&^v, old))
		return
	}
	added := v &^ old
	if added&StatusFeaturesOK != 0 {
		if bad := p.drvFeatures &^ p.offered(); bad != 0 || p.drvFeatures&FVersion1 == 0 {
			// Leaving FEATURES_OK clear tells the driver (§3.1.1 step 6).
			p.log.Warn("virtio-pci: feature negotiation refused", "driver", fmt.Sprintf("%#x", p.drvFeatures), "offered", fmt.Sprintf("%#x", p.offered()))
			v &^= StatusFeaturesOK
		}
	}
	if added&StatusDriverOK != 0 {
		if v&StatusFeaturesOK == 0 {
			p.brokenLocked(errors.New("DRIVER_OK without FEATURES_OK"))
			v &^= StatusDriverOK
		} else if p.quiesced {
			// Held still for a snapshot: Unquiesce starts it.
		} else if err := p.activateLocked(); err != nil {
			p.brokenLocked(err)
			v &^= StatusDriverOK
		}
	}
	if added&StatusFailed != 0 {
		p.log.Warn("virtio-pci: driver set FAILED")
	}
	p.status = v
}

func (p *PCI) activateLocked() error {
	env := &Env{
		Mem:           p.mem,
		Features:      p.drvFeatures,
		Queues:        make([]*Queue, len(p.queues)),
		Doorbells:     p.opts.Doorbells,
		Signal:        p.signalQueue,
		Fail:          p.fail,
		ConfigChanged: p.ConfigChanged,
		Log:           p.log,
	}
	for i, q := range p.queues {
		if !q.enabled {
			continue
		}
		vq, err := NewQueue(p.mem, QueueConfig{Size: q.size, Desc: q.desc, Driver: q.driver, Device: q.device}, p.drvFeatures)
		if err != nil {
			return fmt.Errorf("activate queue %d: %w", i, err)
		}
		if p.resume != nil {
			vq.setIndices(p.resume[i])
		}
		env.Queues[i] = vq
	}
	p.resume = nil
	p.vqs = env.Queues
	ctx, cancel := context.WithCancel(p.ctx)
	if err := p.dev.Activate(ctx, env); err != nil {
		cancel()
		p.dev.Reset()
		return fmt.Errorf("activate: %w", err)
	}
	p.active, p.cancel = true, cancel
	return nil
}

// resetLocked is a device reset (§2.4): the device stops, and every virtio
// register returns to its initial value. PCI-level state (configuration
// space, the MSI-X table) is untouched. mu held.
func (p *PCI) resetLocked() {
	if p.active {
		p.cancel()
		p.active, p.cancel = false, nil
	}
	p.dev.Reset()
	p.vqs, p.resume = nil, nil
	p.resetState()
}

func (p *PCI) resetState() {
	p.status, p.devFeatSel, p.drvFeatSel, p.drvFeatures, p.queueSel = 0, 0, 0, 0, 0
	for i, s := range p.dev.QueueSizes() {
		p.queues[i] = queueCfg{max: s, size: s}
	}
	p.needsReset.Store(false)
	p.irqMu.Lock()
	p.configVector = NoVector
	for i := range p.queueVectors {
		p.queueVectors[i] = NoVector
	}
	p.isr = 0
	p.updateINTxLocked()
	p.irqMu.Unlock()
}

// Close stops the device; the function stays usable (a driver can set it
// up again).
func (p *PCI) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.resetLocked()
	return nil
}

// brokenLocked reports an error found on a vCPU's configuration access.
func (p *PCI) brokenLocked(err error) {
	p.log.Warn("virtio-pci: device needs reset", "err", err)
	p.needsReset.Store(true)
	if p.status&StatusDriverOK != 0 {
		p.signalConfig()
	}
}

// fail is Env.Fail: from a worker, without mu.
func (p *PCI) fail(err error) {
	p.log.Warn("virtio: device broken, needs reset", "err", err)
	if !p.needsReset.Swap(true) {
		p.signalConfig()
	}
}

// ConfigChanged tells the driver the device configuration changed.
func (p *PCI) ConfigChanged() {
	p.configGen.Add(1)
	p.signalConfig()
}

func (p *PCI) signalQueue(q int) {
	p.irqMu.Lock()
	defer p.irqMu.Unlock()
	if q >= 0 && q < len(p.queueVectors) {
		p.raiseLocked(p.queueVectors[q], isrQueue)
	}
}

func (p *PCI) signalConfig() {
	p.irqMu.Lock()
	defer p.irqMu.Unlock()
	p.raiseLocked(p.configVector, isrConfig)
}

// raiseLocked delivers an interrupt: MSI-X vector vec when MSI-X is on
// (pending if masked), otherwise the ISR bit and INTx. irqMu held.
func (p *PCI) raiseLocked(vec uint16, isrBit uint8) {
	if !p.msixEnabled {
		p.isr |= isrBit
		p.updateINTxLocked()
		return
	}
	if vec == NoVector || int(vec) >= len(p.msixTable)/16 {
		return
	}
	if p.msixFnMask || p.msixTable[16*int(vec)+12]&1 != 0 {
		p.pba[vec/64] |= 1 << (vec % 64)
		return
	}
	p.irq.MSIX(vec, p.msgLocked(vec))
}

func (p *PCI) msgLocked(vec uint16) MSIMessage {
	e := p.msixTable[16*int(vec):]
	return MSIMessage{Addr: binary.LittleEndian.Uint64(e), Data: binary.LittleEndian.Uint32(e[8:])}
}

func (p *PCI) updateINTxLocked() {
	level := p.isr != 0 && !p.msixEnabled
	if level != p.intx {
		p.intx = level
		p.irq.INTx(level)
	}
}

// readISR returns and clears the ISR status, lowering INTx (§4.1.4.5).
func (p *PCI) readISR() uint8 {
	p.irqMu.Lock()
	defer p.irqMu.Unlock()
	v := p.isr
	p.isr = 0
	p.updateINTxLocked()
	return v
}

func (p *PCI) setMSIXControl(ctrl byte) {
	p.irqMu.Lock()
	defer p.irqMu.Unlock()
	p.msixEnabled = ctrl&msixEnable != 0
	p.msixFnMask = ctrl&msixFnMask != 0
	p.updateINTxLocked()
	p.deliverPendingLocked()
}

// deliverPendingLocked sends pending vectors that are no longer masked.
func (p *PCI) deliverPendingLocked() {
	if !p.msixEnabled || p.msixFnMask {
		return
	}
	for v := range uint16(len(p.msixTable) / 16) {
		if p.pba[v/64]&(1<<(v%64)) != 0 && p.msixTable[16*int(v)+12]&1 == 0 {
			p.pba[v/64] &^= 1 << (v % 64)
			p.irq.MSIX(v, p.msgLocked(v))
		}
	}
}

func (p *PCI) msixTableRead(off uint64, data []byte) {
	p.irqMu.Lock()
	defer p.irqMu.Unlock()
	if off < uint64(len(p.msixTable)) {
		copy(data, p.msixTable[off:])
	}
}

func (p *PCI) msixTableWrite(off uint64, data []byte) {
	p.irqMu.Lock()
	defer p.irqMu.Unlock()
	for i, b := range data {
		o := off + uint64(i)
		if o >= uint64(len(p.msixTable)) {
			break
		}
		switch o % 16 {
		case 12:
			p.msixTable[o] = b & 1 // only the mask bit is defined
		case 13, 14, 15:
		default:
			p.msixTable[o] = b
		}
	}
	p.deliverPendingLocked()
}

func (p *PCI) pbaRead(off uint64, data []byte) {
	p.irqMu.Lock()
	defer p.irqMu.Unlock()
	b := make([]byte, 8*len(p.pba))
	for i, w := range p.pba {
		binary.LittleEndian.PutUint64(b[8*i:], w)
	}
	if off < uint64(len(b)) {
		copy(data, b[off:])
	}
}
