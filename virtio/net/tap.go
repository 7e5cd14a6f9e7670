package net

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"syscall"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

const tunPath = "/dev/net/tun"

// TAPOptions configure OpenTAP. The zero value attaches to no bridge.
type TAPOptions struct {
	// Bridge, when set, names an existing bridge the TAP is made a port
	// of.
	Bridge string
}

// TAP is a Backend over a Linux TAP interface opened with IFF_VNET_HDR.
// Close it (or the Device that owns it) to release it; a TAP that OpenTAP
// created disappears then.
//
// Its descriptor is non-blocking but kept out of the Go runtime's poller:
// the device's event loop waits for it in its own epoll set, and had the
// runtime's poller the descriptor too, every packet would also wake the
// runtime's polling thread, for nothing. WaitPacket and a writev that
// finds the TAP's queue full wait with poll(2) instead.
type TAP struct {
	name string
	fd   int      // f's descriptor, for PollFD and poll(2)
	f    *os.File // made while fd was blocking: not in the runtime's poller
	rc   syscall.RawConn
	// wake is an eventfd that ends a WaitPacket when its context ends.
	wake *os.File
	// offloads are the OffloadFeatures the kernel's TAP can carry.
	offloads uint64
	// created is whether OpenTAP made the interface.
	created bool
}

var _ PollBackend = (*TAP)(nil)

// OpenTAP opens the TAP interface name, creating it when no interface has
// that name, and brings it up (through netlink), attached to
// opts.Bridge if set. An existing TAP is reused. A name that exists as
// another kind of link, a bridge that is not a bridge, and a missing
// permission each give one error that says so.
func OpenTAP(name string, opts TAPOptions) (*TAP, error) {
	if name == "" || len(name) >= unix.IFNAMSIZ {
		return nil, fmt.Errorf("virtio-net: TAP name %q must be 1 to %d bytes", name, unix.IFNAMSIZ-1)
	}
	existing, err := netlink.LinkByName(name)
	var notFound netlink.LinkNotFoundError
	switch {
	case errors.As(err, &notFound):
		existing = nil
	case err != nil:
		return nil, fmt.Errorf("virtio-net: look up %q: %w", name, err)
	default:
		if tt, ok := existing.(*netlink.Tuntap); !ok || tt.Mode != netlink.TUNTAP_MODE_TAP {
			return nil, fmt.Errorf("virtio-net: %q exists as a %s link, not a TAP", name, linkKind(existing))
		}
	}
	var bridge netlink.Link
	if opts.Bridge != "" {
		bridge, err = netlink.LinkByName(opts.Bridge)
		if errors.As(err, &notFound) {
			return nil, fmt.Errorf("virtio-net: bridge %q does not exist", opts.Bridge)
		}
		if err != nil {
			return nil, fmt.Errorf("virtio-net: look up bridge %q: %w", opts.Bridge, err)
		}
		if _, ok := bridge.(*netlink.Bridge); !ok {
			return nil, fmt.Errorf("virtio-net: %q is a %s link, not a bridge", opts.Bridge, linkKind(bridge))
		}
	}

	fd, err := unix.Open(tunPath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, os.ErrPermission) {
			return nil, fmt.Errorf("virtio-net: TAP %q: no permission to open %s (needs CAP_NET_ADMIN or access to it): %w", name, tunPath, err)
		}
		return nil, fmt.Errorf("virtio-net: TAP %q: open %s: %w", name, tunPath, err)
	}
	t := &TAP{name: name, fd: fd, created: existing == nil}
	if err := t.setup(fd); err != nil {
		unix.Close(fd)
		return nil, err
	}
	// os.NewFile puts a descriptor in the runtime's poller only if it is
	// non-blocking when it is wrapped; O_NONBLOCK comes after.
	t.f = os.NewFile(uintptr(fd), tunPath+":"+name)
	if t.rc, err = t.f.SyscallConn(); err != nil {
		t.f.Close()
		return nil, fmt.Errorf("virtio-net: TAP %q: %w", name, err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		t.f.Close()
		return nil, fmt.Errorf("virtio-net: TAP %q: set non-blocking: %w", name, err)
	}
	wfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC) // blocking: not in the poller either
	if err != nil {
		t.f.Close()
		return nil, fmt.Errorf("virtio-net: TAP %q: eventfd: %w", name, err)
	}
	t.wake = os.NewFile(uintptr(wfd), "tap-wake:"+name)
	if err := t.configure(bridge); err != nil {
		t.f.Close()
		t.wake.Close()
		return nil, err
	}
	return t, nil
}

