package virtio

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
)

// Quiescing and state.
//
// A snapshot or a migration stops a function's device without the driver
// noticing: Quiesce stops the device's workers (Device.Reset, which waits
// until they no longer touch guest memory) but keeps every transport
// register, and keeps the queues' indices. A chain a worker had taken but
// not completed is given back (the queue resumes at it), so a disk write
// or a packet cut short is done again rather than lost: every gvmm device
// completes each queue's chains in the order it takes them. Unquiesce, or
// RestoreState on another host, activates the device again at those
// indices and sends each queue's interrupt once, which covers an interrupt
// the stopped worker did not get to send (drivers treat a spurious one as
// "nothing new").

// ErrNotQuiesced is returned by SaveState on a function whose device may
// still be working.
var ErrNotQuiesced = errors.New("virtio-pci: device is not quiesced")

// Quiesce stops the device and waits until it no longer touches guest
// memory; notifications from then on are noted and acted on by Unquiesce.
// A device the driver has not started yet is held too: it starts only at
// Unquiesce. Quiescing a quiesced function waits for the first Quiesce to
// finish. If ctx ends first (a device stuck in a host system call), the
// function stays quiesced, the error says so, and the device finishes
// stopping in the background.
func (p *PCI) Quiesce(ctx context.Context) error {
	p.mu.Lock()
	if !p.quiesced {
		p.quiesced = true
		p.stopped = make(chan struct{})
		if !p.active {
			close(p.stopped)
		} else {
			cancel, vqs := p.cancel, p.vqs
			p.active, p.cancel = false, nil
			// Reset runs without mu: notifications (from ioeventfd
			// threads) only take mu to be noted meanwhile.
			go func(stopped chan struct{}) {
				cancel()
				p.dev.Reset()
				p.mu.Lock()
				p.resume = make([]QueueIndices, len(p.queues))
				for i, vq := range vqs {
					if vq != nil {
						p.resume[i] = vq.indices()
					}
				}
				p.mu.Unlock()
				close(stopped)
			}(p.stopped)
		}
	}
	stopped := p.stopped
	p.mu.Unlock()
	select {
	case <-stopped:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("quiesce: device still busy: %w", ctx.Err())
	}
}

// Unquiesce starts the device again where Quiesce stopped it, once its
// workers are gone.
func (p *PCI) Unquiesce() {
	p.mu.Lock()
	if !p.quiesced {
		p.mu.Unlock()
		return
	}
	stopped := p.stopped
	p.mu.Unlock()
	<-stopped
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.quiesced || p.active {
		return
	}
	p.quiesced = false
	if p.status&StatusDriverOK != 0 && !p.needsReset.Load() {
		p.restartLocked()
	}
}

// stoppedLocked reports whether the device is not running: never started,
// or quiesced with its workers gone. mu held.
func (p *PCI) stoppedLocked() bool {
	if p.active {
		return false
	}
	if !p.quiesced {
		return true
	}
	select {
	case <-p.stopped:
		return true
	default:
		return false
	}
}

// restartLocked activates the device at p.resume, signals every enabled
// queue once and forwards the notifications that arrived meanwhile. mu held.
func (p *PCI) restartLocked() {
	if err := p.activateLocked(); err != nil {
		p.brokenLocked(err)
		return
	}
	for q := range p.queues {
		if p.queues[q].enabled {
			p.signalQueue(q)
			p.dev.Notify(q)
		}
		p.pending[q] = false
	}
}

// PCIState is a function's state, plain data: what makes an identical
// function on another host, given the same device.
type PCIState struct {
	DeviceType DeviceType
	Offered    uint64
	// Config is the writable part of PCI configuration space (the rest
	// is rebuilt by NewPCI and must match), cfgSpaceSize bytes. A slice,
	// so that JSON carries it as base64; states written when it was an
	// array (of numbers) decode into it all the same.
	Config []byte
	// Device configuration space as the driver reads it (MAC, capacity,
	// ...): the destination's device must present the same.
	DeviceConfig []byte

	Status       uint8
	NeedsReset   bool
	DevFeatSel   uint32
	DrvFeatSel   uint32
	DrvFeatures  uint64
	QueueSel     uint16
	ConfigGen    uint32
	ConfigVector uint16
	Queues       []PCIQueueState
	MSIXTable    []byte
	PBA          []uint64
	ISR          uint8
}

