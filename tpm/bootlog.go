package tpm

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
)

// The TCG PC Client firmware event log, crypto-agile format (TCG PC Client
// Platform Firmware Profile, section 10), as Linux exposes it in
// /sys/kernel/security/tpm0/binary_bios_measurements. All integers are
// little-endian.
//
//	TCG_PCClientPCREvent (the first record, SHA-1 log format):
//	  u32 pcrIndex (0), u32 eventType (EV_NO_ACTION), u8 digest[20] (zero),
//	  u32 eventSize, TCG_EfiSpecIDEvent event[eventSize]
//	TCG_EfiSpecIDEvent:
//	  u8 signature[16] ("Spec ID Event03\0"), u32 platformClass,
//	  u8 specVersionMinor (0), u8 specVersionMajor (2), u8 specErrata,
//	  u8 uintnSize, u32 numberOfAlgorithms,
//	  {u16 algorithmId, u16 digestSize}[numberOfAlgorithms],
//	  u8 vendorInfoSize, u8 vendorInfo[vendorInfoSize]
//	TCG_PCR_EVENT2 (every later record):
//	  u32 pcrIndex, u32 eventType,
//	  TPML_DIGEST_VALUES {u32 count, {u16 hashAlg, u8 digest[size]}[count]},
//	  u32 eventSize, u8 event[eventSize]
//
// The parser bounds everything before it allocates: the log's size, the
// number of events, each event's size, the algorithms (known ones only, at
// their TCG sizes, each once, SHA-256 among them) and every record's digest
// list (exactly the Spec ID event's algorithms, in its order).

// Boot event types used here (TCG PC Client PFP, table 9 and 10).
const (
	EvPrebootCert          uint32 = 0x00000000
	EvPostCode             uint32 = 0x00000001
	EvNoAction             uint32 = 0x00000003
	EvSeparator            uint32 = 0x00000004
	EvAction               uint32 = 0x00000005
	EvSCRTMContents        uint32 = 0x00000007
	EvSCRTMVersion         uint32 = 0x00000008
	EvEFIVariableDriverCfg uint32 = 0x80000001
	EvEFIVariableBoot      uint32 = 0x80000002
	EvEFIBootServicesApp   uint32 = 0x80000003
	EvEFIBootServicesDrv   uint32 = 0x80000004
	EvEFIGPTEvent          uint32 = 0x80000006
	EvEFIAction            uint32 = 0x80000007
	EvEFIPlatformFWBlob    uint32 = 0x80000008
	EvEFIHandoffTables     uint32 = 0x80000009
)

const (
	// maxBootLog bounds a boot log from outside. Real logs are tens of
	// KiB; a few hundred with many certificates in db/dbx events.
	maxBootLog = MaxBootLog
	// maxBootEvents and maxBootEventData bound the records.
	maxBootEvents    = 4096
	maxBootEventData = 64 << 10
	// BootLogLastPCR is the last firmware PCR: the boot log is replayed for
	// PCRs 0 to BootLogLastPCR.
	BootLogLastPCR = 7
)

// MaxBootLog is the largest firmware boot log accepted.
const MaxBootLog = 512 << 10

// ErrBootLog is returned (wrapped) for a boot log that does not parse,
// uses an unknown algorithm, or whose events do not hold.
var ErrBootLog = errors.New("bad firmware boot log")

// bootAlgs are the TCG algorithm ids the parser accepts, with their digest
// sizes. An unknown algorithm cannot be skipped safely (its size would be
// the log's claim), so it refuses the log.
var bootAlgs = map[uint16]int{
	0x0004: 20, // SHA-1
	0x000b: 32, // SHA-256
	0x000c: 48, // SHA-384
	0x000d: 64, // SHA-512
	0x0012: 32, // SM3-256
}

const algSHA256 = 0x000b

// BootEvent is one record of a firmware boot log.
type BootEvent struct {
	PCR  int
	Type uint32
	// SHA256 is the record's SHA-256 digest (what was extended into the
	// SHA-256 bank).
	SHA256 [32]byte
	Data   []byte
	// DataChecked is set when the event type defines its digest as the
	// SHA-256 of its data, and that was checked. Other events' data is
	// descriptive only (an EFI application's path, not the image).
	DataChecked bool
}

// BootLog is a parsed firmware boot log.
type BootLog struct {
	// Algs are the Spec ID event's algorithms, in its order.
	Algs []uint16
	// StartupLocality is the locality of the startup event (PCR 0's
	// initial value is this in its last byte), 0 if none.
	StartupLocality byte
	// Events are the records after the Spec ID event, EV_NO_ACTION ones
	// included (they are not extended).
	Events []BootEvent
}

