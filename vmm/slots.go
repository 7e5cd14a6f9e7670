package vmm

import (
	"fmt"
	"math/bits"
	"time"

	"github.com/gvmm/gvmm/kvm"
	"github.com/gvmm/gvmm/memguard"
)

// ramSlot is one KVM memory slot over guest RAM.
//
// Slot ids: RAM is the only memory gvmm gives KVM slots for (device
// BARs are MMIO), so RAM slots use ids from 0 up. At boot slot i is RAM
// region i. When memguard changes the layout, a slot whose range and
// kind did not change keeps its id (KVM keeps its mappings and dirty
// log); each new slot takes the lowest id not in use once the vanished
// slots are deleted. Every layout has at most memguard's MaxSlots slots,
// so ids stay below it, and MaxSlots is below KVM_CAP_NR_MEMSLOTS.
type ramSlot struct {
	id        uint32
	gpa, size uint64
	readOnly  bool
}

// memFlags are the KVM flags of s given whether dirty logging is on.
func (s ramSlot) memFlags(logging bool) uint32 {
	var f uint32
	if logging {
		f |= kvm.MemLogDirtyPages
	}
	if s.readOnly {
		f |= kvm.MemReadonly
	}
	return f
}

// setSlot creates s, or changes its flags. m.layoutMu is held.
func (m *Machine) setSlot(s ramSlot) error {
	host, err := m.mem.Slice(s.gpa, s.size)
	if err != nil {
		return fmt.Errorf("memory slot %d: %w", s.id, err)
	}
	return m.vm.SetUserMemoryRegion(&kvm.UserspaceMemoryRegion{
		Slot:          s.id,
		Flags:         s.memFlags(m.dirtyLogging),
		GuestPhysAddr: s.gpa,
		MemorySize:    s.size,
		UserspaceAddr: sliceAddr(host),
	})
}

// deleteSlot removes s. While dirty logging is on, its log is read first
// and kept in lostDirty, so TakeDirty still reports those pages. m.layoutMu
// is held.
func (m *Machine) deleteSlot(s ramSlot) error {
	if m.dirtyLogging {
		bm := make([]uint64, kvm.DirtyBitmapLen(s.size))
		if err := m.vm.GetDirtyLog(s.id, bm); err != nil {
			return fmt.Errorf("delete memory slot %d: %w", s.id, err)
		}
		m.mergeDirty(s, bm, m.lostDirty)
	}
	host, err := m.mem.Slice(s.gpa, s.size)
	if err != nil {
		return fmt.Errorf("delete memory slot %d: %w", s.id, err)
	}
	if err := m.vm.SetUserMemoryRegion(&kvm.UserspaceMemoryRegion{
		Slot:          s.id,
		Flags:         s.memFlags(m.dirtyLogging),
		GuestPhysAddr: s.gpa,
		UserspaceAddr: sliceAddr(host),
	}); err != nil {
		return fmt.Errorf("delete memory slot %d: %w", s.id, err)
	}
	return nil
}

// initSlots gives each RAM region one slot (slot i is region i).
func (m *Machine) initSlots() error {
	m.layoutMu.Lock()
	defer m.layoutMu.Unlock()
	for i, r := range m.mem.regions {
		s := ramSlot{id: uint32(i), gpa: r.GPA, size: r.Size}
		if err := m.setSlot(s); err != nil {
			return err
		}
		m.slots = append(m.slots, s)
	}
	return nil
}

