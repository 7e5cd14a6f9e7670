package vmm

import (
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/gvmm/gvmm/kvm"
	"github.com/gvmm/gvmm/virtio"
	"github.com/gvmm/gvmm/virtio/blk"
	"github.com/gvmm/gvmm/virtio/rng"
	"golang.org/x/sys/unix"
)

// DiskConfig is a virtio-blk disk backed by a raw image file.
type DiskConfig struct {
	Path     string
	ReadOnly bool
}

// virtioDevice is a virtio-pci function on bus 0 and what backs it.
type virtioDevice struct {
	name    string
	pci     *virtio.PCI
	backend io.Closer // nil when the device holds no host resource
	// notify holds one eventfd per queue, bound with KVM_IOEVENTFD to the
	// queue's notification address, so a guest kick reaches the device
	// without a trip through a vCPU exit handler.
	notify []*os.File
}

// openDisks opens every disk image before anything else is built, so a
// missing or unreadable image is reported as such, on any host.
func openDisks(disks []DiskConfig, log *slog.Logger) ([]*blk.Device, error) {
	var out []*blk.Device
	for i, d := range disks {
		dev, err := blk.Open(d.Path, blk.Options{ReadOnly: d.ReadOnly, Serial: fmt.Sprintf("gvmm-disk%d", i), Log: log})
		if err != nil {
			for _, o := range out {
				o.Close()
			}
			return nil, fmt.Errorf("disk %s: %w", d.Path, err)
		}
		out = append(out, dev)
	}
	return out, nil
}

// addVirtio wraps dev in a virtio-pci function, gives it the next BAR
// window of the PCI memory hole and a slot on bus 0.
func (m *Machine) addVirtio(name string, dev virtio.Device, backend io.Closer) error {
	bar := pciMMIOBase + uint64(len(m.virtio))*virtio.BARSize
	if bar+virtio.BARSize > pciMMIOEnd {
		return fmt.Errorf("%s: no room left for its BAR in the PCI window", name)
	}
	p, err := virtio.NewPCI(dev, m.mem, &msiInterrupter{router: m.msi, log: m.log, name: name}, virtio.PCIOptions{
		BARAddr: bar,
		Log:     m.log.With("device", name),
	})
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if _, err := m.pci.add(p); err != nil {
		p.Close()
		return fmt.Errorf("%s: %w", name, err)
	}
	d := &virtioDevice{name: name, pci: p, backend: backend}
	m.virtio = append(m.virtio, d)
	return m.bindNotify(d, bar)
}

// bindNotify binds an ioeventfd to each queue's notification address in
// the BAR and forwards its events to the device. If the guest moves the
// BAR, the old bindings go stale and notifications fall back to MMIO exits
// (BARWrite), which reach the device as well.
func (m *Machine) bindNotify(d *virtioDevice, bar uint64) error {
	for q := 0; q < d.pci.NumQueues(); q++ {
		fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
		if err != nil {
			return fmt.Errorf("%s: eventfd: %w", d.name, err)
		}
		f := os.NewFile(uintptr(fd), fmt.Sprintf("%s-notify%d", d.name, q))
		if err := m.vm.IOEventFD(&kvm.IOEventFD{
			Addr: bar + d.pci.NotifyOffset(q),
			Len:  2, // the driver writes the 16-bit queue index
			FD:   int32(fd),
		}); err != nil {
			f.Close()
			return fmt.Errorf("%s: queue %d: %w", d.name, q, err)
		}
		d.notify = append(d.notify, f)
		go forwardNotify(f, d.pci, q)
	}
	return nil
}

// forwardNotify turns each eventfd count into a queue notification until
// the eventfd is closed.
func forwardNotify(f *os.File, p *virtio.PCI, q int) {
	buf := make([]byte, 8)
	for {
		if _, err := f.Read(buf); err != nil {
			return
		}
		p.Notify(q)
	}
}

// wireVirtio attaches the disks and an entropy device. It owns disks: each
// is either wired (and closed with the machine) or closed here.
func (m *Machine) wireVirtio(disks []*blk.Device) error {
	m.msi = newMSIRouter(m.vm, m.log)
	for i, d := range disks {
		if err := m.addVirtio(fmt.Sprintf("virtio-blk%d", i), d, d); err != nil {
			for _, rest := range disks[i:] {
				rest.Close()
			}
			return err
		}
	}
	return m.addVirtio("virtio-rng", rng.New(nil), nil)
}

// mmio dispatches an MMIO exit to the virtio function whose BAR holds
// gpa; it reports whether one did.
func (m *Machine) mmio(gpa uint64, data []byte, write bool) bool {
	for _, d := range m.virtio {
		base, on := d.pci.BAR0()
		if !on || gpa < base || gpa-base >= virtio.BARSize || gpa-base+uint64(len(data)) > virtio.BARSize {
			continue
		}
		if write {
			d.pci.BARWrite(gpa-base, data)
		} else {
			d.pci.BARRead(gpa-base, data)
		}
		return true
	}
	return false
}

// closeVirtio stops every device's workers, then releases its backend.
func (m *Machine) closeVirtio() []error {
	var errs []error
	for _, d := range m.virtio {
		for _, f := range d.notify {
			errs = append(errs, f.Close())
		}
		errs = append(errs, d.pci.Close())
		if d.backend != nil {
			errs = append(errs, d.backend.Close())
		}
	}
	m.virtio = nil
	if m.msi != nil {
		errs = append(errs, m.msi.close()...)
	}
	return errs
}

// msiInterrupter delivers a function's MSI-X messages through the
// machine's irqfd router. INTx is not routed: the DSDT has no _PRT, and
// Linux's virtio-pci driver uses MSI-X, which these functions always
// offer.
type msiInterrupter struct {
	router *msiRouter
	log    *slog.Logger
	name   string
}

func (i *msiInterrupter) MSIX(vector uint16, msg virtio.MSIMessage) {
	if err := i.router.signal(i.name, vector, msg); err != nil {
		i.log.Error("deliver MSI-X", "device", i.name, "vector", vector, "err", err)
	}
}

func (i *msiInterrupter) INTx(asserted bool) {
	i.log.Debug("INTx is not routed; the guest driver must use MSI-X", "device", i.name, "asserted", asserted)
}
