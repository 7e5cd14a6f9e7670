package vmm

import (
	"context"
	"fmt"
	"time"

	"github.com/gvmm/gvmm/kvm"
	"github.com/gvmm/gvmm/memguard"
)

// memguardPeriod is how often the machine checks that the owners of
// protected regions are alive and measures the regions.
const memguardPeriod = 10 * time.Second

// slotHeadroom is how many of KVM's memory slots memguard leaves unused.
const slotHeadroom = 8

// newGuard makes the machine's protected-memory registry over its RAM.
// The first MiB (boot GDT and page tables, zero page, command line, ACPI
// tables, the reset stub) is reserved: no region may map it.
func (m *Machine) newGuard(injectFaults bool, maxRegions int) error {
	ro, err := m.vm.CheckExtension(kvm.CapReadonlyMem)
	if err != nil {
		return err
	}
	m.readOnlyMem = ro > 0
	if !m.readOnlyMem {
		m.log.Warn("memguard: KVM lacks KVM_CAP_READONLY_MEM: integrity regions get no slot, so every read of them exits")
	}
	maxSlots := memguard.DefaultMaxSlots
	nr, err := m.vm.CheckExtension(kvm.CapNrMemslots)
	if err != nil {
		return err
	}
	if nr > 0 && nr-slotHeadroom < maxSlots {
		maxSlots = max(nr-slotHeadroom, len(m.mem.regions))
	}
	cfg := memguard.Config{
		Memory:       m.mem,
		Reserved:     []memguard.Range{{GPA: 0, Size: highMemStart}},
		MaxSlots:     maxSlots,
		MaxRegions:   maxRegions,
		InjectFaults: injectFaults,
		Logger:       m.log,
		// Pages are locked in applyLayout, with every vCPU out of the
		// guest (see changeSlots).
		DeferHostLock: true,
	}
	for _, r := range m.mem.regions {
		cfg.RAM = append(cfg.RAM, memguard.Range{GPA: r.GPA, Size: r.Size})
	}
	g, err := memguard.New(cfg)
	if err != nil {
		return err
	}
	m.guardCfg = cfg
	m.guard.Store(g)
	m.layoutGuard = g
	_, m.layoutGen, _ = g.Slots()
	return nil
}

// Memguard returns the machine's protected-memory registry. RestoreState
// replaces it.
func (m *Machine) Memguard() *memguard.Guard { return m.guard.Load() }

// runGuard checks owners and measures regions every memguardPeriod until
// ctx ends, applying the layout when owners were released (what
// memguard.Guard.Run does, on whichever guard the machine has now).
func (m *Machine) runGuard(ctx context.Context) {
	t := time.NewTicker(memguardPeriod)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		g := m.guard.Load()
		if g.CheckOwners() > 0 {
			if err := m.applyLayout(nil); err != nil {
				m.end(0, err)
				return
			}
		}
		if _, err := g.MeasureAll("periodic"); err != nil {
			m.log.Warn("memguard: periodic measurement", "err", err)
		}
	}
}

// guardContext is what memguard needs to know of the vCPU at an exit. The
// CPL is SS.DPL, which KVM reports as the CPL on both VMX and SVM.
func guardContext(id int, regs *kvm.Regs, s *kvm.Sregs) memguard.VCPUContext {
	return memguard.VCPUContext{VCPU: id, CR0: s.CR0, CR3: s.CR3, CR4: s.CR4, EFER: s.EFER, CPL: s.SS.DPL, RIP: regs.RIP}
}

// isGuardRequest says whether a port exit is a memguard request: one
// 32-bit OUT to memguard.Port. Other accesses to its ports go to the bus,
// where nothing claims them (IN reads all ones, OUT is dropped).
func isGuardRequest(io kvm.IOExit) bool {
	return io.Port == memguard.Port && io.Direction == kvm.IOOut && io.Size == 4 && io.Count == 1
}

