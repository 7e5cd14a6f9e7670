package vmm

import (
	"bytes"
	"encoding/binary"
	"fmt"

	"github.com/gvmm/gvmm/kvm"
)

// The vCPU and VM-wide kernel state ("vcpu/<n>", "kvm/vm") is encoded in
// binary from version 3 on: it is the bulk of the state and is encoded on
// the source and decoded on the destination while the guest is paused for
// a migration's switchover. As JSON a vCPU cost about 0.1 ms to encode
// and 0.4 ms to decode on a modern host, and 10 to 35 ms under nested
// emulation, each a part of the downtime; in binary it costs about 5 us
// each way (BenchmarkVCPUStateCodec).
//
//	component := binMagic | version u16 | field*
//	field     := tag u16 | length u32 | data[length]
//
// Integers are little-endian; a field's data is the kernel structure's
// layout (encoding/binary, x86-64), or a run of them for the MSR and
// CPUID tables. Every field of a component is present exactly once, in
// tag order, but for a vCPU's TSC offset (version 4 on), which is last and
// present only where the source's KVM could read it; decoding refuses
// anything else, a length that does not match the structure, and trailing
// bytes. Other components stay JSON; the decoder tells the two apart by
// the magic, which cannot start JSON.
var binMagic = []byte("\x00GVB")

// firstBinaryVersion is the state version that introduced binMagic.
const firstBinaryVersion = 3

// binaryState is a component with a binary encoding; binaryDecoder
// decodes it. decodeComponent still reads such a component from the JSON
// of versions 1 and 2.
type (
	binaryState interface {
		appendBinary(b []byte) ([]byte, error)
	}
	binaryDecoder interface {
		decodeBinary(version int, body []byte) error
	}
)

// Bounds on the variable fields, as for JSON (package kvm's limits).
const (
	maxSavedMSRs  = 1 << 16
	maxSavedCPUID = 1 << 14
	maxXSaveBytes = 1 << 20
)

// encodeBinary wraps v's fields in the binary envelope.
func encodeBinary(id string, v binaryState) (StateComponent, error) {
	b := make([]byte, 0, 16<<10)
	b = append(b, binMagic...)
	b = binary.LittleEndian.AppendUint16(b, stateVersion)
	b, err := v.appendBinary(b)
	if err != nil {
		return StateComponent{}, fmt.Errorf("encode %s: %w", id, err)
	}
	return StateComponent{ID: id, Data: b}, nil
}

// decodeBinary checks the envelope of a binary component and decodes its
// fields into v.
func decodeBinary(c StateComponent, v any) error {
	body := c.Data[len(binMagic):]
	if len(body) < 2 {
		return fmt.Errorf("state %s: truncated header", c.ID)
	}
	ver := int(binary.LittleEndian.Uint16(body))
	if ver < firstBinaryVersion || ver > stateVersion {
		return fmt.Errorf("state %s: binary encoding version %d, this gvmm reads %d to %d", c.ID, ver, firstBinaryVersion, stateVersion)
	}
	d, ok := v.(binaryDecoder)
	if !ok {
		return fmt.Errorf("state %s: a binary encoding where JSON belongs", c.ID)
	}
	if err := d.decodeBinary(ver, body[2:]); err != nil {
		return fmt.Errorf("state %s: %w", c.ID, err)
	}
	return nil
}

// binWriter appends fields.
type binWriter struct{ b []byte }

func (w *binWriter) field(tag uint16, data []byte) {
	w.b = binary.LittleEndian.AppendUint16(w.b, tag)
	w.b = binary.LittleEndian.AppendUint32(w.b, uint32(len(data)))
	w.b = append(w.b, data...)
}

func (w *binWriter) u32(tag uint16, v uint32) {
	w.field(tag, binary.LittleEndian.AppendUint32(nil, v))
}

// putRaw appends a field of kernel structures in their layout.
func putRaw[T kvm.Raw](w *binWriter, tag uint16, vs ...T) {
	w.b = binary.LittleEndian.AppendUint16(w.b, tag)
	w.b = binary.LittleEndian.AppendUint32(w.b, uint32(len(vs)*kvm.RawSize[T]()))
	w.b = kvm.AppendRaw(w.b, vs...)
}

