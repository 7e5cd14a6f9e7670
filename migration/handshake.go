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

// span is a region's address and size as the handshake lists it.
type span struct{ gpa, size uint64 }

// decodeHandshake returns the source's layout and the caller's CPU record.
func decodeHandshake(b []byte) ([]span, []byte, error) {
	if len(b) < handshakeFixed || string(b[:8]) != handshakeMagic {
		return nil, nil, fmt.Errorf("check handshake: not a gvmm migration handshake")
	}
	if v := binary.BigEndian.Uint16(b[8:]); v != handshakeVersion {
		return nil, nil, fmt.Errorf("check handshake: version %d, this gvmm reads %d", v, handshakeVersion)
	}
	n := binary.BigEndian.Uint32(b[10:])
	if n > maxRegions || uint64(len(b)-handshakeFixed) < 16*uint64(n) {
		return nil, nil, fmt.Errorf("check handshake: %d regions in %d bytes", n, len(b))
	}
	spans := make([]span, n)
	off := handshakeFixed
	for i := range spans {
		spans[i] = span{binary.BigEndian.Uint64(b[off:]), binary.BigEndian.Uint64(b[off+8:])}
		off += 16
	}
	return spans, b[off:], nil
}

// checkLayout compares the source's layout with the destination's l.
func checkLayout(spans []span, l layout) error {
	if len(spans) != len(l.regions) {
		return fmt.Errorf("check handshake: %w: source has %d regions, destination %d", ErrLayout, len(spans), len(l.regions))
	}
	for i, r := range l.regions {
		if s := spans[i]; s.gpa != r.GPA || s.size != uint64(len(r.Data)) {
			return fmt.Errorf("check handshake: %w: source region %d is %d bytes at %#x, destination's %d bytes at %#x",
				ErrLayout, i, s.size, s.gpa, len(r.Data), r.GPA)
		}
	}
	return nil
}
