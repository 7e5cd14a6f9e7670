package vmm

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	stdnet "net"
	"os"

	"github.com/gvmm/gvmm/kvm"
	"github.com/gvmm/gvmm/virtio"
	"github.com/gvmm/gvmm/virtio/blk"
	"github.com/gvmm/gvmm/virtio/console"
	virtionet "github.com/gvmm/gvmm/virtio/net"
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
	// doorbells holds one eventfd per queue, bound with KVM_IOEVENTFD to
	// the queue's notification address, so a guest kick reaches the device
	// without a trip through a vCPU exit handler; the queue's worker waits
	// on it directly. Closed after pci.
	doorbells []*virtio.Doorbell
}

// NetConfig is a virtio-net device on a TAP interface: an existing TAP
// named TAP, or one gvmm creates (and brings up, on Bridge if given).
type NetConfig struct {
	TAP    string
	Bridge string
	MAC    stdnet.HardwareAddr // nil: a random locally administered address
}

// pendingDevice is a device whose host side is open but which is not on
// the PCI bus yet.
type pendingDevice struct {
	name    string
	dev     virtio.Device
	backend io.Closer
}

// openDevices opens every device's host side (disk images, TAPs, the
// channel socket) before anything else is built, so a missing image, a
// TAP name taken by another kind of link or a missing permission is
// reported as such, on any host. On error nothing stays open.
func openDevices(cfg *Config, log *slog.Logger) (devs []pendingDevice, err error) {
	defer func() {
		if err != nil {
			closePending(devs)
			devs = nil
		}
	}()
	for i, d := range cfg.Disks {
		dev, err := blk.Open(d.Path, blk.Options{ReadOnly: d.ReadOnly, Serial: fmt.Sprintf("gvmm-disk%d", i), Log: log})
		if err != nil {
			return devs, fmt.Errorf("disk %s: %w", d.Path, err)
		}
		devs = append(devs, pendingDevice{fmt.Sprintf("virtio-blk%d", i), dev, dev})
	}
	for i, n := range cfg.Nets {
		tap, err := virtionet.OpenTAP(n.TAP, virtionet.TAPOptions{Bridge: n.Bridge})
		if err != nil {
			return devs, fmt.Errorf("net %s: %w", n.TAP, err)
		}
		dev, err := virtionet.New(tap, virtionet.Options{MAC: n.MAC, Log: log})
		if err != nil { // New closed the TAP
			return devs, fmt.Errorf("net %s: %w", n.TAP, err)
		}
		devs = append(devs, pendingDevice{fmt.Sprintf("virtio-net%d", i), dev, dev})
	}
	if cfg.Channel != "" {
		dev, closer, err := openChannel(cfg.Channel, log)
		if err != nil {
			return devs, err
		}
		devs = append(devs, pendingDevice{"virtio-console", dev, closer})
	}
	devs = append(devs, pendingDevice{"virtio-rng", rng.New(nil), nil})
	return devs, nil
}

func closePending(devs []pendingDevice) {
	for _, d := range devs {
		if d.backend != nil {
			d.backend.Close()
		}
	}
}

// openChannel makes the host-guest channel: a virtio-console port (the
// guest's /dev/hvc0) relayed to one connection at a time on a unix socket
// at path (mode 0600). A stale socket there is replaced; any other file is
// an error.
func openChannel(path string, log *slog.Logger) (*console.Device, io.Closer, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, nil, fmt.Errorf("channel %s: a file that is not a socket is in the way", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, nil, fmt.Errorf("channel %s: remove stale socket: %w", path, err)
		}
	}
	old := unix.Umask(0o177)
	ln, err := stdnet.Listen("unix", path)
	unix.Umask(old)
	if err != nil {
		return nil, nil, fmt.Errorf("channel: %w", err)
	}
	dev := console.New(console.Options{Log: log})
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			log.Info("channel connected", "path", path)
			<-dev.SetHost(conn)
			log.Info("channel disconnected", "path", path)
		}
	}()
	return dev, closerFunc(func() error {
		err := ln.Close()
		return errors.Join(err, dev.Close())
	}), nil
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }

// addVirtio wraps dev in a virtio-pci function, gives it the next BAR
// window of the PCI memory hole and a slot on bus 0.
func (m *Machine) addVirtio(name string, dev virtio.Device, backend io.Closer) error {
	bar := pciMMIOBase + uint64(len(m.virtio))*virtio.BARSize
	if bar+virtio.BARSize > pciMMIOEnd {
		return fmt.Errorf("%s: no room left for its BAR in the PCI window", name)
	}
	dbs := make([]*virtio.Doorbell, len(dev.QueueSizes()))
	for q := range dbs {
		db, err := virtio.NewDoorbell()
		if err != nil {
			closeDoorbells(dbs)
			return fmt.Errorf("%s: queue %d: %w", name, q, err)
		}
		dbs[q] = db
	}
	p, err := virtio.NewPCI(dev, deviceMemory{m}, &msiInterrupter{router: m.msi, log: m.log, name: name}, virtio.PCIOptions{
		BARAddr:   bar,
		Doorbells: dbs,
		Log:       m.log.With("device", name),
	})
	if err != nil {
		closeDoorbells(dbs)
		return fmt.Errorf("%s: %w", name, err)
	}
	if _, err := m.pci.add(p); err != nil {
		p.Close()
		closeDoorbells(dbs)
		return fmt.Errorf("%s: %w", name, err)
	}
	d := &virtioDevice{name: name, pci: p, backend: backend, doorbells: dbs}
	m.virtio = append(m.virtio, d)
	return m.bindNotify(d, bar)
}

func closeDoorbells(dbs []*virtio.Doorbell) []error {
	var errs []error
	for _, db := range dbs {
		if db != nil {
			errs = append(errs, db.Close())
		}
	}
	return errs
}

// bindNotify binds each queue's doorbell as an ioeventfd at the queue's
// notification address in the BAR. If the guest moves the BAR, the old
// bindings go stale and notifications fall back to MMIO exits (BARWrite),
// which reach the device as well.
func (m *Machine) bindNotify(d *virtioDevice, bar uint64) error {
	for q, db := range d.doorbells {
		if err := m.vm.IOEventFD(&kvm.IOEventFD{
			Addr: bar + d.pci.NotifyOffset(q),
			Len:  2, // the driver writes the 16-bit queue index
			FD:   int32(db.FD()),
		}); err != nil {
			return fmt.Errorf("%s: queue %d: %w", d.name, q, err)
		}
	}
	return nil
}

// wireVirtio puts the opened devices on the PCI bus. It owns devs: each is
// either wired (and closed with the machine) or closed here.
func (m *Machine) wireVirtio(devs []pendingDevice) error {
	m.msi = newMSIRouter(m.vm, m.log)
	for i, d := range devs {
		if err := m.addVirtio(d.name, d.dev, d.backend); err != nil {
			closePending(devs[i:])
			return err
		}
	}
	return nil
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
		errs = append(errs, d.pci.Close())
		errs = append(errs, closeDoorbells(d.doorbells)...)
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
