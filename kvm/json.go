package kvm

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
)

// The register pages of LAPICState and IRQChip are byte arrays, which
// encoding/json would write as arrays of numbers: four times the size, and
// slow to decode where every microsecond of a migration's blackout counts.
// They are written as base64 strings instead, and read in either form, so
// that saved states written before keep decoding. Decoding is strict: no
// unknown field, nothing after the value, and a string must decode to the
// array's exact length.

type lapicJSON struct {
	Regs json.RawMessage
}

// MarshalJSON writes {"Regs":"<base64>"}.
func (s LAPICState) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct{ Regs []byte }{s.Regs[:]})
}

// UnmarshalJSON reads {"Regs":"<base64>"} or {"Regs":[n,...]}.
func (s *LAPICState) UnmarshalJSON(b []byte) error {
	var v lapicJSON
	if err := strictUnmarshal(b, &v); err != nil {
		return fmt.Errorf("kvm_lapic_state: %w", err)
	}
	if err := byteArray(v.Regs, s.Regs[:]); err != nil {
		return fmt.Errorf("kvm_lapic_state regs: %w", err)
	}
	return nil
}

type irqChipJSON struct {
	ChipID uint32
	Pad    uint32
	Chip   json.RawMessage
}

// MarshalJSON writes {"ChipID":n,"Pad":n,"Chip":"<base64>"}.
func (c IRQChip) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		ChipID, Pad uint32
		Chip        []byte
	}{c.ChipID, c.Pad, c.Chip[:]})
}

// UnmarshalJSON reads the chip's bytes as base64 or as an array of numbers.
func (c *IRQChip) UnmarshalJSON(b []byte) error {
	var v irqChipJSON
	if err := strictUnmarshal(b, &v); err != nil {
		return fmt.Errorf("kvm_irqchip: %w", err)
	}
	if err := byteArray(v.Chip, c.Chip[:]); err != nil {
		return fmt.Errorf("kvm_irqchip chip: %w", err)
	}
	c.ChipID, c.Pad = v.ChipID, v.Pad
	return nil
}

func strictUnmarshal(b []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return err
	}
	if d.More() {
		return errors.New("trailing data")
	}
	return nil
}

// byteArray fills dst, exactly, from a base64 string or an array of
// numbers (encoding/json reads either into a []byte).
func byteArray(raw json.RawMessage, dst []byte) error {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return errors.New("missing")
	}
	var b []byte
	if err := json.Unmarshal(raw, &b); err != nil {
		return err
	}
	if len(b) != len(dst) {
		return fmt.Errorf("%d bytes, want %d", len(b), len(dst))
	}
	copy(dst, b)
	return nil
}

// CPUIDEntries and MSREntries are the vCPU's CPUID table and MSR values
// as saved state. JSON carries them as base64 of their kernel layout
// (little-endian, x86-64), far cheaper to decode on the switchover's path
// than an array of objects; the array form that states saved before were
// written in is read too. Decoding checks the length and bounds the count.
type (
	CPUIDEntries []CPUIDEntry
	MSREntries   []MSREntry
)

// MarshalJSON writes the entries' kernel layout as base64.
func (e CPUIDEntries) MarshalJSON() ([]byte, error) { return marshalEntries([]CPUIDEntry(e)) }

// UnmarshalJSON reads base64 of the kernel layout, or an array of objects.
func (e *CPUIDEntries) UnmarshalJSON(b []byte) error {
	v, err := unmarshalEntries[CPUIDEntry](b, sizeofCPUIDEntry, maxCPUIDEntries)
	if err != nil {
		return fmt.Errorf("cpuid entries: %w", err)
	}
	*e = v
	return nil
}

// MarshalJSON writes the entries' kernel layout as base64.
func (e MSREntries) MarshalJSON() ([]byte, error) { return marshalEntries([]MSREntry(e)) }

// UnmarshalJSON reads base64 of the kernel layout, or an array of objects.
func (e *MSREntries) UnmarshalJSON(b []byte) error {
	v, err := unmarshalEntries[MSREntry](b, sizeofMSREntry, maxMSRIndices)
	if err != nil {
		return fmt.Errorf("msr entries: %w", err)
	}
	*e = v
	return nil
}

func marshalEntries[T any](v []T) ([]byte, error) {
	if v == nil {
		return []byte("null"), nil
	}
	buf, err := binary.Append(nil, binary.LittleEndian, v)
	if err != nil {
		return nil, err
	}
	return json.Marshal(buf)
}

func unmarshalEntries[T any](b []byte, size, max int) ([]T, error) {
	b = bytes.TrimSpace(b)
	switch {
	case bytes.Equal(b, []byte("null")):
		return nil, nil
	case len(b) > 0 && b[0] == '[':
		var v []T
		if err := strictUnmarshal(b, &v); err != nil {
			return nil, err
		}
		if len(v) > max {
			return nil, fmt.Errorf("%d entries, at most %d", len(v), max)
		}
		return v, nil
	}
	var raw []byte
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, err
	}
	if len(raw)%size != 0 || len(raw)/size > max {
		return nil, fmt.Errorf("%d bytes: not a whole number of %d-byte entries, or more than %d", len(raw), size, max)
	}
	v := make([]T, len(raw)/size)
	if _, err := binary.Decode(raw, binary.LittleEndian, v); err != nil {
		return nil, err
	}
	return v, nil
}