// mergeDirty ORs bm, a dirty bitmap of slot s (bit i of word j is page
// 64*j+i of the slot), into per-region bitmaps (the layout of TakeDirty).
func (m *Machine) mergeDirty(s ramSlot, bm []uint64, into [][]uint64) {
	for i, r := range m.mem.regions {
		if s.gpa < r.GPA || s.gpa-r.GPA >= r.Size || i >= len(into) {
			continue
		}
		base := (s.gpa - r.GPA) / pageSize
		limit := uint64(len(into[i])) * 64
		npages := s.size / pageSize
		if base%64 == 0 {
			for w, word := range bm {
				if at := base/64 + uint64(w); word != 0 && at < uint64(len(into[i])) {
					into[i][at] |= word
				}
			}
			return
		}
		for w, word := range bm {
			for word != 0 {
				b := uint64(bits.TrailingZeros64(word))
				word &= word - 1
				p := uint64(w)*64 + b
				if p >= npages || base+p >= limit {
					continue
				}
				into[i][(base+p)/64] |= 1 << ((base + p) % 64)
			}
		}
		return
	}
}

// layoutHoldTimeout bounds how long a layout change waits for the other
// vCPUs to leave the guest.
const layoutHoldTimeout = 5 * time.Second

// layoutKickEvery is how often a layout change interrupts a vCPU that has
// not left the guest yet (see holdVCPUs).
const layoutKickEvery = 20 * time.Millisecond

// applyLayout brings the KVM slots in line with the guard's layout. self
// is the vCPU calling from its exit handler, or nil. Every other vCPU is
// held out of KVM_RUN while slots change, since deleting a slot leaves its
// RAM unmapped for a moment (a vCPU fetching code there would fail).
// Changes are serialized by layoutMu.
func (m *Machine) applyLayout(self *vcpu) error {
	m.layoutMu.Lock()
	defer m.layoutMu.Unlock()
	g := m.guard.Load()
	slots, gen, err := g.Slots()
	if err != nil {
		return fmt.Errorf("memguard layout: %w", err)
	}
	if g == m.layoutGuard && gen == m.layoutGen {
		return nil
	}
	if err := m.changeSlots(self, g, slots); err != nil {
		return fmt.Errorf("memguard layout: %w", err)
	}
	m.layoutGuard, m.layoutGen = g, gen
	return nil
}

// changeSlots holds every vCPU but self out of the guest, replaces the
// RAM slots with slots and does the guard's pending host locks (g.SyncHost).
// m.layoutMu is held.
//
// The host locks are done here, not when the guest registers a region:
// mlock of a few pages inside guest RAM splits the host's VMA and the
// transparent huge page under it, so the host kernel zaps the guest's
// nested page tables and drains per-CPU page lists, interrupting every
// CPU that runs a vCPU in guest mode. Under nested KVM on QEMU's TCG a
// host interrupt taken right after VMRUN has been seen to panic L1 (it
// lands in __svm_vcpu_run before the host's GS is back); with every vCPU
// held out of KVM_RUN no CPU is in guest mode when it happens.
//
// A layout equal to the current one with nothing to lock changes nothing
// and holds no vCPU: a machine with no protected region keeps exactly the
// slots, and the ioctl sequence, it had without memguard (one slot per
// RAM region, made once by initSlots), also across RestoreState.
func (m *Machine) changeSlots(self *vcpu, g *memguard.Guard, slots []memguard.Slot) error {
	same := m.sameLayout(slots)
	if same && !g.HostPending() {
		return nil
	}
	if err := m.holdVCPUs(self); err != nil {
		return err
	}
	defer m.releaseVCPUs()
	if !same {
		if err := m.setLayout(slots); err != nil {
			return err
		}
	}
	g.SyncHost()
	return nil
}

// wantSlots are the KVM slots a memguard layout asks for: without
// KVM_MEM_READONLY an integrity page gets no slot at all (reads exit too,
// and the guard serves them on the backing page).
func (m *Machine) wantSlots(slots []memguard.Slot) []ramSlot {
	want := make([]ramSlot, 0, len(slots))
	for _, s := range slots {
		if s.ReadOnly && !m.readOnlyMem {
			continue
		}
		want = append(want, ramSlot{gpa: s.GPA, size: s.Size, readOnly: s.ReadOnly})
	}
	return want
}

