package vmm

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// ErrBadKernel is wrapped by every error about an unusable kernel image.
var ErrBadKernel = errors.New("unusable kernel image")

// Offsets into the bzImage file and into struct boot_params (they coincide
// for the setup header, which starts at 0x1f1 in both). From the kernel's
// Documentation/arch/x86/boot.rst.
const (
	hdrSetupSects    = 0x1f1
	hdrSyssize       = 0x1f4
	hdrBootFlag      = 0x1fe
	hdrJump          = 0x200
	hdrMagic         = 0x202
	hdrVersion       = 0x206
	hdrTypeOfLoader  = 0x210
	hdrLoadflags     = 0x211
	hdrRamdiskImage  = 0x218
	hdrRamdiskSize   = 0x21c
	hdrHeapEndPtr    = 0x224
	hdrCmdLinePtr    = 0x228
	hdrInitrdAddrMax = 0x22c
	hdrKernelAlign   = 0x230
	hdrRelocatable   = 0x234
	hdrXloadflags    = 0x236
	hdrCmdlineSize   = 0x238
	hdrInitSize      = 0x260

	bpACPIRSDPAddr   = 0x070
	bpExtRamdiskImg  = 0x0c0
	bpExtRamdiskSize = 0x0c4
	bpExtCmdLinePtr  = 0x0c8
	bpE820Entries    = 0x1e8
	bpE820Table      = 0x2d0
	bpE820Max        = 128

	loadedHigh  = 0x01
	canUseHeap  = 0x80
	xlfKernel64 = 0x01
	hdrSMagic   = 0x53726448 // "HdrS"
	bootFlag    = 0xaa55

	// minBootProtocol is 2.12: the first with xloadflags, which is how a
	// kernel says it has a 64-bit entry point.
	minBootProtocol = 0x020c
)

// bzImage is a parsed Linux x86 kernel image.
type bzImage struct {
	// header is the setup header, file bytes [0x1f1, 0x202+file[0x201]).
	header []byte
	// payload is the protected-mode kernel, loaded at highMemStart.
	payload []byte
	// version is the boot protocol version, e.g. 0x020f.
	version uint16
	// initSize is the memory the kernel needs from its load address while
	// it decompresses and initialises.
	initSize uint32
	// initrdAddrMax is the highest address the initrd may occupy.
	initrdAddrMax uint32
	// cmdlineSize is the longest command line, without its NUL.
	cmdlineSize uint32
}

// parseBzImage checks that data is a bzImage this VMM can boot through the
// 64-bit boot protocol and returns its parts. Every size and offset read
// from the file is checked against the file's length.
func parseBzImage(data []byte) (*bzImage, error) {
	if len(data) < hdrInitSize+4 {
		return nil, fmt.Errorf("%w: file is %d bytes, too short for a bzImage setup header", ErrBadKernel, len(data))
	}
	le := binary.LittleEndian
	if le.Uint16(data[hdrBootFlag:]) != bootFlag || le.Uint32(data[hdrMagic:]) != hdrSMagic {
		return nil, fmt.Errorf("%w: not a bzImage (no boot flag or HdrS signature)", ErrBadKernel)
	}
	v := le.Uint16(data[hdrVersion:])
	if v < minBootProtocol {
		return nil, fmt.Errorf("%w: boot protocol %d.%02d is too old (need 2.12 or newer for a 64-bit entry)", ErrBadKernel, v>>8, v&0xff)
	}
	if data[hdrLoadflags]&loadedHigh == 0 {
		return nil, fmt.Errorf("%w: a zImage (loaded low) is not supported, use a bzImage", ErrBadKernel)
	}
	if le.Uint16(data[hdrXloadflags:])&xlfKernel64 == 0 {
		return nil, fmt.Errorf("%w: kernel has no 64-bit entry point (XLF_KERNEL_64 not set)", ErrBadKernel)
	}
	hdrEnd := 0x202 + int(data[0x201])
	if hdrEnd > len(data) || hdrEnd < hdrInitSize+4 {
		return nil, fmt.Errorf("%w: setup header length %d is invalid", ErrBadKernel, hdrEnd)
	}
	setupSects := int(data[hdrSetupSects])
	if setupSects == 0 {
		setupSects = 4
	}
	setupSize := (setupSects + 1) * 512
	sysSize := uint64(le.Uint32(data[hdrSyssize:])) * 16
	if setupSize >= len(data) {
		return nil, fmt.Errorf("%w: file truncated: %d bytes, setup alone is %d", ErrBadKernel, len(data), setupSize)
	}
	if uint64(setupSize)+sysSize > uint64(len(data)) {
		return nil, fmt.Errorf("%w: file truncated: %d bytes, header says %d", ErrBadKernel, len(data), uint64(setupSize)+sysSize)
	}
	img := &bzImage{
		header:        data[hdrSetupSects:hdrEnd],
		payload:       data[setupSize:],
		version:       v,
		initSize:      le.Uint32(data[hdrInitSize:]),
		initrdAddrMax: le.Uint32(data[hdrInitrdAddrMax:]),
		cmdlineSize:   le.Uint32(data[hdrCmdlineSize:]),
	}
	if img.initSize == 0 {
		return nil, fmt.Errorf("%w: header gives no init_size", ErrBadKernel)
	}
	return img, nil
}

