package vmm

import (
	"fmt"
	"slices"
	"time"

	"github.com/gvmm/gvmm/kvm"
)

// RAMRegion is one range of guest RAM and its host mapping. Data aliases
// guest memory: the guest may change it at any time while it runs.
type RAMRegion struct {
	GPA  uint64
	Data []byte
}

// Regions returns guest RAM region by region, in guest-physical order.
// At boot each region is one KVM memory slot; memguard may split one into
// several (see ramSlot).
func (m *Memory) Regions() []RAMRegion {
	out := make([]RAMRegion, len(m.regions))
	for i, r := range m.regions {
		off := m.offsets[i]
		out[i] = RAMRegion{GPA: r.GPA, Data: m.mapping[off : off+r.Size : off+r.Size]}
	}
	return out
}

// takeDirtyRegions returns the VMM-side dirty bitmap split per region
// (bit i of word j is page 64*j+i of the region) and clears it.
func (m *Memory) takeDirtyRegions() [][]uint64 {
	all := m.TakeDirty()
	out := make([][]uint64, len(m.regions))
	for i, r := range m.regions {
		pages := r.Size / pageSize
		first := m.offsets[i] / pageSize
		bm := make([]uint64, (pages+63)/64)
		for p := uint64(0); p < pages; p++ {
			g := first + p
			if all[g/64]&(1<<(g%64)) != 0 {
				bm[p/64] |= 1 << (p % 64)
			}
		}
		out[i] = bm
	}
	return out
}

// setDirtyLogging turns KVM's dirty logging on or off on every RAM slot.
// Changing only the log flag of an existing slot is allowed by KVM and
// keeps the guest's mappings. layoutMu keeps memguard's layout changes
// out meanwhile.
func (m *Machine) setDirtyLogging(on bool) error {
	m.layoutMu.Lock()
	defer m.layoutMu.Unlock()
	was := m.dirtyLogging
	m.dirtyLogging = on
	for _, s := range m.slots {
		if err := m.setSlot(s); err != nil {
			m.dirtyLogging = was
			return err
		}
	}
	m.lostDirty = nil
	if on {
		m.lostDirty = make([][]uint64, len(m.mem.regions))
		for i, r := range m.mem.regions {
			m.lostDirty[i] = make([]uint64, kvm.DirtyBitmapLen(r.Size))
		}
	}
	return nil
}

// StartDirtyLog turns on KVM's dirty page logging on every RAM slot and
// clears the VMM-side bitmap: from now on TakeDirty reports every page
// written by a vCPU or by the VMM.
//
// Where the kernel has KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 (Linux 5.x and
// later), logging starts with every page marked dirty and none
// write-protected; StartDirtyLog then protects the slots in chunks
// (KVM_CLEAR_DIRTY_LOG), and TakeDirty re-protects only the pages it
// reports, as QEMU does. Without it, KVM write-protects (and splits) the
// whole slot when logging starts, and every KVM_GET_DIRTY_LOG walks it.
func (m *Machine) StartDirtyLog() error {
	if !m.manualDirty && !m.noManualDirty {
		on, err := m.enableManualDirty()
		if err != nil {
			return fmt.Errorf("start dirty log: %w", err)
		}
		m.manualDirty = on
	}
	if err := m.setDirtyLogging(true); err != nil {
		return fmt.Errorf("start dirty log: %w", err)
	}
	if m.manualDirty {
		if err := m.protectAll(); err != nil {
			return fmt.Errorf("start dirty log: %w", err)
		}
	}
	m.mem.TakeDirty()
	m.precopy.Store(true)
	return nil
}

// manualDirtyCaps are the KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 flags gvmm
// asks for: manual re-protection, and logging that starts all-dirty.
const manualDirtyCaps = kvm.DirtyLogManualProtectEnable | kvm.DirtyLogInitiallySet

// enableManualDirty turns manual dirty-log protection on where the kernel
// offers both flags, and says whether it did.
func (m *Machine) enableManualDirty() (bool, error) {
	n, err := m.vm.CheckExtension(kvm.CapManualDirtyLogProtect2)
	if err != nil || n&manualDirtyCaps != manualDirtyCaps {
		return false, nil // not offered: KVM protects on its own
	}
	if err := m.vm.EnableCap(kvm.CapManualDirtyLogProtect2, 0, [4]uint64{manualDirtyCaps}); err != nil {
		return false, fmt.Errorf("enable manual dirty-log protection: %w", err)
	}
	return true, nil
}

// protectChunk is how many pages one KVM_CLEAR_DIRTY_LOG write-protects
// when logging starts: 64 MiB, so that no single ioctl holds KVM's MMU
// lock for the whole of a large slot.
const protectChunk = 16384

