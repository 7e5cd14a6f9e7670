package vmm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/gvmm/gvmm/internal/sched"
	"github.com/gvmm/gvmm/kvm"
	"golang.org/x/sys/unix"
)

// vcpu is one virtual CPU and the goroutine that runs it.
type vcpu struct {
	id  int
	cpu *kvm.VCPU
	m   *Machine

	// tid is the OS thread running the vCPU, 0 until it started.
	tid atomic.Int32
	// stop asks the vCPU loop to return at its next exit.
	stop atomic.Bool
	// cmds carries work to the vCPU's thread while it is parked; wake
	// tells a parked vCPU to look at stop.
	cmds chan func()
	wake chan struct{}
	// throttleDue asks the vCPU to sit out its throttle share.
	throttleDue atomic.Bool
	// inGuest is set while the vCPU is in, or about to enter, KVM_RUN
	// (see Machine.holdVCPUs).
	inGuest atomic.Bool
	// exits counts exits handled in user space; written only by the vCPU
	// thread, read after it stopped.
	exits ExitCounts
	// tscScaled is set when a restore gave the guest a TSC rate other
	// than this host's (tsc.go); only the vCPU thread touches it.
	tscScaled bool
}

// ExitCounts counts the exits that reached gvmm: port I/O by port, MMIO,
// and everything else. Under nested KVM each one is expensive, so these
// say where boot time goes.
type ExitCounts struct {
	IO    map[uint16]uint64
	MMIO  uint64
	Other uint64
}

func (c *ExitCounts) add(o *ExitCounts) {
	if c.IO == nil {
		c.IO = make(map[uint16]uint64)
	}
	for p, n := range o.IO {
		c.IO[p] += n
	}
	c.MMIO += o.MMIO
	c.Other += o.Other
}

// interrupt makes the vCPU leave KVM_RUN (or not enter it) so that its loop
// looks at its flags again. Safe from any goroutine.
func (v *vcpu) interrupt() {
	v.cpu.SetImmediateExit(true)
	if tid := v.tid.Load(); tid != 0 {
		// SIGURG is the Go runtime's preemption signal: handled and
		// otherwise ignored, so it only interrupts KVM_RUN.
		_ = unix.Tgkill(unix.Getpid(), int(tid), unix.SIGURG)
	}
}

// park holds the vCPU outside KVM_RUN while the machine is paused, running
// the commands sent to it (state capture and restore happen on the vCPU's
// own thread). On the way out it tells the guest's kvmclock that the vCPU
// was stopped, so the guest does not report a soft lockup for the pause.
func (v *vcpu) park() {
	m := v.m
	m.pauseMu.Lock()
	resume := m.resumeCh
	m.parked++
	if m.parked == len(m.vcpus) && m.allParked != nil {
		select {
		case <-m.allParked: // a vCPU that left on a stop came back
		default:
			close(m.allParked) // Pause returns
		}
	}
	m.pauseMu.Unlock()
wait:
	for {
		select {
		case <-resume:
			break wait
		case f := <-v.cmds:
			f()
		case <-v.wake:
			if v.stop.Load() {
				break wait
			}
		}
	}
	m.pauseMu.Lock()
	m.parked--
	m.pauseMu.Unlock()
	if err := v.cpu.KVMClockCtrl(); err != nil && !errors.Is(err, unix.EINVAL) {
		// EINVAL: the guest has not enabled kvmclock on this vCPU.
		m.log.Debug("KVM_KVMCLOCK_CTRL", "vcpu", v.id, "err", err)
	}
}