// PCIQueueState is one queue's transport registers and device indices.
type PCIQueueState struct {
	Size    uint16
	Enabled bool
	Desc    uint64
	Driver  uint64
	Device  uint64
	Vector  uint16
	QueueIndices
}

// deviceConfigLen is how much device configuration a state carries; every
// gvmm device's configuration is shorter.
const deviceConfigLen = 256

// knownStatus are the device_status bits a state may hold.
const knownStatus = StatusAcknowledge | StatusDriver | StatusDriverOK | StatusFeaturesOK | StatusFailed

// SaveState returns the function's state. The device must be quiesced, or
// not running (never set up, reset, or broken).
func (p *PCI) SaveState() (PCIState, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.stoppedLocked() {
		return PCIState{}, ErrNotQuiesced
	}
	st := PCIState{
		DeviceType:  p.dev.Type(),
		Offered:     p.offered(),
		Status:      p.status,
		NeedsReset:  p.needsReset.Load(),
		DevFeatSel:  p.devFeatSel,
		DrvFeatSel:  p.drvFeatSel,
		DrvFeatures: p.drvFeatures,
		QueueSel:    p.queueSel,
		ConfigGen:   p.configGen.Load(),
	}
	st.Config = make([]byte, cfgSpaceSize)
	st.DeviceConfig = make([]byte, deviceConfigLen)
	p.dev.ReadConfig(0, st.DeviceConfig)
	p.cfgMu.Lock()
	for i := range p.cfg {
		st.Config[i] = p.cfg[i] & p.wmask[i]
	}
	p.cfgMu.Unlock()
	p.irqMu.Lock()
	st.ConfigVector = p.configVector
	st.MSIXTable = append([]byte(nil), p.msixTable...)
	st.PBA = append([]uint64(nil), p.pba...)
	st.ISR = p.isr
	for i, q := range p.queues {
		qs := PCIQueueState{Size: q.size, Enabled: q.enabled, Desc: q.desc, Driver: q.driver, Device: q.device, Vector: p.queueVectors[i]}
		if p.resume != nil {
			qs.QueueIndices = p.resume[i]
		}
		st.Queues = append(st.Queues, qs)
	}
	p.irqMu.Unlock()
	return st, nil
}