// guardIO serves a memguard request on the vCPU's thread: registers in,
// registers out (KVM completes the OUT, moving RIP past it, at the next
// KVM_RUN), then the new slot layout before the vCPU runs again.
func (v *vcpu) guardIO() error {
	regs, err := v.cpu.GetRegs()
	if err != nil {
		return fmt.Errorf("vCPU %d: memguard request: %w", v.id, err)
	}
	sregs, err := v.cpu.GetSregs()
	if err != nil {
		return fmt.Errorf("vCPU %d: memguard request: %w", v.id, err)
	}
	res := v.m.guard.Load().HandleIO(guardContext(v.id, &regs, &sregs), memguard.Regs{
		RAX: regs.RAX, RBX: regs.RBX, RCX: regs.RCX, RDX: regs.RDX, RSI: regs.RSI, RDI: regs.RDI,
	})
	regs.RAX, regs.RBX, regs.RCX, regs.RSI, regs.RDI = res.Regs.RAX, res.Regs.RBX, res.Regs.RCX, res.Regs.RSI, res.Regs.RDI
	if err := v.cpu.SetRegs(&regs); err != nil {
		return fmt.Errorf("vCPU %d: memguard request: %w", v.id, err)
	}
	if res.LayoutChanged {
		return v.m.applyLayout(v)
	}
	return nil
}

// guardMMIO offers an MMIO exit to memguard and reports whether the
// access is done. Protected pages are mediated by the guard. RAM that is
// neither protected nor in a slot is a page memguard released a moment
// ago whose new slot is not applied yet: the access is completed on the
// backing page. Anything else is a device's.
func (v *vcpu) guardMMIO(gpa uint64, data []byte, write bool) (bool, error) {
	m := v.m
	n := uint64(len(data))
	if m.guard.Load().Protected(gpa, n) {
		return v.guardAccess(gpa, data, write)
	}
	if _, err := m.mem.offset(gpa, n); err != nil {
		return false, nil
	}
	if write {
		_ = m.mem.WriteAt(data, gpa)
	} else if m.mem.ReadAt(data, gpa) != nil {
		clear(data)
	}
	return true, nil
}

// guardAccess has the guard complete or refuse an access to a protected
// page.
func (v *vcpu) guardAccess(gpa uint64, data []byte, write bool) (bool, error) {
	regs, err := v.cpu.GetRegs()
	if err != nil {
		return true, fmt.Errorf("vCPU %d: protected access: %w", v.id, err)
	}
	sregs, err := v.cpu.GetSregs()
	if err != nil {
		return true, fmt.Errorf("vCPU %d: protected access: %w", v.id, err)
	}
	res := v.m.guard.Load().HandleAccess(guardContext(v.id, &regs, &sregs), gpa, data, write)
	if res.InjectFault {
		v.injectGP()
	}
	if res.LayoutChanged {
		if err := v.m.applyLayout(v); err != nil {
			return true, err
		}
	}
	return res.Handled, nil
}

// injectGP queues #GP(0) for the vCPU (KVM_SET_VCPU_EVENTS). KVM first
// completes the pending MMIO access at the next KVM_RUN (a refused read
// returns zeros), then delivers the fault; a failure is logged and the
// vCPU resumes without it.
func (v *vcpu) injectGP() {
	ev, err := v.cpu.GetVCPUEvents()
	if err == nil {
		ev.Exception = kvm.VCPUEventsException{Injected: 1, Nr: 13, HasErrorCode: 1, ErrorCode: 0}
		err = v.cpu.SetVCPUEvents(&ev)
	}
	if err != nil {
		v.m.log.Error("memguard: cannot inject #GP", "vcpu", v.id, "err", err)
	}
}

// deviceMemory is guest RAM as the emulated devices see it: through the
// machine's current guard (memguard.Guard.DMA), so that a guest kernel
// cannot have a device read a confidential page or write any protected
// page for it. Each refusal is a violation; the device sees an error,
// as for memory outside RAM.
type deviceMemory struct{ m *Machine }

func (d deviceMemory) Slice(gpa, n uint64) ([]byte, error) {
	g := d.m.guard.Load()
	if !g.Protected(gpa, n) {
		return d.m.mem.Slice(gpa, n)
	}
	return g.DMA(d.m.mem).Slice(gpa, n) // refused, and counted
}

func (d deviceMemory) WriteAt(p []byte, gpa uint64) error {
	g := d.m.guard.Load()
	if !g.Protected(gpa, uint64(len(p))) {
		return d.m.mem.WriteAt(p, gpa)
	}
	return g.DMA(d.m.mem).WriteAt(p, gpa) // refused, and counted
}

func (d deviceMemory) MarkDirty(gpa, n uint64) { d.m.mem.MarkDirty(gpa, n) }