// do runs f on the parked vCPU's thread and returns its error.
func (v *vcpu) do(ctx context.Context, f func() error) error {
	done := make(chan error, 1)
	select {
	case v.cmds <- func() { done <- f() }:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// kick asks the vCPU to leave KVM_RUN and return. Safe from any goroutine:
// stop is set first, then immediate_exit, then the thread is signalled; the
// loop clears immediate_exit before it reads stop, so a kick is never lost.
func (v *vcpu) kick() {
	v.stop.Store(true)
	v.interrupt()
	select {
	case v.wake <- struct{}{}: // a parked vCPU sees stop
	default:
	}
}

// run is the vCPU thread. It owns every ioctl on the vCPU fd. It returns
// nil when stopped, or the error that should end the machine.
func (v *vcpu) run(started chan<- struct{}) error {
	runtime.LockOSThread()
	// The thread is never unlocked: it exits with the goroutine, so no
	// other goroutine inherits a thread that KVM has seen.
	v.tid.Store(int32(unix.Gettid()))
	// Named as QEMU names its "CPU 0/KVM": top -H, perf and benchmarks
	// (tests/nested/migbench) tell the guest's CPU time from gvmm's own.
	// A name is a convenience; failing to set one changes nothing else.
	_ = os.WriteFile("/proc/thread-self/comm", []byte(fmt.Sprintf("vcpu%d", v.id)), 0)
	started <- struct{}{}
	// A vCPU goes from KVM_RUN to KVM_RUN without the scheduler: pass
	// through it now and then so that sysmon does not keep taking the P
	// and polling every 20 us (package sched). Locked to its thread, each
	// pass costs two thread wake-ups, hence the longer period. While a
	// migration copies memory its workers keep every CPU busy, those
	// wake-ups wait for a CPU, and the Yielder backs off.
	yield := sched.Yielder{Every: 5 * time.Millisecond}
	// exited and handled: when the last KVM_RUN returned with an exit to
	// serve, and when serving it ended.
	var exited, handled time.Time
	for {
		yield.Backoff = v.m.precopy.Load()
		yielded := yield.Maybe()
		if !exited.IsZero() {
			if d := time.Since(exited); d >= slowExit {
				attrs := []any{"vcpu", v.id, "reason", v.cpu.ExitReason(), "took", d,
					"serve", handled.Sub(exited), "yielded", yielded, "yield_period", yield.Period()}
				if v.cpu.ExitReason() == kvm.ExitIO {
					io := v.cpu.IO()
					attrs = append(attrs, "port", fmt.Sprintf("%#x", io.Port), "out", io.Direction == kvm.IOOut)
				}
				v.m.log.Debug("slow vCPU exit timing", attrs...)
			}
			exited = time.Time{}
		}
		// Throttling first: a tick that lands while the vCPU sleeps sets
		// immediate_exit again, which must be cleared before KVM_RUN or
		// the guest would never run at all.
		v.throttled()
		v.cpu.SetImmediateExit(false)
		if v.stop.Load() {
			if regs, err := v.cpu.GetRegs(); err == nil {
				sregs, _ := v.cpu.GetSregs()
				mp, _ := v.cpu.GetMPState()
				v.m.log.Debug("vCPU stopped", "vcpu", v.id, "rip", fmt.Sprintf("%#x", regs.RIP),
					"cs", fmt.Sprintf("%#x/%#x", sregs.CS.Selector, sregs.CS.Base), "cr0", fmt.Sprintf("%#x", sregs.CR0),
					"efer", fmt.Sprintf("%#x", sregs.EFER), "rflags", fmt.Sprintf("%#x", regs.RFLAGS), "mp", mp.State)
			}
			return nil
		}
		if v.m.pausePending.Load() {
			if err := v.completePending(); err != nil {
				return err
			}
			v.park()
			continue
		}
		v.inGuest.Store(true)
		if v.m.layoutHold.Load() {
			v.inGuest.Store(false)
			v.m.waitLayout()
			continue
		}
		err := v.cpu.Run()
		v.inGuest.Store(false)
		if err != nil {
			if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
				continue // a signal or a kick: look at stop, then re-enter
			}
			return fmt.Errorf("vCPU %d: %w", v.id, err)
		}
		exited = time.Now()
		if err := v.handleExit(); err != nil {
			return err
		}
		handled = time.Now()
	}
}

// slowExit is how long serving one exit may take, the pass through the
// scheduler included (throttling and pauses are not counted), before a
// debug line says so: the vCPU is out of the guest all that time. Its
// "serve" field is handleExit's share, "yielded" says whether the loop
// yielded; the rest is the wait for a P.
const slowExit = 20 * time.Millisecond

// maxCompletionExits bounds the exits one completePending may service
// (a string I/O instruction goes back to userspace once per chunk).
const maxCompletionExits = 4096

// completePending finishes the access the guest was in the middle of at
// its last exit, before the vCPU parks: KVM puts an "in" or MMIO read's
// value in its register and moves RIP past the instruction only on the
// next KVM_RUN, and immediate_exit makes that KVM_RUN return before any
// further guest instruction. The KVM API says state is consistent only
// then. Without it, a saved vCPU sits on the access it already made, and
// the restored guest makes it again: reading the UART's IIR twice lost
// its transmit interrupt after a migration, and the console stalled.
func (v *vcpu) completePending() error {
	for range maxCompletionExits {
		v.cpu.SetImmediateExit(true)
		err := v.cpu.Run()
		if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
			return nil // nothing (more) was pending
		}
		if err != nil {
			return fmt.Errorf("vCPU %d: complete pending I/O: %w", v.id, err)
		}
		if err := v.handleExit(); err != nil {
			return err
		}
	}
	return fmt.Errorf("vCPU %d: pending I/O still unfinished after %d exits", v.id, maxCompletionExits)
}

