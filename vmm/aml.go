package vmm

import (
	"encoding/binary"
	"fmt"
)

// A small ACPI Machine Language encoder: just the terms gvmm's DSDT uses
// (ACPI 6.x, section 20, "ACPI Machine Language Specification").

const (
	amlZeroOp     = 0x00
	amlOneOp      = 0x01
	amlNameOp     = 0x08
	amlBytePrefix = 0x0a
	amlWordPrefix = 0x0b
	amlDWordPref  = 0x0c
	amlStringPref = 0x0d
	amlQWordPref  = 0x0e
	amlScopeOp    = 0x10
	amlBufferOp   = 0x11
	amlPackageOp  = 0x12
	amlExtOp      = 0x5b
	amlDeviceOp   = 0x82
	amlRootChar   = '\\'
)

// amlNameSeg is a four-character name segment, padded with '_'.
func amlNameSeg(s string) []byte {
	if len(s) == 0 || len(s) > 4 {
		panic(fmt.Sprintf("vmm: AML name %q is not 1-4 characters", s)) // a constant in this package
	}
	b := []byte("____")
	copy(b, s)
	return b
}

// amlPkgLength encodes a PkgLength for a body of n bytes; the encoded
// length counts its own bytes.
func amlPkgLength(n int) []byte {
	if n+1 < 1<<6 {
		return []byte{byte(n + 1)}
	}
	for extra := 1; extra <= 3; extra++ {
		total := n + 1 + extra
		if total < 1<<(4+8*extra) {
			b := []byte{byte(extra<<6) | byte(total&0x0f)}
			for i := 0; i < extra; i++ {
				b = append(b, byte(total>>(4+8*i)))
			}
			return b
		}
	}
	panic("vmm: AML package too large")
}

func amlPkg(op []byte, body ...[]byte) []byte {
	var inner []byte
	for _, b := range body {
		inner = append(inner, b...)
	}
	out := append([]byte{}, op...)
	out = append(out, amlPkgLength(len(inner))...)
	return append(out, inner...)
}

// amlName is Name(seg, obj).
func amlName(seg string, obj []byte) []byte {
	return append(append([]byte{amlNameOp}, amlNameSeg(seg)...), obj...)
}

// amlScope is Scope(\seg) { body }.
func amlScopeRoot(seg string, body ...[]byte) []byte {
	name := append([]byte{amlRootChar}, amlNameSeg(seg)...)
	return amlPkg([]byte{amlScopeOp}, append([][]byte{name}, body...)...)
}

// amlDevice is Device(seg) { body }.
func amlDevice(seg string, body ...[]byte) []byte {
	return amlPkg([]byte{amlExtOp, amlDeviceOp}, append([][]byte{amlNameSeg(seg)}, body...)...)
}

// amlInteger is the shortest constant encoding of v.
func amlInteger(v uint64) []byte {
	switch {
	case v == 0:
		return []byte{amlZeroOp}
	case v == 1:
		return []byte{amlOneOp}
	case v <= 0xff:
		return []byte{amlBytePrefix, byte(v)}
	case v <= 0xffff:
		return binary.LittleEndian.AppendUint16([]byte{amlWordPrefix}, uint16(v))
	case v <= 0xffffffff:
		return binary.LittleEndian.AppendUint32([]byte{amlDWordPref}, uint32(v))
	}
	return binary.LittleEndian.AppendUint64([]byte{amlQWordPref}, v)
}

// amlEISAID encodes EisaId("PNPxxxx"): three letters compressed into 15
// bits, then four hex digits, stored big-endian in a DWord.
func amlEISAID(id string) []byte {
	if len(id) != 7 {
		panic("vmm: EISA id must be 7 characters")
	}
	vendor := uint16(id[0]-0x40)<<10 | uint16(id[1]-0x40)<<5 | uint16(id[2]-0x40)
	var product uint16
	for _, c := range id[3:] {
		var d uint16
		switch {
		case c >= '0' && c <= '9':
			d = uint16(c - '0')
		case c >= 'A' && c <= 'F':
			d = uint16(c-'A') + 10
		default:
			panic("vmm: EISA id product is not hex")
		}
		product = product<<4 | d
	}
	return []byte{amlDWordPref, byte(vendor >> 8), byte(vendor), byte(product >> 8), byte(product)}
}

// amlPackage is Package(n) { elems }.
func amlPackage(elems ...[]byte) []byte {
	return amlPkg([]byte{amlPackageOp}, append([][]byte{{byte(len(elems))}}, elems...)...)
}

// amlBuffer is Buffer() { data }.
func amlBuffer(data []byte) []byte {
	return amlPkg([]byte{amlBufferOp}, amlInteger(uint64(len(data))), data)
}

// Resource descriptors for _CRS (ACPI 6.x section 6.4).

// resIO is IO(Decode16, base, base, 1, length).
func resIO(base uint16, length uint8) []byte {
	return []byte{0x47, 0x01, byte(base), byte(base >> 8), byte(base), byte(base >> 8), 0x01, length}
}

// resIRQNoFlags is IRQNoFlags() { irq }: edge-triggered, active high.
func resIRQNoFlags(irq uint) []byte {
	mask := uint16(1) << irq
	return []byte{0x22, byte(mask), byte(mask >> 8)}
}

// resTemplate ends a list of descriptors with an End Tag (checksum 0:
// "the checksum is ignored").
func resTemplate(descs ...[]byte) []byte {
	var b []byte
	for _, d := range descs {
		b = append(b, d...)
	}
	return amlBuffer(append(b, 0x79, 0x00))
}

// resWordBusNumber is WordBusNumber(ResourceProducer, MinFixed, MaxFixed,
// PosDecode, 0, min, max, 0, max-min+1).
func resWordBusNumber(min, max uint16) []byte {
	b := []byte{0x88, 13, 0, 2, 0x0c, 0}
	for _, v := range []uint16{0, min, max, 0, max - min + 1} {
		b = binary.LittleEndian.AppendUint16(b, v)
	}
	return b
}

// resDWordMemory is DWordMemory(ResourceProducer, PosDecode, MinFixed,
// MaxFixed, NonCacheable, ReadWrite, 0, min, max, 0, max-min+1).
func resDWordMemory(min, max uint32) []byte {
	b := []byte{0x87, 23, 0, 0, 0x0c, 0x01}
	for _, v := range []uint32{0, min, max, 0, max - min + 1} {
		b = binary.LittleEndian.AppendUint32(b, v)
	}
	return b
}
