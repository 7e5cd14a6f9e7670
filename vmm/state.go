package vmm

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/gvmm/gvmm/kvm"
	"golang.org/x/sys/unix"
)

// VCPUState is one vCPU's complete architectural state as KVM exposes it:
// plain data, captured while the machine is paused, on the vCPU's thread.
type VCPUState struct {
	ID        int
	MPState   kvm.MPState
	Events    kvm.VCPUEvents
	LAPIC     kvm.LAPICState
	MSRs      kvm.MSREntries
	XSave     kvm.XSave
	XCRs      kvm.XCRs
	Sregs     kvm.Sregs
	Regs      kvm.Regs
	DebugRegs kvm.DebugRegs
	CPUID     kvm.CPUIDEntries
	TSCKHz    uint32
	// TSCOffset is the guest TSC's offset from the host's TSC
	// (KVM_VCPU_TSC_OFFSET), read where KVM has it (HasTSCOffset): a live
	// migration moves each TSC on by the time the guest was away, as
	// kvmclock is (RestoreState, tsc.go).
	TSCOffset    uint64 `json:",omitempty"`
	HasTSCOffset bool   `json:",omitempty"`
}

// VMState is the state of the in-kernel devices shared by all vCPUs.
type VMState struct {
	PICMaster kvm.IRQChip
	PICSlave  kvm.IRQChip
	IOAPIC    kvm.IRQChip
	PIT       kvm.PITState2
	Clock     kvm.ClockData
}

// ErrNotPaused is returned by state operations on a running machine.
var ErrNotPaused = errors.New("machine is not paused")

func (m *Machine) requirePaused() error {
	m.pauseMu.Lock()
	defer m.pauseMu.Unlock()
	if !m.pauseWanted || m.parked != len(m.vcpus) {
		return ErrNotPaused
	}
	return nil
}

// SaveVCPUs captures every vCPU's state. The machine must be paused.
func (m *Machine) SaveVCPUs(ctx context.Context) ([]VCPUState, error) {
	if err := m.requirePaused(); err != nil {
		return nil, err
	}
	msrs, err := m.sys.MSRIndexList()
	if err != nil {
		return nil, err
	}
	out := make([]VCPUState, len(m.vcpus))
	if err := m.eachVCPU(ctx, func(i int, v *vcpu) error {
		st, err := v.save(msrs)
		out[i] = st
		if err != nil {
			return fmt.Errorf("save vCPU %d: %w", v.id, err)
		}
		return nil
	}); err != nil {
		return nil, err
	}
	return out, nil
}

