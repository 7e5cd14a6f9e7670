package kvm

import (
	"bytes"
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
