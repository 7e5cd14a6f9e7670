//go:build linux && amd64

package pvmem

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

// The ABI of memguard's port (memguard/doc.go).
const (
	Port = 0x520

	opVersion    = 1
	opRegister   = 2
	opUnregister = 3
	opMeasure    = 4
)

// Mode is a region's protection.
type Mode uint64

const (
	Integrity    Mode = 1
	Confidential Mode = 2
)

// call is in port_amd64.s.
func call(op uint32, rbx, rcx, rsi, rdi uint64) (rax, obx, ocx, osi, odi uint64)

// Device is the port, usable from the goroutine that opened it.
type Device struct {
	open bool
}

// Open locks the calling goroutine to its thread and asks for the port.
func Open() (*Device, error) {
	runtime.LockOSThread()
	if err := unix.Ioperm(Port, 4, 1); err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("pvmem: ioperm %#x: %w", Port, err)
	}
	return &Device{open: true}, nil
}

// Close gives the port back and unlocks the thread.
func (d *Device) Close() error {
	if !d.open {
		return nil
	}
	d.open = false
	err := unix.Ioperm(Port, 4, 0)
	runtime.UnlockOSThread()
	if err != nil {
		return fmt.Errorf("pvmem: ioperm off: %w", err)
	}
	return nil
}

// Error is a refusal from gvmm: a Linux errno.
type Error struct {
	Op    string
	Errno syscall.Errno
}

func (e *Error) Error() string { return fmt.Sprintf("pvmem: %s: %v", e.Op, e.Errno) }
func (e *Error) Unwrap() error { return e.Errno }

// ErrNoDevice is returned when the port reads as a machine without gvmm's
// device (an OUT to an unclaimed port leaves RAX unchanged).
var ErrNoDevice = errors.New("pvmem: no memguard device")

func (d *Device) do(name string, op uint32, rbx, rcx, rsi, rdi uint64) (uint64, uint64, uint64, uint64, error) {
	if !d.open {
		return 0, 0, 0, 0, fmt.Errorf("pvmem: %s: device closed", name)
	}
	rax, b, c, s, di := call(op, rbx, rcx, rsi, rdi)
	if rax == uint64(op) {
		return 0, 0, 0, 0, ErrNoDevice
	}
	if rax != 0 {
		return 0, 0, 0, 0, &Error{Op: name, Errno: syscall.Errno(-int64(rax))}
	}
	return b, c, s, di, nil
}

// Version returns the ABI version and the per-VM limits.
func (d *Device) Version() (version, maxRegions, maxPages uint64, err error) {
	v, r, p, _, err := d.do("version", opVersion, 0, 0, 0, 0)
	return v, r, p, err
}

// Register protects buf, which must be page aligned and mapped (Alloc).
// It returns the region id.
func (d *Device) Register(buf *Buffer, mode Mode) (uint64, error) {
	id, _, _, _, err := d.do("register", opRegister, uint64(buf.addr()), uint64(len(buf.b)), uint64(mode), 0)
	return id, err
}

// RegisterRaw sends a registration with arbitrary arguments, for tests of
// gvmm's refusals.
func (d *Device) RegisterRaw(va, length uint64, mode Mode) (uint64, error) {
	id, _, _, _, err := d.do("register", opRegister, va, length, uint64(mode), 0)
	return id, err
}

// Unregister wipes and releases a region.
func (d *Device) Unregister(id uint64) error {
	_, _, _, _, err := d.do("unregister", opUnregister, id, 0, 0, 0)
	return err
}

// Measure returns the region's SHA-256 as gvmm computes it.
func (d *Device) Measure(id uint64) ([32]byte, error) {
	var out [32]byte
	a, b, c, e, err := d.do("measure", opMeasure, id, 0, 0, 0)
	if err != nil {
		return out, err
	}
	for i, w := range []uint64{a, b, c, e} {
		for j := 0; j < 8; j++ {
			out[i*8+j] = byte(w >> (8 * j))
		}
	}
	return out, nil
}