// binReader takes fields in order.
type binReader struct{ b []byte }

// field returns the data of the next field, which must carry tag.
func (r *binReader) field(tag uint16, name string) ([]byte, error) {
	if len(r.b) < 6 {
		return nil, fmt.Errorf("%s: truncated", name)
	}
	got, n := binary.LittleEndian.Uint16(r.b), binary.LittleEndian.Uint32(r.b[2:])
	if got != tag {
		return nil, fmt.Errorf("field %d where %s (%d) belongs", got, name, tag)
	}
	if uint64(n) > uint64(len(r.b)-6) {
		return nil, fmt.Errorf("%s: %d bytes, only %d left", name, n, len(r.b)-6)
	}
	data := r.b[6 : 6+n]
	r.b = r.b[6+n:]
	return data, nil
}

func (r *binReader) u32(tag uint16, name string) (uint32, error) {
	data, err := r.field(tag, name)
	if err != nil {
		return 0, err
	}
	if len(data) != 4 {
		return 0, fmt.Errorf("%s: %d bytes, want 4", name, len(data))
	}
	return binary.LittleEndian.Uint32(data), nil
}

// getRaw decodes the next field, exactly one T, into v.
func getRaw[T kvm.Raw](r *binReader, tag uint16, name string, v *T) error {
	data, err := r.field(tag, name)
	if err != nil {
		return err
	}
	if want := kvm.RawSize[T](); len(data) != want {
		return fmt.Errorf("%s: %d bytes, want %d", name, len(data), want)
	}
	return kvm.DecodeRawValue(data, v)
}

// getTable decodes the next field as a run of at most max entries.
func getTable[T kvm.Raw](r *binReader, tag uint16, name string, max int) ([]T, error) {
	data, err := r.field(tag, name)
	if err != nil {
		return nil, err
	}
	size := kvm.RawSize[T]()
	if len(data)%size != 0 || len(data)/size > max {
		return nil, fmt.Errorf("%s: %d bytes: not a whole number of %d-byte entries, or more than %d", name, len(data), size, max)
	}
	if len(data) == 0 {
		return nil, nil
	}
	v := make([]T, len(data)/size)
	if err := kvm.DecodeRaw(data, v); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return v, nil
}

// end refuses bytes after the last field.
func (r *binReader) end() error {
	if len(r.b) != 0 {
		return fmt.Errorf("%d bytes of trailing data", len(r.b))
	}
	return nil
}

// VCPUState's fields, in order.
const (
	vcpuTagID uint16 = iota + 1
	vcpuTagTSCKHz
	vcpuTagMPState
	vcpuTagEvents
	vcpuTagLAPIC
	vcpuTagMSRs
	vcpuTagXSave
	vcpuTagXCRs
	vcpuTagSregs
	vcpuTagRegs
	vcpuTagDebugRegs
	vcpuTagCPUID
	// From version 4, where the source's KVM has KVM_VCPU_TSC_OFFSET.
	vcpuTagTSCOffset
)

// firstTSCOffsetVersion is the state version that added vcpuTagTSCOffset.
const firstTSCOffsetVersion = 4

func (s VCPUState) appendBinary(b []byte) ([]byte, error) {
	if s.ID < 0 || s.ID >= MaxCPUs {
		return nil, fmt.Errorf("vCPU id %d out of range", s.ID)
	}
	w := binWriter{b: b}
	w.u32(vcpuTagID, uint32(s.ID))
	w.u32(vcpuTagTSCKHz, s.TSCKHz)
	putRaw(&w, vcpuTagMPState, s.MPState)
	putRaw(&w, vcpuTagEvents, s.Events)
	putRaw(&w, vcpuTagLAPIC, s.LAPIC)
	putRaw(&w, vcpuTagMSRs, s.MSRs...)
	w.field(vcpuTagXSave, s.XSave.Region)
	putRaw(&w, vcpuTagXCRs, s.XCRs)
	putRaw(&w, vcpuTagSregs, s.Sregs)
	putRaw(&w, vcpuTagRegs, s.Regs)
	putRaw(&w, vcpuTagDebugRegs, s.DebugRegs)
	putRaw(&w, vcpuTagCPUID, s.CPUID...)
	if s.HasTSCOffset {
		w.field(vcpuTagTSCOffset, binary.LittleEndian.AppendUint64(nil, s.TSCOffset))
	}
	return w.b, nil
}