// RestoreState gives a function made by NewPCI (whose device has never
// been activated) the state st, saved from a function of the same device
// on another host or earlier. st is checked as hostile input first; on an
// error the function is left as NewPCI made it. A device the driver had
// running starts at once, at the saved queue indices.
func (p *PCI) RestoreState(st PCIState) error {
	if err := p.checkState(&st); err != nil {
		return fmt.Errorf("virtio-pci: restore: %w", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.active || p.quiesced || p.status != 0 {
		return errors.New("virtio-pci: restore: the function is already in use")
	}
	p.cfgMu.Lock()
	for i := range p.cfg {
		p.cfg[i] = p.cfg[i]&^p.wmask[i] | st.Config[i]&p.wmask[i]
	}
	ctrl := p.cfg[capMSIX+3]
	p.cfgMu.Unlock()

	p.devFeatSel, p.drvFeatSel, p.drvFeatures, p.queueSel = st.DevFeatSel, st.DrvFeatSel, st.DrvFeatures, st.QueueSel
	p.configGen.Store(st.ConfigGen)
	p.needsReset.Store(st.NeedsReset)
	p.irqMu.Lock()
	p.configVector = st.ConfigVector
	copy(p.msixTable, st.MSIXTable)
	copy(p.pba, st.PBA)
	p.isr = st.ISR
	p.msixEnabled = ctrl&msixEnable != 0
	p.msixFnMask = ctrl&msixFnMask != 0
	p.resume = make([]QueueIndices, len(p.queues))
	for i, q := range st.Queues {
		p.queues[i].size, p.queues[i].enabled = q.Size, q.Enabled
		p.queues[i].desc, p.queues[i].driver, p.queues[i].device = q.Desc, q.Driver, q.Device
		p.queueVectors[i] = q.Vector
		p.resume[i] = q.QueueIndices
	}
	p.updateINTxLocked()
	p.irqMu.Unlock()
	p.status = st.Status
	if st.Status&StatusDriverOK != 0 && !st.NeedsReset {
		p.restartLocked()
	}
	return nil
}

// checkState refuses a state this function cannot take: another device or
// configuration, impossible registers, queues outside guest memory or
// whose used index disagrees with guest memory.
func (p *PCI) checkState(st *PCIState) error {
	if st.DeviceType != p.dev.Type() {
		return fmt.Errorf("state is of device type %d, this device is %d", st.DeviceType, p.dev.Type())
	}
	if st.Offered != p.offered() {
		return fmt.Errorf("saved device offered features %#x, this one %#x", st.Offered, p.offered())
	}
	if len(st.Config) != cfgSpaceSize {
		return fmt.Errorf("configuration space of %d bytes, want %d", len(st.Config), cfgSpaceSize)
	}
	if st.DrvFeatures&^p.offered() != 0 {
		return fmt.Errorf("negotiated features %#x beyond those offered %#x", st.DrvFeatures, p.offered())
	}
	cur := make([]byte, deviceConfigLen)
	p.dev.ReadConfig(0, cur)
	if len(st.DeviceConfig) != deviceConfigLen || string(st.DeviceConfig) != string(cur) {
		return errors.New("the device's configuration differs (another disk size, MAC address or device setup)")
	}
	if st.Status&^knownStatus != 0 {
		return fmt.Errorf("unknown status bits %#x", st.Status)
	}
	if st.Status&StatusDriverOK != 0 && st.Status&StatusFeaturesOK == 0 {
		return errors.New("DRIVER_OK without FEATURES_OK")
	}
	nvec := len(p.msixTable) / 16
	if len(st.MSIXTable) != len(p.msixTable) || len(st.PBA) != len(p.pba) {
		return fmt.Errorf("MSI-X table of %d bytes and PBA of %d words, want %d and %d",
			len(st.MSIXTable), len(st.PBA), len(p.msixTable), len(p.pba))
	}
	for v := 0; v < nvec; v++ {
		if st.MSIXTable[16*v+12]&^1 != 0 || st.MSIXTable[16*v+13] != 0 || st.MSIXTable[16*v+14] != 0 || st.MSIXTable[16*v+15] != 0 {
			return fmt.Errorf("MSI-X vector %d control has reserved bits", v)
		}
	}
	if rem := nvec % 64; rem != 0 && st.PBA[len(st.PBA)-1]>>rem != 0 {
		return errors.New("PBA has bits past the last vector")
	}
	if st.ISR&^(isrQueue|isrConfig) != 0 {
		return fmt.Errorf("ISR %#x has unknown bits", st.ISR)
	}
	badVector := func(v uint16) bool { return v != NoVector && int(v) >= nvec }
	if badVector(st.ConfigVector) {
		return fmt.Errorf("configuration vector %d out of range", st.ConfigVector)
	}
	if len(st.Queues) != len(p.queues) {
		return fmt.Errorf("%d queues, this device has %d", len(st.Queues), len(p.queues))
	}
	for i, q := range st.Queues {
		if q.Size == 0 || q.Size > p.queues[i].max || q.Size&(q.Size-1) != 0 {
			return fmt.Errorf("queue %d size %d (maximum %d, a power of two)", i, q.Size, p.queues[i].max)
		}
		if badVector(q.Vector) {
			return fmt.Errorf("queue %d vector %d out of range", i, q.Vector)
		}
		if !q.Enabled {
			if q.QueueIndices != (QueueIndices{}) {
				return fmt.Errorf("queue %d is disabled but has indices", i)
			}
			continue
		}
		cfg := QueueConfig{Size: q.Size, Desc: q.Desc, Driver: q.Driver, Device: q.Device}
		if err := cfg.Validate(p.mem); err != nil {
			return fmt.Errorf("queue %d: %w", i, err)
		}
		if q.Used-q.NextAvail != 0 {
			return fmt.Errorf("queue %d: next available %d differs from used %d", i, q.NextAvail, q.Used)
		}
		if st.Status&StatusDriverOK != 0 {
			// The used index is in guest memory too: they must agree.
			b, err := p.mem.Slice(q.Device+2, 2)
			if err != nil {
				return fmt.Errorf("queue %d: %w", i, err)
			}
			if mem := binary.LittleEndian.Uint16(b); mem != q.Used {
				return fmt.Errorf("queue %d: used index %d in the state, %d in guest memory", i, q.Used, mem)
			}
		}
	}
	return nil
}
