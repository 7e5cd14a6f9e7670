package vmm

import (
	"fmt"
	"log/slog"
	"os"
	"sync"

	"github.com/gvmm/gvmm/kvm"
	"github.com/gvmm/gvmm/virtio"
	"golang.org/x/sys/unix"
)

// msiRouter delivers MSI-X messages through irqfds: each (function,
// vector) pair gets its own GSI with an MSI route and an eventfd bound to
// it with KVM_IRQFD, so raising an interrupt is one write(2) on the
// device's thread and KVM injects it. The route is rewritten only when the
// guest reprograms the vector's message.
//
// KVM_SET_GSI_ROUTING replaces the whole table, so the router keeps KVM's
// default irqchip routes for GSIs 0-23 (IOAPIC pin = GSI, and the PICs for
// 0-15) in front of the MSI routes.
type msiRouter struct {
	vm  *kvm.VM
	log *slog.Logger

	mu      sync.Mutex
	routes  []kvm.IRQRoutingEntry
	vectors map[msiKey]*msiVector
	nextGSI uint32
	files   []*os.File
}

type msiKey struct {
	fn     string
	vector uint16
}

type msiVector struct {
	index int // into routes
	msg   virtio.MSIMessage
	fd    *os.File
}

const firstMSIGSI = 24 // after the IOAPIC's 24 pins

func newMSIRouter(vm *kvm.VM, log *slog.Logger) *msiRouter {
	r := &msiRouter{vm: vm, log: log, vectors: make(map[msiKey]*msiVector), nextGSI: firstMSIGSI}
	for gsi := uint32(0); gsi < 24; gsi++ {
		r.routes = append(r.routes, kvm.IRQChipRoute(gsi, kvm.IRQChipIOAPIC, gsi))
		if gsi < 8 {
			r.routes = append(r.routes, kvm.IRQChipRoute(gsi, kvm.IRQChipPICMaster, gsi))
		} else if gsi < 16 {
			r.routes = append(r.routes, kvm.IRQChipRoute(gsi, kvm.IRQChipPICSlave, gsi-8))
		}
	}
	return r
}

// signal raises fn's vector with msg.
func (r *msiRouter) signal(fn string, vector uint16, msg virtio.MSIMessage) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	k := msiKey{fn, vector}
	v, ok := r.vectors[k]
	if !ok {
		var err error
		if v, err = r.bindLocked(msg); err != nil {
			return err
		}
		r.vectors[k] = v
	} else if v.msg != msg {
		r.routes[v.index] = msiRoute(r.routes[v.index].GSI, msg)
		if err := r.vm.SetGSIRouting(r.routes); err != nil {
			return err
		}
		v.msg = msg
	}
	_, err := v.fd.Write([]byte{1, 0, 0, 0, 0, 0, 0, 0})
	if err != nil {
		return fmt.Errorf("write irqfd: %w", err)
	}
	return nil
}

// bindLocked gives a new vector a GSI, its route and an irqfd.
func (r *msiRouter) bindLocked(msg virtio.MSIMessage) (*msiVector, error) {
	gsi := r.nextGSI
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("irqfd eventfd: %w", err)
	}
	f := os.NewFile(uintptr(fd), fmt.Sprintf("irqfd-gsi%d", gsi))
	r.routes = append(r.routes, msiRoute(gsi, msg))
	if err := r.vm.SetGSIRouting(r.routes); err != nil {
		r.routes = r.routes[:len(r.routes)-1]
		f.Close()
		return nil, err
	}
	if err := r.vm.IRQFD(&kvm.IRQFD{FD: uint32(fd), GSI: gsi}); err != nil {
		f.Close()
		return nil, err
	}
	r.nextGSI++
	r.files = append(r.files, f)
	return &msiVector{index: len(r.routes) - 1, msg: msg, fd: f}, nil
}

func msiRoute(gsi uint32, msg virtio.MSIMessage) kvm.IRQRoutingEntry {
	return kvm.MSIRoute(gsi, 0, kvm.IRQRoutingMSI{AddressLo: uint32(msg.Addr), AddressHi: uint32(msg.Addr >> 32), Data: msg.Data})
}

// close releases the eventfds; KVM drops the irqfds with the VM.
func (r *msiRouter) close() []error {
	r.mu.Lock()
	defer r.mu.Unlock()
	var errs []error
	for _, f := range r.files {
		errs = append(errs, f.Close())
	}
	r.files = nil
	return errs
}
