package kvm

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// The variable-length KVM structs are a fixed header followed by an array
// whose length the header states. They are marshalled into byte slices in
// the host's byte order; abi_test.go checks that the Go structs encode to
// exactly the C sizes (binary.Size ignores no padding they might hide).

var errShortBuffer = errors.New("kvm: buffer shorter than its header says")

// encodeCPUID returns a struct kvm_cpuid2 holding entries.
func encodeCPUID(entries []CPUIDEntry) []byte {
	buf := make([]byte, sizeofCPUID2Header+len(entries)*sizeofCPUIDEntry)
	mustEncode(buf, &cpuid2Header{NEnt: uint32(len(entries))})
	mustEncode(buf[sizeofCPUID2Header:], entries)
	return buf
}

// decodeCPUID returns the entries of a struct kvm_cpuid2, as many as its
// nent says, which must fit in buf.
func decodeCPUID(buf []byte) ([]CPUIDEntry, error) {
	var h cpuid2Header
	if err := decode(buf, &h); err != nil {
		return nil, err
	}
	if uint64(h.NEnt) > uint64(len(buf)-sizeofCPUID2Header)/sizeofCPUIDEntry {
		return nil, fmt.Errorf("%w: kvm_cpuid2 nent %d in %d bytes", errShortBuffer, h.NEnt, len(buf))
	}
	entries := make([]CPUIDEntry, h.NEnt)
	if err := decode(buf[sizeofCPUID2Header:], entries); err != nil {
		return nil, err
	}
	return entries, nil
}

// encodeMSRs returns a struct kvm_msrs holding entries.
func encodeMSRs(entries []MSREntry) []byte {
	buf := make([]byte, sizeofMSRsHeader+len(entries)*sizeofMSREntry)
	mustEncode(buf, &msrsHeader{NMSRs: uint32(len(entries))})
	mustEncode(buf[sizeofMSRsHeader:], entries)
	return buf
}

// decodeMSRs copies the entries of a struct kvm_msrs back into entries,
// which must have the length the struct was encoded with.
func decodeMSRs(buf []byte, entries []MSREntry) error {
	if len(buf) < sizeofMSRsHeader+len(entries)*sizeofMSREntry {
		return fmt.Errorf("%w: kvm_msrs of %d entries in %d bytes", errShortBuffer, len(entries), len(buf))
	}
	return decode(buf[sizeofMSRsHeader:], entries)
}

// encodeMSRList returns an empty struct kvm_msr_list with room for n indices.
func encodeMSRList(n int) []byte {
	buf := make([]byte, sizeofMSRListHeader+4*n)
	mustEncode(buf, &msrListHeader{NMSRs: uint32(n)})
	return buf
}

// msrListCount returns the nmsrs of a struct kvm_msr_list.
func msrListCount(buf []byte) (int, error) {
	var h msrListHeader
	if err := decode(buf, &h); err != nil {
		return 0, err
	}
	return int(h.NMSRs), nil
}

// decodeMSRList returns the indices of a struct kvm_msr_list.
func decodeMSRList(buf []byte) ([]uint32, error) {
	n, err := msrListCount(buf)
	if err != nil {
		return nil, err
	}
	if uint64(n) > uint64(len(buf)-sizeofMSRListHeader)/4 {
		return nil, fmt.Errorf("%w: kvm_msr_list nmsrs %d in %d bytes", errShortBuffer, n, len(buf))
	}
	list := make([]uint32, n)
	if err := decode(buf[sizeofMSRListHeader:], list); err != nil {
		return nil, err
	}
	return list, nil
}

// encodeIRQRouting returns a struct kvm_irq_routing holding entries.
func encodeIRQRouting(entries []IRQRoutingEntry) []byte {
	buf := make([]byte, sizeofIRQRoutingHdr+len(entries)*sizeofIRQRoutingEntry)
	mustEncode(buf, &irqRoutingHeader{Nr: uint32(len(entries))})
	mustEncode(buf[sizeofIRQRoutingHdr:], entries)
	return buf
}

// IRQChipRoute returns a routing entry that sends gsi to pin of an irqchip
// (IRQChipPICMaster, IRQChipPICSlave or IRQChipIOAPIC).
func IRQChipRoute(gsi, irqchip, pin uint32) IRQRoutingEntry {
	e := IRQRoutingEntry{GSI: gsi, Type: IRQRoutingTypeIRQChip}
	mustEncode(e.U[:], &IRQRoutingIRQChip{IRQChip: irqchip, Pin: pin})
	return e
}

// MSIRoute returns a routing entry that turns gsi into the message m. flags
// may hold MSIValidDevID, in which case m.DevID is used.
func MSIRoute(gsi, flags uint32, m IRQRoutingMSI) IRQRoutingEntry {
	e := IRQRoutingEntry{GSI: gsi, Type: IRQRoutingTypeMSI, Flags: flags}
	mustEncode(e.U[:], &m)
	return e
}

// IRQChip returns the union member of an IRQRoutingTypeIRQChip entry.
func (e *IRQRoutingEntry) IRQChip() IRQRoutingIRQChip {
	var r IRQRoutingIRQChip
	mustDecode(e.U[:], &r)
	return r
}

// MSI returns the union member of an IRQRoutingTypeMSI entry.
func (e *IRQRoutingEntry) MSI() IRQRoutingMSI {
	var r IRQRoutingMSI
	mustDecode(e.U[:], &r)
	return r
}

// PIC returns the state of a PIC chip (ChipID IRQChipPICMaster or
// IRQChipPICSlave) from the union.
func (c *IRQChip) PIC() PICState {
	var s PICState
	mustDecode(c.Chip[:], &s)
	return s
}

// SetPIC stores a PIC state in the union.
func (c *IRQChip) SetPIC(s *PICState) { mustEncode(c.Chip[:], s) }

// IOAPIC returns the IOAPIC state (ChipID IRQChipIOAPIC) from the union.
func (c *IRQChip) IOAPIC() IOAPICState {
	var s IOAPICState
	mustDecode(c.Chip[:], &s)
	return s
}

// SetIOAPIC stores an IOAPIC state in the union.
func (c *IRQChip) SetIOAPIC(s *IOAPICState) { mustEncode(c.Chip[:], s) }

func decode(buf []byte, v any) error {
	if _, err := binary.Decode(buf, binary.NativeEndian, v); err != nil {
		return fmt.Errorf("%w: %w", errShortBuffer, err)
	}
	return nil
}

// mustEncode and mustDecode are for buffers sized from the types they hold,
// where a failure is a bug in this package.
func mustEncode(buf []byte, v any) {
	if _, err := binary.Encode(buf, binary.NativeEndian, v); err != nil {
		panic("kvm: marshal: " + err.Error())
	}
}

func mustDecode(buf []byte, v any) {
	if _, err := binary.Decode(buf, binary.NativeEndian, v); err != nil {
		panic("kvm: unmarshal: " + err.Error())
	}
}