// sameLayout says whether slots ask for exactly the current RAM slots
// (ids aside). m.layoutMu is held.
func (m *Machine) sameLayout(slots []memguard.Slot) bool {
	want := m.wantSlots(slots)
	if len(want) != len(m.slots) {
		return false
	}
	for i, w := range want {
		c := m.slots[i]
		if w.gpa != c.gpa || w.size != c.size || w.readOnly != c.readOnly {
			return false
		}
	}
	return true
}

// setLayout replaces the RAM slots with slots. m.layoutMu is held and no
// vCPU is in the guest.
func (m *Machine) setLayout(slots []memguard.Slot) error {
	want := m.wantSlots(slots)
	type key struct {
		gpa, size uint64
		ro        bool
	}
	old := make(map[key]uint32, len(m.slots))
	for _, s := range m.slots {
		old[key{s.gpa, s.size, s.readOnly}] = s.id
	}
	used := make(map[uint32]bool, len(want))
	kept := make([]bool, len(want))
	for i, s := range want {
		if id, ok := old[key{s.gpa, s.size, s.readOnly}]; ok {
			want[i].id, kept[i], used[id] = id, true, true
		}
	}
	for _, s := range m.slots {
		if !used[s.id] {
			if err := m.deleteSlot(s); err != nil {
				return err
			}
		}
	}
	var next uint32
	for i := range want {
		if kept[i] {
			continue
		}
		for used[next] {
			next++
		}
		want[i].id, used[next] = next, true
		if err := m.setSlot(want[i]); err != nil {
			m.slots = nil // half applied: the machine ends
			return err
		}
	}
	m.slots = want
	return nil
}

// holdVCPUs keeps every vCPU but self out of KVM_RUN until releaseVCPUs.
// A vCPU parked for a pause, stopped, or busy in an exit handler is
// already out. m.layoutMu is held.
func (m *Machine) holdVCPUs(self *vcpu) error {
	m.holdMu.Lock()
	m.holdDone = make(chan struct{})
	m.holdMu.Unlock()
	m.layoutHold.Store(true)
	deadline := time.Now().Add(layoutHoldTimeout)
	for _, v := range m.vcpus {
		if v == self {
			continue
		}
		// inGuest is set before the vCPU looks at layoutHold and
		// cleared after KVM_RUN returns: once both stores are seen in
		// that order, either it saw the hold or it is seen here.
		//
		// One interrupt is enough: immediate_exit is set after the
		// vCPU cleared it for this entry, so KVM_RUN either returns at
		// once or takes the signal. It is repeated only every
		// layoutKickEvery, not at every poll: each signal to a vCPU in
		// the guest is an IPI that forces a #VMEXIT, and under nested
		// KVM on QEMU's TCG a host interrupt at that boundary is what
		// has been seen to panic L1 (the interrupt is taken in
		// __svm_vcpu_run before the host's GS is back), so gvmm must
		// not add a storm of them.
		lastKick := time.Time{}
		for v.inGuest.Load() {
			if now := time.Now(); now.Sub(lastKick) >= layoutKickEvery {
				v.interrupt()
				lastKick = now
			}
			if time.Now().After(deadline) {
				m.releaseVCPUs()
				return fmt.Errorf("vCPU %d did not leave the guest within %v", v.id, layoutHoldTimeout)
			}
			time.Sleep(50 * time.Microsecond)
		}
	}
	return nil
}

// releaseVCPUs ends holdVCPUs.
func (m *Machine) releaseVCPUs() {
	m.layoutHold.Store(false)
	m.holdMu.Lock()
	if m.holdDone != nil {
		close(m.holdDone)
		m.holdDone = nil
	}
	m.holdMu.Unlock()
}

// waitLayout blocks a vCPU while a layout change holds it.
func (m *Machine) waitLayout() {
	m.holdMu.Lock()
	done := m.holdDone
	m.holdMu.Unlock()
	if done != nil {
		<-done
	}
}