// setup attaches fd to the interface (TUNSETIFF), sets the vnet header
// size and probes the offloads, on the raw fd before the poller has it.
func (t *TAP) setup(fd int) error {
	ifr, err := unix.NewIfreq(t.name)
	if err != nil {
		return fmt.Errorf("virtio-net: TAP name %q: %w", t.name, err)
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		switch {
		case errors.Is(err, os.ErrPermission):
			return fmt.Errorf("virtio-net: TAP %q: no permission to create or attach it (needs CAP_NET_ADMIN, or a persistent TAP owned by this user): TUNSETIFF: %w", t.name, err)
		case errors.Is(err, unix.EBUSY):
			return fmt.Errorf("virtio-net: TAP %q is in use by another process: TUNSETIFF: %w", t.name, err)
		case errors.Is(err, unix.EINVAL):
			return fmt.Errorf("virtio-net: %q exists and is not a TAP: TUNSETIFF: %w", t.name, err)
		}
		return fmt.Errorf("virtio-net: TAP %q: TUNSETIFF: %w", t.name, err)
	}
	if err := unix.IoctlSetPointerInt(fd, unix.TUNSETVNETHDRSZ, HeaderLen); err != nil {
		return fmt.Errorf("virtio-net: TAP %q: TUNSETVNETHDRSZ: %w", t.name, err)
	}
	// The kernel takes checksum-offloaded and GSO packets from a vnet-hdr
	// TAP whatever TUNSETOFFLOAD says; TUNSETOFFLOAD is about what it may
	// hand us, so probe it.
	t.offloads = FCsum | FHostTSO4 | FHostTSO6 | FHostECN
	all := unix.TUN_F_CSUM | unix.TUN_F_TSO4 | unix.TUN_F_TSO6 | unix.TUN_F_TSO_ECN
	if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, all); err == nil {
		t.offloads |= FGuestCsum | FGuestTSO4 | FGuestTSO6 | FGuestECN
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, 0); err != nil {
		return fmt.Errorf("virtio-net: TAP %q: TUNSETOFFLOAD: %w", t.name, err)
	}
	return nil
}