// bootPlan is where everything goes in guest memory.
type bootPlan struct {
	initrdAddr uint64
	// kernelEnd is the first byte above what the kernel may use while it
	// decompresses (from the larger of its load address and 16 MiB).
	kernelEnd uint64
}

// planBoot places the initrd at the top of low RAM, below the kernel's
// initrd_addr_max, and checks that kernel, decompression area and initrd
// fit without overlapping.
func planBoot(img *bzImage, lowRAMEnd uint64, initrdSize uint64) (bootPlan, error) {
	base := uint64(kernelMinLoad)
	if highMemStart+uint64(len(img.payload)) > base {
		base = alignUp(highMemStart+uint64(len(img.payload)), 2<<20)
	}
	p := bootPlan{kernelEnd: alignUp(base+uint64(img.initSize), pageSize)}
	if p.kernelEnd > lowRAMEnd {
		return p, fmt.Errorf("kernel needs memory up to %d MiB to decompress, the guest has %d MiB below the device hole", p.kernelEnd>>20, lowRAMEnd>>20)
	}
	if initrdSize == 0 {
		return p, nil
	}
	top := lowRAMEnd
	if max := uint64(img.initrdAddrMax) + 1; img.initrdAddrMax != 0 && max < top {
		top = max
	}
	if initrdSize > top {
		return p, fmt.Errorf("initrd (%d MiB) does not fit in guest RAM (%d MiB usable)", initrdSize>>20, top>>20)
	}
	p.initrdAddr = (top - initrdSize) &^ (pageSize - 1)
	if p.initrdAddr < p.kernelEnd {
		return p, fmt.Errorf("initrd (%d MiB) does not fit in guest RAM beside the kernel (%d MiB needed in all, %d MiB usable): give more --memory",
			initrdSize>>20, (p.kernelEnd+initrdSize)>>20, top>>20)
	}
	return p, nil
}

// zeroPageInput is what the zero page describes besides the header.
type zeroPageInput struct {
	cmdlineLen uint32 // without NUL
	initrdAddr uint64
	initrdSize uint64
	e820       []e820Entry
	rsdpAddr   uint64
}

// buildZeroPage returns struct boot_params for img.
func buildZeroPage(img *bzImage, in zeroPageInput) ([]byte, error) {
	if len(in.e820) > bpE820Max {
		return nil, fmt.Errorf("e820 map has %d entries, the zero page holds %d", len(in.e820), bpE820Max)
	}
	if limit := img.cmdlineSize; limit != 0 && in.cmdlineLen > limit {
		return nil, fmt.Errorf("kernel command line is %d bytes, this kernel accepts at most %d", in.cmdlineLen, limit)
	}
	if in.cmdlineLen >= cmdlineMaxLen {
		return nil, fmt.Errorf("kernel command line is %d bytes, gvmm accepts at most %d", in.cmdlineLen, cmdlineMaxLen-1)
	}
	zp := make([]byte, pageSize)
	copy(zp[hdrSetupSects:], img.header)
	le := binary.LittleEndian
	zp[hdrTypeOfLoader] = 0xff // undefined boot loader
	zp[hdrLoadflags] |= canUseHeap
	le.PutUint16(zp[hdrHeapEndPtr:], 0xfe00)
	le.PutUint32(zp[hdrCmdLinePtr:], uint32(cmdlineAddr))
	le.PutUint32(zp[bpExtCmdLinePtr:], 0)
	le.PutUint32(zp[hdrRamdiskImage:], uint32(in.initrdAddr))
	le.PutUint32(zp[hdrRamdiskSize:], uint32(in.initrdSize))
	le.PutUint32(zp[bpExtRamdiskImg:], uint32(in.initrdAddr>>32))
	le.PutUint32(zp[bpExtRamdiskSize:], uint32(in.initrdSize>>32))
	le.PutUint64(zp[bpACPIRSDPAddr:], in.rsdpAddr)
	zp[bpE820Entries] = byte(len(in.e820))
	for i, e := range in.e820 {
		off := bpE820Table + 20*i
		le.PutUint64(zp[off:], e.Addr)
		le.PutUint64(zp[off+8:], e.Size)
		le.PutUint32(zp[off+16:], e.Type)
	}
	return zp, nil
}

func alignUp(v, a uint64) uint64 { return (v + a - 1) &^ (a - 1) }