func (s *VCPUState) decodeBinary(version int, body []byte) error {
	r := binReader{b: body}
	var st VCPUState
	id, err := r.u32(vcpuTagID, "id")
	if err != nil {
		return err
	}
	if id >= MaxCPUs {
		return fmt.Errorf("vCPU id %d out of range", id)
	}
	st.ID = int(id)
	if st.TSCKHz, err = r.u32(vcpuTagTSCKHz, "tsc_khz"); err != nil {
		return err
	}
	if err := getRaw(&r, vcpuTagMPState, "mp_state", &st.MPState); err != nil {
		return err
	}
	if err := getRaw(&r, vcpuTagEvents, "events", &st.Events); err != nil {
		return err
	}
	if err := getRaw(&r, vcpuTagLAPIC, "lapic", &st.LAPIC); err != nil {
		return err
	}
	if st.MSRs, err = getTable[kvm.MSREntry](&r, vcpuTagMSRs, "msrs", maxSavedMSRs); err != nil {
		return err
	}
	xsave, err := r.field(vcpuTagXSave, "xsave")
	if err != nil {
		return err
	}
	if len(xsave) > maxXSaveBytes {
		return fmt.Errorf("xsave: %d bytes, at most %d", len(xsave), maxXSaveBytes)
	}
	if len(xsave) > 0 {
		st.XSave.Region = bytes.Clone(xsave)
	}
	if err := getRaw(&r, vcpuTagXCRs, "xcrs", &st.XCRs); err != nil {
		return err
	}
	if err := getRaw(&r, vcpuTagSregs, "sregs", &st.Sregs); err != nil {
		return err
	}
	if err := getRaw(&r, vcpuTagRegs, "regs", &st.Regs); err != nil {
		return err
	}
	if err := getRaw(&r, vcpuTagDebugRegs, "debugregs", &st.DebugRegs); err != nil {
		return err
	}
	if st.CPUID, err = getTable[kvm.CPUIDEntry](&r, vcpuTagCPUID, "cpuid", maxSavedCPUID); err != nil {
		return err
	}
	if version >= firstTSCOffsetVersion && len(r.b) > 0 {
		data, err := r.field(vcpuTagTSCOffset, "tsc_offset")
		if err != nil {
			return err
		}
		if len(data) != 8 {
			return fmt.Errorf("tsc_offset: %d bytes, want 8", len(data))
		}
		st.TSCOffset, st.HasTSCOffset = binary.LittleEndian.Uint64(data), true
	}
	if err := r.end(); err != nil {
		return err
	}
	*s = st
	return nil
}

// VMState's fields, in order.
const (
	vmTagPICMaster uint16 = iota + 1
	vmTagPICSlave
	vmTagIOAPIC
	vmTagPIT
	vmTagClock
)

func (s VMState) appendBinary(b []byte) ([]byte, error) {
	w := binWriter{b: b}
	putRaw(&w, vmTagPICMaster, s.PICMaster)
	putRaw(&w, vmTagPICSlave, s.PICSlave)
	putRaw(&w, vmTagIOAPIC, s.IOAPIC)
	putRaw(&w, vmTagPIT, s.PIT)
	putRaw(&w, vmTagClock, s.Clock)
	return w.b, nil
}

func (s *VMState) decodeBinary(_ int, body []byte) error {
	r := binReader{b: body}
	var st VMState
	for _, f := range []struct {
		tag  uint16
		name string
		v    *kvm.IRQChip
	}{
		{vmTagPICMaster, "pic_master", &st.PICMaster},
		{vmTagPICSlave, "pic_slave", &st.PICSlave},
		{vmTagIOAPIC, "ioapic", &st.IOAPIC},
	} {
		if err := getRaw(&r, f.tag, f.name, f.v); err != nil {
			return err
		}
	}
	if err := getRaw(&r, vmTagPIT, "pit", &st.PIT); err != nil {
		return err
	}
	if err := getRaw(&r, vmTagClock, "clock", &st.Clock); err != nil {
		return err
	}
	if err := r.end(); err != nil {
		return err
	}
	*s = st
	return nil
}