// bootReader reads little-endian fields, stopping at the first short read.
type bootReader struct {
	b   []byte
	off int
	err error
}

func (r *bootReader) take(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || n > len(r.b)-r.off {
		r.err = fmt.Errorf("%w: truncated at offset %d (want %d more bytes)", ErrBootLog, r.off, n)
		return nil
	}
	out := r.b[r.off : r.off+n]
	r.off += n
	return out
}

func (r *bootReader) u8() byte {
	if b := r.take(1); b != nil {
		return b[0]
	}
	return 0
}

func (r *bootReader) u16() uint16 {
	if b := r.take(2); b != nil {
		return binary.LittleEndian.Uint16(b)
	}
	return 0
}

func (r *bootReader) u32() uint32 {
	if b := r.take(4); b != nil {
		return binary.LittleEndian.Uint32(b)
	}
	return 0
}

var specIDSignature = []byte("Spec ID Event03\x00")

// startupLocalitySignature starts the EV_NO_ACTION event that records the
// locality the TPM was started from (PFP 10.4.5.3).
var startupLocalitySignature = []byte("StartupLocality\x00")

// ParseBootLog parses a crypto-agile firmware boot log from an untrusted
// source. It checks the structure and the event data whose digest the
// specification defines as the data's hash; it does not replay (see
// BootLog.Replay).
func ParseBootLog(b []byte) (*BootLog, error) {
	if len(b) == 0 {
		return nil, fmt.Errorf("%w: empty", ErrBootLog)
	}
	if len(b) > maxBootLog {
		return nil, fmt.Errorf("%w: %d bytes exceed %d", ErrBootLog, len(b), maxBootLog)
	}
	r := &bootReader{b: b}
	log := &BootLog{}

	// The header record, in the SHA-1 format, holding the Spec ID event.
	pcr, typ := r.u32(), r.u32()
	digest := r.take(20)
	size := r.u32()
	if r.err != nil {
		return nil, r.err
	}
	if pcr != 0 || typ != EvNoAction || !bytes.Equal(digest, make([]byte, 20)) {
		return nil, fmt.Errorf("%w: first record is not the Spec ID event (PCR %d type %#x)", ErrBootLog, pcr, typ)
	}
	if size > 1024 {
		return nil, fmt.Errorf("%w: Spec ID event of %d bytes", ErrBootLog, size)
	}
	spec := &bootReader{b: r.take(int(size))}
	if r.err != nil {
		return nil, r.err
	}
	if !bytes.Equal(spec.take(16), specIDSignature) {
		return nil, fmt.Errorf("%w: not a crypto-agile log (Spec ID signature)", ErrBootLog)
	}
	spec.u32() // platformClass
	minor, major := spec.u8(), spec.u8()
	spec.u8() // errata
	uintn := spec.u8()
	n := spec.u32()
	if spec.err != nil {
		return nil, spec.err
	}
	if major != 2 || minor != 0 || (uintn != 1 && uintn != 2) {
		return nil, fmt.Errorf("%w: Spec ID version %d.%d uintnSize %d", ErrBootLog, major, minor, uintn)
	}
	if n == 0 || int(n) > len(bootAlgs) {
		return nil, fmt.Errorf("%w: Spec ID event lists %d algorithms", ErrBootLog, n)
	}
	sizes := make(map[uint16]int, n)
	for i := uint32(0); i < n; i++ {
		alg, sz := spec.u16(), spec.u16()
		if spec.err != nil {
			return nil, spec.err
		}
		want, known := bootAlgs[alg]
		if !known {
			return nil, fmt.Errorf("%w: unknown algorithm %#04x in the Spec ID event", ErrBootLog, alg)
		}
		if int(sz) != want {
			return nil, fmt.Errorf("%w: algorithm %#04x with digest size %d, want %d", ErrBootLog, alg, sz, want)
		}
		if _, dup := sizes[alg]; dup {
			return nil, fmt.Errorf("%w: algorithm %#04x listed twice", ErrBootLog, alg)
		}
		sizes[alg] = want
		log.Algs = append(log.Algs, alg)
	}
	if _, ok := sizes[algSHA256]; !ok {
		return nil, fmt.Errorf("%w: no SHA-256 bank in the log", ErrBootLog)
	}
	vendor := spec.u8()
	spec.take(int(vendor))
	if spec.err != nil {
		return nil, spec.err
	}
	if spec.off != len(spec.b) {
		return nil, fmt.Errorf("%w: %d trailing bytes in the Spec ID event", ErrBootLog, len(spec.b)-spec.off)
	}

	// TCG_PCR_EVENT2 records.
	extendedPCR0 := false
	for r.off < len(r.b) {
		if len(log.Events) >= maxBootEvents {
			return nil, fmt.Errorf("%w: more than %d events", ErrBootLog, maxBootEvents)
		}
		i := len(log.Events)
		ev := BootEvent{PCR: int(r.u32()), Type: r.u32()}
		count := r.u32()
		if r.err != nil {
			return nil, r.err
		}
		if ev.PCR > 23 {
			return nil, fmt.Errorf("%w: event %d: PCR %d", ErrBootLog, i, ev.PCR)
		}
		if count != n {
			return nil, fmt.Errorf("%w: event %d: %d digests, the Spec ID event lists %d algorithms", ErrBootLog, i, count, n)
		}
		zero := true
		for _, alg := range log.Algs {
			got := r.u16()
			if r.err != nil {
				return nil, r.err
			}
			if got != alg {
				return nil, fmt.Errorf("%w: event %d: digest algorithm %#04x, want %#04x", ErrBootLog, i, got, alg)
			}
			d := r.take(sizes[alg])
			if r.err != nil {
				return nil, r.err
			}
			if alg == algSHA256 {
				ev.SHA256 = [32]byte(d)
			}
			zero = zero && bytes.Equal(d, make([]byte, len(d)))
		}
		size := r.u32()
		if r.err != nil {
			return nil, r.err
		}
		if size > maxBootEventData {
			return nil, fmt.Errorf("%w: event %d: %d bytes of data exceed %d", ErrBootLog, i, size, maxBootEventData)
		}
		ev.Data = bytes.Clone(r.take(int(size)))
		if r.err != nil {
			return nil, r.err
		}
		if err := checkBootEvent(&ev, zero); err != nil {
			return nil, fmt.Errorf("%w: event %d (PCR %d type %#x): %w", ErrBootLog, i, ev.PCR, ev.Type, err)
		}
		if ev.Type == EvNoAction && ev.PCR == 0 && bytes.HasPrefix(ev.Data, startupLocalitySignature) {
			if extendedPCR0 || len(ev.Data) != len(startupLocalitySignature)+1 || log.StartupLocality != 0 {
				return nil, fmt.Errorf("%w: event %d: misplaced or malformed StartupLocality event", ErrBootLog, i)
			}
			log.StartupLocality = ev.Data[len(startupLocalitySignature)]
			if log.StartupLocality != 0 && log.StartupLocality != 3 && log.StartupLocality != 4 {
				return nil, fmt.Errorf("%w: event %d: startup locality %d", ErrBootLog, i, log.StartupLocality)
			}
		}
		if ev.Type != EvNoAction && ev.PCR == 0 {
			extendedPCR0 = true
		}
		log.Events = append(log.Events, ev)
	}
	return log, nil
}