// protectAll write-protects every page of every RAM slot and clears their
// (initially set) dirty bits, chunk by chunk. It holds layoutMu for one
// chunk at a time; a slot memguard creates meanwhile starts all-dirty and
// is protected by the next TakeDirty.
func (m *Machine) protectAll() error {
	ones := make([]uint64, protectChunk/64)
	for i := range ones {
		ones[i] = ^uint64(0)
	}
	m.layoutMu.Lock()
	slots := append([]ramSlot(nil), m.slots...)
	m.layoutMu.Unlock()
	for _, s := range slots {
		pages := s.size / pageSize
		for first := uint64(0); first < pages; first += protectChunk {
			n := min(pages-first, protectChunk)
			if err := m.protectRange(s, first, n, ones); err != nil {
				return err
			}
		}
	}
	return nil
}

// protectRange clears pages first..first+n of slot s, unless memguard
// replaced the slot since protectAll listed it.
func (m *Machine) protectRange(s ramSlot, first, n uint64, ones []uint64) error {
	m.layoutMu.Lock()
	defer m.layoutMu.Unlock()
	if !slices.Contains(m.slots, s) {
		return nil
	}
	if err := m.vm.ClearDirtyLog(s.id, first, uint32(n), ones); err != nil {
		return fmt.Errorf("protect slot %d pages %d+%d: %w", s.id, first, n, err)
	}
	return nil
}

// StopDirtyLog turns KVM's dirty page logging off again.
func (m *Machine) StopDirtyLog() error {
	m.precopy.Store(false)
	if err := m.setDirtyLogging(false); err != nil {
		return fmt.Errorf("stop dirty log: %w", err)
	}
	return nil
}

// TakeDirty returns, per RAM region (in the order of Memory.Regions), a
// bitmap of the pages written since the previous call or StartDirtyLog:
// KVM's dirty log OR-ed with the VMM's own writes (device DMA, used
// rings, memguard's writes for an owner). Bit i of word j is page 64*j+i
// of the region. Reading KVM's log resets it and write-protects the
// reported pages again; a page written after that is reported by the next
// call. KVM logs per memory slot; memguard may have split a region into
// several slots, so each slot's log is shifted into its region's bitmap,
// with the logs of slots deleted since the previous call.
func (m *Machine) TakeDirty() ([][]uint64, error) {
	m.layoutMu.Lock()
	defer m.layoutMu.Unlock()
	vmmBits := m.mem.takeDirtyRegions()
	for _, s := range m.slots {
		bm := make([]uint64, kvm.DirtyBitmapLen(s.size))
		if err := m.vm.GetDirtyLog(s.id, bm); err != nil {
			return nil, fmt.Errorf("take dirty pages: %w", err)
		}
		if m.manualDirty {
			// GET only copied the bits; clearing them re-protects
			// those pages before the caller reads them.
			if err := m.vm.ClearDirtyLog(s.id, 0, uint32(s.size/pageSize), bm); err != nil {
				return nil, fmt.Errorf("take dirty pages: %w", err)
			}
		}
		m.mergeDirty(s, bm, vmmBits)
	}
	for i, lost := range m.lostDirty {
		for w, word := range lost {
			vmmBits[i][w] |= word
			lost[w] = 0
		}
	}
	return vmmBits, nil
}

// throttlePeriod is the slice of time a throttled vCPU is held out of the
// guest in proportion to.
const throttlePeriod = 10 * time.Millisecond

// Throttle takes percent (0..99) of every vCPU's time away from the guest
// (live migration's auto-converge): in every throttlePeriod of wall time a
// vCPU sleeps percent of it. 0 turns throttling off.
func (m *Machine) Throttle(percent int) {
	if percent < 0 {
		percent = 0
	}
	if percent > 99 {
		percent = 99
	}
	m.throttle.Store(int32(percent))
	select {
	case m.throttleWake <- struct{}{}:
	default:
	}
}

// throttleLoop interrupts throttled vCPUs every throttlePeriod so that
// even a guest that never exits on its own is held back. Run starts it and
// waits for it to return once the machine ended, so it never touches a
// closed vCPU.
func (m *Machine) throttleLoop() {
	t := time.NewTicker(throttlePeriod)
	defer t.Stop()
	for {
		if m.throttle.Load() == 0 {
			select {
			case <-m.ended:
				return
			case <-m.throttleWake:
			}
			continue
		}
		select {
		case <-m.ended:
			return
		case <-t.C:
		}
		for _, v := range m.vcpus {
			v.throttleDue.Store(true)
			v.interrupt()
		}
	}
}

// throttled holds the vCPU out of the guest for its throttle share, if it
// is due. It sleeps in short steps so that a pause or stop request (which
// a migration's switchover makes) is not delayed by more than one step.
func (v *vcpu) throttled() {
	if !v.throttleDue.Swap(false) {
		return
	}
	for left := v.m.throttleSleep(); left > 0; left -= throttleStep {
		if v.stop.Load() || v.m.pausePending.Load() {
			return
		}
		time.Sleep(min(left, throttleStep))
	}
}

// throttleStep bounds how long a throttled vCPU sleeps without looking at
// pause and stop requests.
const throttleStep = 2 * time.Millisecond

// throttleSleep is the time a vCPU due for throttling stays out.
func (m *Machine) throttleSleep() time.Duration {
	p := time.Duration(m.throttle.Load())
	if p <= 0 {
		return 0
	}
	return throttlePeriod * p / 100
}
