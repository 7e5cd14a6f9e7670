package migration

import (
	"encoding/binary"
	"fmt"
)

// The stream's CPU record carries this package's handshake, checked by the
// destination before it accepts a single page:
//
//	magic "GVMMMIGR" | version u16 (1) | nregions u32 |
//	nregions × (gpa u64 | size u64) | the caller's CPU record (the rest)
//
// Regions are listed in address order. The destination refuses a stream
// whose layout differs from its own, then hands the rest to
// ReceiveOptions.CheckCPU.
const (
	handshakeMagic   = "GVMMMIGR"
	handshakeVersion = 1
	handshakeFixed   = 8 + 2 + 4
	// maxRegions bounds the regions of one machine.
	maxRegions = 1024
)

func encodeHandshake(l layout, cpu []byte) []byte {
	b := make([]byte, 0, handshakeFixed+16*len(l.regions)+len(cpu))
	b = append(b, handshakeMagic...)
	b = binary.BigEndian.AppendUint16(b, handshakeVersion)
	b = binary.BigEndian.AppendUint32(b, uint32(len(l.regions)))
	for _, r := range l.regions {
		b = binary.BigEndian.AppendUint64(b, r.GPA)
		b = binary.BigEndian.AppendUint64(b, uint64(len(r.Data)))
	}
	return append(b, cpu...)
}

// checkHandshake compares the source's layout in b with l and returns the
// caller's CPU record.
func checkHandshake(b []byte, l layout) ([]byte, error) {
	if len(b) < handshakeFixed || string(b[:8]) != handshakeMagic {
		return nil, fmt.Errorf("check handshake: not a gvmm migration handshake")
	}
	if v := binary.BigEndian.Uint16(b[8:]); v != handshakeVersion {
		return nil, fmt.Errorf("check handshake: version %d, this gvmm reads %d", v, handshakeVersion)
	}
	n := binary.BigEndian.Uint32(b[10:])
	if n > maxRegions || uint64(len(b)-handshakeFixed) < 16*uint64(n) {
		return nil, fmt.Errorf("check handshake: %d regions in %d bytes", n, len(b))
	}
	if int(n) != len(l.regions) {
		return nil, fmt.Errorf("check handshake: %w: source has %d regions, destination %d", ErrLayout, n, len(l.regions))
	}
	off := handshakeFixed
	for i, r := range l.regions {
		gpa := binary.BigEndian.Uint64(b[off:])
		size := binary.BigEndian.Uint64(b[off+8:])
		if gpa != r.GPA || size != uint64(len(r.Data)) {
			return nil, fmt.Errorf("check handshake: %w: source region %d is %d bytes at %#x, destination's %d bytes at %#x",
				ErrLayout, i, size, gpa, len(r.Data), r.GPA)
		}
		off += 16
	}
	return b[off:], nil
}