// Buffer is page-aligned memory outside the Go heap, prepared to be
// protected: populated, locked (never swapped, so its physical pages stay
// put), not inherited by children (no copy-on-write after fork), and
// never collapsed into a huge page.
type Buffer struct {
	b []byte
}

// Alloc maps a Buffer of n bytes rounded up to whole pages.
func Alloc(n int) (*Buffer, error) {
	if n <= 0 {
		return nil, fmt.Errorf("pvmem: alloc %d bytes: invalid size", n)
	}
	ps := unix.Getpagesize()
	n = (n + ps - 1) / ps * ps
	// No MAP_POPULATE: MADV_NOHUGEPAGE must come before the first fault,
	// and mlock then faults every page in, writable.
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("pvmem: alloc: mmap: %w", err)
	}
	for _, s := range []struct {
		name string
		f    func() error
	}{
		{"madvise(MADV_DONTFORK)", func() error { return unix.Madvise(b, unix.MADV_DONTFORK) }},
		{"madvise(MADV_NOHUGEPAGE)", func() error { return unix.Madvise(b, unix.MADV_NOHUGEPAGE) }},
		{"mlock", func() error { return unix.Mlock(b) }},
	} {
		if err := s.f(); err != nil {
			_ = unix.Munmap(b)
			return nil, fmt.Errorf("pvmem: alloc: %s: %w", s.name, err)
		}
	}
	// Write every page so each is a private, writable frame of its own
	// (not the shared zero page) before gvmm walks the page tables.
	for i := 0; i < n; i += ps {
		b[i] = 0
	}
	return &Buffer{b: b}, nil
}

// Len is the buffer's size.
func (b *Buffer) Len() int { return len(b.b) }

// Addr is the buffer's virtual address.
func (b *Buffer) Addr() uintptr { return b.addr() }

// Free unmaps the buffer; unregister it first.
func (b *Buffer) Free() error {
	if b.b == nil {
		return nil
	}
	err := unix.Munmap(b.b)
	b.b = nil
	if err != nil {
		return fmt.Errorf("pvmem: free: %w", err)
	}
	return nil
}

// WriteAt copies p into the buffer at off with plain moves.
func (b *Buffer) WriteAt(p []byte, off int) error {
	if off < 0 || off > len(b.b) || len(p) > len(b.b)-off {
		return fmt.Errorf("pvmem: write %d bytes at %d: out of range", len(p), off)
	}
	storeBytes(b.b[off:off+len(p)], p)
	return nil
}

// ReadAt copies the buffer at off into p with plain moves.
func (b *Buffer) ReadAt(p []byte, off int) error {
	if off < 0 || off > len(b.b) || len(p) > len(b.b)-off {
		return fmt.Errorf("pvmem: read %d bytes at %d: out of range", len(p), off)
	}
	loadBytes(p, b.b[off:off+len(p)])
	return nil
}

// PhysAddr returns the guest-physical address of the buffer's byte at off,
// from /proc/self/pagemap (root only): what gvmm logs in a violation.
func (b *Buffer) PhysAddr(off int) (uint64, error) {
	if off < 0 || off >= len(b.b) {
		return 0, fmt.Errorf("pvmem: phys addr of %d: out of range", off)
	}
	f, err := os.Open("/proc/self/pagemap")
	if err != nil {
		return 0, fmt.Errorf("pvmem: phys addr: %w", err)
	}
	defer f.Close()
	va := uint64(b.addr()) + uint64(off)
	var e [8]byte
	if _, err := f.ReadAt(e[:], int64(va/4096*8)); err != nil {
		return 0, fmt.Errorf("pvmem: phys addr: read pagemap: %w", err)
	}
	v := binary.LittleEndian.Uint64(e[:])
	pfn := v & (1<<55 - 1)
	if v&(1<<63) == 0 || pfn == 0 {
		return 0, errors.New("pvmem: phys addr: page not present (or not root)")
	}
	return pfn*4096 + va%4096, nil
}
