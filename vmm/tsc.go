package vmm

import (
	"context"
	"fmt"
	"time"

	"github.com/gvmm/gvmm/kvm"
)

// A live migration moves kvmclock forward by the real time the guest was
// away (KVM_SET_CLOCK with KVM_CLOCK_REALTIME). A guest that keeps time
// with the TSC itself (Linux does where the TSC is invariant, as gvmm's
// CPUID says it is) needs its TSC moved on as far, or its clock stands
// still for the downtime and falls behind real time with every migration.
// Restoring the TSC MSR does not do it: KVM starts the TSC again from the
// saved value. So the destination sets each vCPU's TSC offset as the
// kernel documents it (Documentation/virt/kvm/devices/vcpu.rst, "4.1
// ATTRIBUTE: KVM_VCPU_TSC_OFFSET"):
//
//	ofs_dst = ofs_src + (guest_dst - guest_src) * freq + (tsc_src - tsc_dst)
//
// with guest_* kvmclock in nanoseconds and tsc_* the host TSC, both read by
// KVM_GET_CLOCK on each side (after KVM_SET_CLOCK on the destination), and
// freq the guest TSC's rate. The formula takes the TSC unscaled (guest rate
// = host rate), so it is used only where the destination does not scale
// it, and each result is checked against the TSC the MSR restore gave: the
// new TSC may run ahead of it by the time the guest was away, no more, and
// not fall behind it. Otherwise the MSR's TSC stays.

// tscSlack is how far the TSC may move past the measured downtime, or fall
// behind the MSR's value, before the offset is not trusted: the MSR and
// the clock are read a few milliseconds apart on the source.
const tscSlack = time.Second

// migratedTSCOffset is ofs_dst of the formula above. Arithmetic is modulo
// 2^64, as the offsets are.
func migratedTSCOffset(src, dst kvm.ClockData, ofsSrc uint64, khz uint32) uint64 {
	return ofsSrc + uint64(nsToTicks(int64(dst.Clock-src.Clock), khz)) + src.HostTSC - dst.HostTSC
}

// nsToTicks converts ns nanoseconds to ticks of a khz clock without
// overflowing for any span a migration can take.
func nsToTicks(ns int64, khz uint32) int64 {
	k := int64(khz)
	return ns/1e6*k + ns%1e6*k/1e6
}

// maxAway bounds the time away that a TSC is moved on by: a blackout of a
// live migration is milliseconds to seconds; a kvmclock that moved further
// had a source whose realtime clock was far from this host's, and the
// tick arithmetic stays far from overflow.
const maxAway = time.Hour

// tscJumpOK says whether moving a TSC from the offset the MSR restore gave
// (ofsMSR) to ofsNew moves it forward by at most the time the guest was
// away (awayNs, kvmclock's advance, at most maxAway) plus tscSlack, and
// back by at most tscSlack.
func tscJumpOK(ofsNew, ofsMSR uint64, awayNs int64, khz uint32) bool {
	if awayNs < 0 || awayNs > int64(maxAway) {
		return false
	}
	jump := int64(ofsNew - ofsMSR)
	slack := nsToTicks(int64(tscSlack), khz)
	return jump >= -slack && jump <= nsToTicks(awayNs, khz)+slack
}

// advanceTSCs moves every vCPU's TSC on by the time the guest was away,
// after RestoreVM set kvmclock with KVM_CLOCK_REALTIME and RestoreVCPUs
// the MSRs (on the vCPU threads). src is the kvmclock the source read. It
// changes nothing, and says why in the log, where the source or this KVM
// lacks what the formula needs, where a TSC is scaled here, or where a
// result fails tscJumpOK. Each TSC it moves, it re-arms the TSC deadline
// timer, which KVM computed from the TSC before the move.
func (m *Machine) advanceTSCs(ctx context.Context, states []VCPUState, src kvm.ClockData) error {
	why := ""
	if src.Flags&kvm.ClockHostTSC == 0 {
		why = "the source's kvmclock has no host TSC"
	}
	for i := range states {
		if why == "" && (!states[i].HasTSCOffset || states[i].TSCKHz == 0) {
			why = "the source saved no TSC offset"
		}
	}
	var dst kvm.ClockData
	if why == "" {
		var err error
		if dst, err = m.vm.GetClock(); err != nil {
			return fmt.Errorf("read kvmclock after restoring it: %w", err)
		}
		if dst.Flags&kvm.ClockHostTSC == 0 {
			why = "this KVM's kvmclock has no host TSC"
		}
	}
	if why != "" {
		m.log.Debug("TSC not moved on: it goes on from its saved value", "why", why)
		return nil
	}
	away := int64(dst.Clock - src.Clock)
	return m.eachVCPU(ctx, func(i int, v *vcpu) error {
		st := &states[i]
		if v.tscScaled {
			m.log.Debug("TSC not moved on: it is scaled here; it goes on from its saved value", "vcpu", v.id)
			return nil
		}
		cur, err := v.cpu.TSCOffset()
		if err != nil {
			return fmt.Errorf("vCPU %d: read TSC offset: %w", v.id, err)
		}
		ofs := migratedTSCOffset(src, dst, st.TSCOffset, st.TSCKHz)
		if !tscJumpOK(ofs, cur, away, st.TSCKHz) {
			m.log.Warn("TSC not moved on: the computed offset is out of bounds; it goes on from its saved value",
				"vcpu", v.id, "jump_ticks", int64(ofs-cur), "away", time.Duration(away))
			return nil
		}
		if err := v.cpu.SetTSCOffset(ofs); err != nil {
			return fmt.Errorf("vCPU %d: set TSC offset: %w", v.id, err)
		}
		for _, e := range st.MSRs {
			if e.Index == msrTSCDeadline && e.Data != 0 {
				if _, err := v.cpu.SetMSRs([]kvm.MSREntry{e}); err != nil {
					return fmt.Errorf("vCPU %d: re-arm the TSC deadline: %w", v.id, err)
				}
			}
		}
		return nil
	})
}

// msrTSCDeadline is IA32_TSC_DEADLINE, the LAPIC timer's deadline in guest
// TSC ticks.
const msrTSCDeadline = 0x6e0