// checkBootEvent checks what the specification lets a verifier check
// about one event: EV_NO_ACTION is never extended, so its digests are
// zero; a separator's data is the 4-byte value it measures (an error
// separator, 1, means the firmware failed to measure and is refused); for
// the types whose digest is defined as the hash of the event data, it is.
func checkBootEvent(ev *BootEvent, zeroDigests bool) error {
	switch ev.Type {
	case EvNoAction:
		if !zeroDigests {
			return errors.New("EV_NO_ACTION with non-zero digests")
		}
		return nil
	case EvSeparator:
		if len(ev.Data) != 4 {
			return fmt.Errorf("separator of %d bytes", len(ev.Data))
		}
		if binary.LittleEndian.Uint32(ev.Data) != 0 {
			return errors.New("error separator: the firmware reported a measurement failure")
		}
	case EvSCRTMVersion, EvEFIAction, EvAction, EvEFIVariableDriverCfg, EvEFIGPTEvent:
	default:
		return nil
	}
	if sha256.Sum256(ev.Data) != ev.SHA256 {
		return errors.New("SHA-256 digest is not the hash of the event data (altered event)")
	}
	ev.DataChecked = true
	return nil
}

// Replay returns the SHA-256 bank values of PCRs 0 to BootLogLastPCR that
// the log produces from their reset values.
func (l *BootLog) Replay() map[int][32]byte {
	out := make(map[int][32]byte, BootLogLastPCR+1)
	for p := 0; p <= BootLogLastPCR; p++ {
		out[p] = [32]byte{}
	}
	if l.StartupLocality != 0 {
		v := out[0]
		v[31] = l.StartupLocality
		out[0] = v
	}
	for _, ev := range l.Events {
		if ev.Type == EvNoAction || ev.PCR > BootLogLastPCR {
			continue
		}
		v := out[ev.PCR]
		out[ev.PCR] = sha256.Sum256(append(v[:], ev.SHA256[:]...))
	}
	return out
}