// configure brings the interface up, as a port of bridge if not nil.
func (t *TAP) configure(bridge netlink.Link) error {
	link, err := netlink.LinkByName(t.name)
	if err != nil {
		return fmt.Errorf("virtio-net: TAP %q: look up: %w", t.name, err)
	}
	if bridge != nil {
		if err := netlink.LinkSetMaster(link, bridge); err != nil {
			return fmt.Errorf("virtio-net: TAP %q: attach to bridge %q: %w", t.name, bridge.Attrs().Name, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("virtio-net: TAP %q: set up: %w", t.name, err)
	}
	return nil
}

func linkKind(l netlink.Link) string {
	if tt, ok := l.(*netlink.Tuntap); ok && tt.Mode == netlink.TUNTAP_MODE_TUN {
		return "tun"
	}
	return l.Type()
}

// Name is the interface's name.
func (t *TAP) Name() string { return t.name }

// Created reports whether OpenTAP created the interface (it goes away on
// Close) rather than reusing one.
func (t *TAP) Created() bool { return t.created }

// ReadPacket implements Backend.
func (t *TAP) ReadPacket(p []byte) (int, error) {
	var n int
	var rerr error
	err := t.rc.Read(func(fd uintptr) bool {
		n, rerr = unix.Read(int(fd), p)
		return true
	})
	if err != nil {
		return 0, fmt.Errorf("virtio-net: TAP %q: read: %w", t.name, err)
	}
	if errors.Is(rerr, unix.EAGAIN) {
		return 0, ErrWouldBlock
	}
	if rerr != nil {
		return 0, fmt.Errorf("virtio-net: TAP %q: read: %w", t.name, rerr)
	}
	return n, nil
}

// WaitPacket implements Backend with poll(2) on the TAP and t.wake, which
// the end of ctx rings. A ring left over from an earlier context makes one
// early return, which the interface allows.
func (t *TAP) WaitPacket(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() {
		var one [8]byte
		binary.NativeEndian.PutUint64(one[:], 1)
		t.wake.Write(one[:])
	})
	defer stop()
	woken, err := t.poll(unix.POLLIN, true)
	if err != nil {
		return fmt.Errorf("virtio-net: TAP %q: wait: %w", t.name, err)
	}
	if woken {
		var b [8]byte
		t.wake.Read(b[:]) // readable: does not block
	}
	return ctx.Err()
}

// poll waits until the TAP has the events or, withWake, until t.wake is
// rung, and reports whether t.wake was.
func (t *TAP) poll(events int16, withWake bool) (woken bool, err error) {
	var perr error
	err = t.rc.Control(func(fd uintptr) {
		wc, err := t.wake.SyscallConn()
		if err != nil {
			perr = err
			return
		}
		err = wc.Control(func(wfd uintptr) {
			fds := []unix.PollFd{{Fd: int32(fd), Events: events}, {Fd: int32(wfd), Events: unix.POLLIN}}
			if !withWake {
				fds = fds[:1]
			}
			for {
				_, perr = unix.Poll(fds, -1)
				if perr != unix.EINTR {
					break
				}
			}
			woken = withWake && fds[1].Revents&unix.POLLIN != 0
		})
		if err != nil {
			perr = err
		}
	})
	if err == nil {
		err = perr
	}
	return woken, err
}

// WritePacket implements Backend with one writev.
func (t *TAP) WritePacket(bufs [][]byte) error {
	var n int
	var werr error
	var err error
	for {
		err = t.rc.Write(func(fd uintptr) bool {
			n, werr = unix.Writev(int(fd), bufs)
			return true
		})
		if err != nil || !errors.Is(werr, unix.EAGAIN) {
			break
		}
		// The TAP's queue is full: wait until it drains.
		if _, err = t.poll(unix.POLLOUT, false); err != nil {
			break
		}
	}
	if err == nil {
		err = werr
	}
	if err != nil {
		return fmt.Errorf("virtio-net: TAP %q: writev: %w", t.name, err)
	}
	total := 0
	for _, b := range bufs {
		total += len(b)
	}
	if n != total {
		return fmt.Errorf("virtio-net: TAP %q: writev wrote %d of %d bytes", t.name, n, total)
	}
	return nil
}

// PollFD implements PollBackend: the TAP's descriptor, valid until Close.
func (t *TAP) PollFD() int { return t.fd }

// Offloads implements Backend.
func (t *TAP) Offloads() uint64 { return t.offloads }

// SetOffloads implements Backend with TUNSETOFFLOAD.
func (t *TAP) SetOffloads(features uint64) error {
	var flags int
	if features&FGuestCsum != 0 {
		flags |= unix.TUN_F_CSUM
		if features&FGuestTSO4 != 0 {
			flags |= unix.TUN_F_TSO4
		}
		if features&FGuestTSO6 != 0 {
			flags |= unix.TUN_F_TSO6
		}
		if features&FGuestECN != 0 && flags&(unix.TUN_F_TSO4|unix.TUN_F_TSO6) != 0 {
			flags |= unix.TUN_F_TSO_ECN
		}
	}
	var ierr error
	if err := t.rc.Control(func(fd uintptr) {
		ierr = unix.IoctlSetInt(int(fd), unix.TUNSETOFFLOAD, flags)
	}); err != nil {
		return fmt.Errorf("virtio-net: TAP %q: %w", t.name, err)
	}
	if ierr != nil {
		return fmt.Errorf("virtio-net: TAP %q: TUNSETOFFLOAD %#x: %w", t.name, flags, ierr)
	}
	return nil
}

// Close implements Backend. A TAP that OpenTAP created goes away with its
// last file descriptor.
func (t *TAP) Close() error {
	t.wake.Close()
	if err := t.f.Close(); err != nil {
		return fmt.Errorf("virtio-net: TAP %q: close: %w", t.name, err)
	}
	return nil
}