// eachVCPU runs f for every vCPU on that vCPU's thread, all at once (the
// state ioctls of one vCPU do not touch another's, and on a switchover's
// path N vCPUs should not cost N times one), and returns the error of the
// lowest-numbered vCPU that failed.
func (m *Machine) eachVCPU(ctx context.Context, f func(i int, v *vcpu) error) error {
	errs := make([]error, len(m.vcpus))
	var wg sync.WaitGroup
	for i, v := range m.vcpus {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = v.do(ctx, func() error { return f(i, v) })
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// RestoreVCPUs puts saved states back into the vCPUs with the same IDs.
// The machine must be paused.
func (m *Machine) RestoreVCPUs(ctx context.Context, states []VCPUState) error {
	if err := m.requirePaused(); err != nil {
		return err
	}
	if len(states) != len(m.vcpus) {
		return fmt.Errorf("restore: %d vCPU states for %d vCPUs", len(states), len(m.vcpus))
	}
	for i, v := range m.vcpus {
		if states[i].ID != v.id {
			return fmt.Errorf("restore: state %d is for vCPU %d, not %d", i, states[i].ID, v.id)
		}
	}
	return m.eachVCPU(ctx, func(i int, v *vcpu) error {
		if err := v.restore(&states[i]); err != nil {
			return fmt.Errorf("restore vCPU %d: %w", v.id, err)
		}
		return nil
	})
}

// save reads the vCPU's state in the order the mature VMMs use: mp_state
// and pending events first (reading them can settle pending work), then
// LAPIC, MSRs, XSAVE, XCRs, sregs, regs, debug registers, CPUID, TSC rate.
func (v *vcpu) save(msrIndices []uint32) (VCPUState, error) {
	st := VCPUState{ID: v.id}
	c := v.cpu
	var err error
	if st.MPState, err = c.GetMPState(); err != nil {
		return st, err
	}
	if st.Events, err = c.GetVCPUEvents(); err != nil {
		return st, err
	}
	if st.LAPIC, err = c.GetLAPIC(); err != nil {
		return st, err
	}
	if st.MSRs, err = readMSRs(c, msrIndices); err != nil {
		return st, err
	}
	if st.XSave, err = c.GetXSave(); err != nil {
		return st, err
	}
	if st.XCRs, err = c.GetXCRs(); err != nil {
		return st, err
	}
	if st.Sregs, err = c.GetSregs(); err != nil {
		return st, err
	}
	if st.Regs, err = c.GetRegs(); err != nil {
		return st, err
	}
	if st.DebugRegs, err = c.GetDebugRegs(); err != nil {
		return st, err
	}
	if st.CPUID, err = c.GetCPUID(); err != nil {
		return st, err
	}
	if st.TSCKHz, err = c.GetTSCKHz(); err != nil {
		return st, err
	}
	if off, err := c.TSCOffset(); err == nil {
		st.TSCOffset, st.HasTSCOffset = off, true
	} else if !errors.Is(err, unix.ENXIO) {
		return st, err
	}
	return st, nil
}

// readMSRs reads every MSR KVM lists. KVM stops at the first one it cannot
// read and says how many it did; that one is skipped (the host CPU lacks
// it) and the rest read on.
func readMSRs(c *kvm.VCPU, indices []uint32) ([]kvm.MSREntry, error) {
	var out []kvm.MSREntry
	for len(indices) > 0 {
		batch := make([]kvm.MSREntry, len(indices))
		for i, idx := range indices {
			batch[i].Index = idx
		}
		n, err := c.GetMSRs(batch)
		if err != nil {
			return nil, err
		}
		if n < 0 || n > len(batch) {
			return nil, fmt.Errorf("KVM_GET_MSRS: processed %d of %d", n, len(batch))
		}
		out = append(out, batch[:n]...)
		if n == len(batch) {
			break
		}
		indices = indices[n+1:]
	}
	return out, nil
}

// restore writes the state back in the order the mature VMMs use: CPUID
// first (it defines what the rest may contain), then mp_state, regs,
// sregs, XSAVE, XCRs, debug registers, LAPIC, MSRs, and pending events
// last (they may refer to the LAPIC).
func (v *vcpu) restore(st *VCPUState) error {
	c := v.cpu
	if err := c.SetCPUID(st.CPUID); err != nil {
		return err
	}
	if st.TSCKHz != 0 {
		if cur, err := c.GetTSCKHz(); err == nil && cur != st.TSCKHz {
			if err := c.SetTSCKHz(st.TSCKHz); err != nil {
				return err
			}
			v.tscScaled = true
		}
	}
	if err := c.SetMPState(&st.MPState); err != nil {
		return err
	}
	if err := c.SetRegs(&st.Regs); err != nil {
		return err
	}
	if err := v.restoreSregs(&st.Sregs); err != nil {
		return err
	}
	if err := c.SetXSave(&st.XSave); err != nil {
		return err
	}
	if err := c.SetXCRs(&st.XCRs); err != nil {
		return err
	}
	if err := c.SetDebugRegs(&st.DebugRegs); err != nil {
		return err
	}
	if err := c.SetLAPIC(&st.LAPIC); err != nil {
		return err
	}
	n, err := c.SetMSRs(st.MSRs)
	if err != nil {
		return err
	}
	if n != len(st.MSRs) {
		return fmt.Errorf("KVM_SET_MSRS: KVM refused MSR %#x (set %d of %d)", st.MSRs[n].Index, n, len(st.MSRs))
	}
	// KVM_GET_VCPU_EVENTS never sets these two flags, and without them
	// KVM_SET_VCPU_EVENTS leaves a pending NMI and the SIPI vector out:
	// an NMI pending at the save would be lost (QEMU sets them too).
	ev := st.Events
	ev.Flags |= kvm.VCPUEventValidNMIPending | kvm.VCPUEventValidSIPIVector
	return c.SetVCPUEvents(&ev)
}

// SaveVM captures the in-kernel PICs, IOAPIC, PIT and kvmclock. Call it
// last, while paused: the clock is read as late as possible.
func (m *Machine) SaveVM() (VMState, error) {
	var st VMState
	if err := m.requirePaused(); err != nil {
		return st, err
	}
	var err error
	if st.PICMaster, err = m.vm.GetIRQChip(kvm.IRQChipPICMaster); err != nil {
		return st, err
	}
	if st.PICSlave, err = m.vm.GetIRQChip(kvm.IRQChipPICSlave); err != nil {
		return st, err
	}
	if st.IOAPIC, err = m.vm.GetIRQChip(kvm.IRQChipIOAPIC); err != nil {
		return st, err
	}
	if st.PIT, err = m.vm.GetPIT2(); err != nil {
		return st, err
	}
	if st.Clock, err = m.vm.GetClock(); err != nil {
		return st, err
	}
	return st, nil
}

// RestoreVM puts the in-kernel device state and the clock back.
func (m *Machine) RestoreVM(st *VMState) error {
	if err := m.requirePaused(); err != nil {
		return err
	}
	for _, chip := range []*kvm.IRQChip{&st.PICMaster, &st.PICSlave, &st.IOAPIC} {
		if err := m.vm.SetIRQChip(chip); err != nil {
			return err
		}
	}
	if err := m.vm.SetPIT2(&st.PIT); err != nil {
		return err
	}
	clock := kvm.ClockData{Clock: st.Clock.Clock}
	if st.Clock.Flags&kvm.ClockRealtime != 0 {
		// KVM moves kvmclock forward by the real time since the source
		// read it (RestoreState keeps the flag only when told to advance
		// the clock, as a live migration is).
		clock.Flags, clock.Realtime = kvm.ClockRealtime, st.Clock.Realtime
	}
	return m.vm.SetClock(&clock)
}