// handleExit services one exit from KVM_RUN.
func (v *vcpu) handleExit() error {
	r := v.cpu.ExitReason()
	if r != kvm.ExitIO && r != kvm.ExitMMIO {
		v.exits.Other++
		v.m.log.Debug("exit", "vcpu", v.id, "reason", r)
	}
	switch r {
	case kvm.ExitIO:
		io := v.cpu.IO()
		if v.exits.IO == nil {
			v.exits.IO = make(map[uint16]uint64)
		}
		v.exits.IO[io.Port]++
		if isGuardRequest(io) {
			return v.guardIO()
		}
		size := int(io.Size)
		if size == 0 || len(io.Data) < size*int(io.Count) {
			return v.guestError(fmt.Sprintf("malformed port I/O exit (port %#x size %d count %d)", io.Port, io.Size, io.Count))
		}
		for i := 0; i < int(io.Count); i++ {
			d := io.Data[i*size : (i+1)*size]
			if io.Direction == kvm.IOOut {
				if !v.m.bus.write(io.Port, d) {
					v.m.log.Debug("write to unclaimed port", "vcpu", v.id, "port", io.Port, "size", size)
				}
			} else if !v.m.bus.read(io.Port, d) {
				v.m.log.Debug("read from unclaimed port", "vcpu", v.id, "port", io.Port, "size", size)
			}
		}
	case kvm.ExitMMIO:
		v.exits.MMIO++
		mmio := v.cpu.MMIO()
		if done, err := v.guardMMIO(mmio.PhysAddr, mmio.Data, mmio.IsWrite); err != nil || done {
			return err
		}
		if v.m.mmio(mmio.PhysAddr, mmio.Data, mmio.IsWrite) {
			break
		}
		if !mmio.IsWrite {
			for i := range mmio.Data {
				mmio.Data[i] = 0xff
			}
		}
		v.m.log.Debug("access to unclaimed MMIO", "vcpu", v.id, "addr", mmio.PhysAddr, "write", mmio.IsWrite)
	case kvm.ExitIntr:
		// Interrupted before entering the guest: like EINTR.
	case kvm.ExitShutdown:
		// No RIP: after a shutdown intercept the vCPU state is
		// undefined (on AMD, KVM has already reset it).
		return &GuestError{VCPU: v.id, Reason: "triple fault (KVM_EXIT_SHUTDOWN) without a reset request"}
	case kvm.ExitSystemEvent:
		ev := v.cpu.SystemEvent()
		switch ev.Type {
		case kvm.SystemEventShutdown:
			v.m.end(ExitPowerOff, nil)
		case kvm.SystemEventReset:
			v.m.end(ExitReboot, nil)
		default:
			return v.guestError(fmt.Sprintf("system event %d (KVM_EXIT_SYSTEM_EVENT)", ev.Type))
		}
	case kvm.ExitInternalError:
		ie := v.cpu.InternalError()
		return v.guestError(fmt.Sprintf("KVM internal error: %s (KVM_EXIT_INTERNAL_ERROR suberror %d, data %#x)",
			internalErrorName(ie.Suberror), ie.Suberror, ie.Data))
	case kvm.ExitFailEntry:
		fe := v.cpu.FailEntry()
		return v.guestError(fmt.Sprintf("VM entry failed (KVM_EXIT_FAIL_ENTRY, hardware reason %#x on host CPU %d)",
			fe.HardwareEntryFailureReason, fe.CPU))
	default:
		return v.guestError(fmt.Sprintf("unexpected exit %v", r))
	}
	return nil
}

func internalErrorName(sub uint32) string {
	switch sub {
	case kvm.InternalErrorEmulation:
		return "emulation failure"
	case kvm.InternalErrorSimulEx:
		return "exception while delivering an exception"
	case kvm.InternalErrorDeliveryEv:
		return "exit while delivering an event"
	case kvm.InternalErrorUnexpectedExitReason:
		return "unexpected exit reason"
	}
	return "unknown"
}

// guestError builds the error that ends the machine, with the guest's RIP
// when it can still be read (this runs on the vCPU's own thread).
func (v *vcpu) guestError(reason string) error {
	e := &GuestError{VCPU: v.id, Reason: reason}
	if regs, err := v.cpu.GetRegs(); err == nil {
		e.RIP = regs.RIP
	}
	return e
}
