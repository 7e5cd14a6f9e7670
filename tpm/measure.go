package tpm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"

	"github.com/google/go-tpm/tpm2"
)

// EventType says what an event measures. It is covered by the event digest,
// so an event cannot be retyped without changing the PCR.
type EventType uint32

const (
	// EventExecutable measures the SHA-256 digest of gvmm's executable.
	EventExecutable EventType = 1
	// EventConfig measures the SHA-256 digest of gvmm's configuration.
	EventConfig EventType = 2
	// EventPolicy measures the SHA-256 digest of the policy bundle.
	EventPolicy EventType = 3
	// EventClosing closes the unseal window for the rest of this boot.
	EventClosing EventType = 4
	// EventRuntime measures the SHA-256 digest of a run-time report
	// (policy.RuntimeReport): what gvmm measured in a running VM's memory
	// just before it attested. It only ever follows the closing event.
	EventRuntime EventType = 5
)

func (e EventType) String() string {
	switch e {
	case EventExecutable:
		return "executable"
	case EventConfig:
		return "config"
	case EventPolicy:
		return "policy"
	case EventClosing:
		return "closing"
	case EventRuntime:
		return "runtime"
	}
	return fmt.Sprintf("unknown(%d)", uint32(e))
}

// closingData is the data of every closing event.
var closingData = []byte("gvmm: unseal window closed")

const (
	// maxEvents and maxEventData bound a measurement log from outside.
	maxEvents    = 64
	maxEventData = 1024
	// logMagic and logVersion start an encoded log.
	logMagic   = "GVMMLOG1"
	logVersion = 1
	// eventDomain separates gvmm's event digests from any other use of
	// SHA-256 over the same bytes.
	eventDomain = "gvmm-event-v1\x00"
)

// Event is one measurement.
type Event struct {
	Type EventType
	Data []byte
}

// Digest is what gets extended into the PCR:
// SHA-256(domain || type (4 bytes BE) || len(data) (4 bytes BE) || data).
// Unlike the TCG PC Client log, the type is covered.
func (e Event) Digest() [32]byte {
	h := sha256.New()
	var hdr [8]byte
	binary.BigEndian.PutUint32(hdr[0:4], uint32(e.Type))
	binary.BigEndian.PutUint32(hdr[4:8], uint32(len(e.Data)))
	h.Write([]byte(eventDomain))
	h.Write(hdr[:])
	h.Write(e.Data)
	var d [32]byte
	h.Sum(d[:0])
	return d
}

// Log is an ordered list of events extended into one PCR since it was last
// reset (or since boot).
type Log struct {
	PCR    int
	Events []Event
}

// Replay returns the SHA-256 PCR value the log produces from a zero PCR.
func (l *Log) Replay() [32]byte {
	var pcr [32]byte
	for _, e := range l.Events {
		d := e.Digest()
		pcr = sha256.Sum256(append(pcr[:], d[:]...))
	}
	return pcr
}

// Closed reports whether the log holds the closing event (only run-time
// events may follow it).
func (l *Log) Closed() bool {
	return slices.ContainsFunc(l.Events, func(e Event) bool { return e.Type == EventClosing })
}

// MarshalBinary encodes the log: magic, version, PCR, count, then
// (type, length, data) per event, all big-endian.
func (l *Log) MarshalBinary() ([]byte, error) {
	if len(l.Events) > maxEvents {
		return nil, fmt.Errorf("encode measurement log: %d events exceed %d", len(l.Events), maxEvents)
	}
	var b bytes.Buffer
	b.WriteString(logMagic)
	binary.Write(&b, binary.BigEndian, [3]uint32{logVersion, uint32(l.PCR), uint32(len(l.Events))})
	for _, e := range l.Events {
		if len(e.Data) > maxEventData {
			return nil, fmt.Errorf("encode measurement log: event data %d bytes exceeds %d", len(e.Data), maxEventData)
		}
		binary.Write(&b, binary.BigEndian, [2]uint32{uint32(e.Type), uint32(len(e.Data))})
		b.Write(e.Data)
	}
	return b.Bytes(), nil
}

// ErrBadLog is returned for a log that does not decode or does not replay.
var ErrBadLog = errors.New("bad measurement log")

// ParseLog decodes a log from an untrusted source, checking magic, version,
// every size and every event type. Trailing bytes are an error.
func ParseLog(b []byte) (*Log, error) {
	if len(b) > len(logMagic)+12+maxEvents*(8+maxEventData) {
		return nil, fmt.Errorf("%w: %d bytes is too long", ErrBadLog, len(b))
	}
	r := bytes.NewReader(b)
	magic := make([]byte, len(logMagic))
	if _, err := io.ReadFull(r, magic); err != nil || string(magic) != logMagic {
		return nil, fmt.Errorf("%w: bad magic", ErrBadLog)
	}
	var hdr [3]uint32
	if err := binary.Read(r, binary.BigEndian, &hdr); err != nil {
		return nil, fmt.Errorf("%w: short header", ErrBadLog)
	}
	if hdr[0] != logVersion {
		return nil, fmt.Errorf("%w: version %d, want %d", ErrBadLog, hdr[0], logVersion)
	}
	if hdr[1] > 23 {
		return nil, fmt.Errorf("%w: PCR %d", ErrBadLog, hdr[1])
	}
	if hdr[2] > maxEvents {
		return nil, fmt.Errorf("%w: %d events exceed %d", ErrBadLog, hdr[2], maxEvents)
	}
	l := &Log{PCR: int(hdr[1])}
	for i := uint32(0); i < hdr[2]; i++ {
		var eh [2]uint32
		if err := binary.Read(r, binary.BigEndian, &eh); err != nil {
			return nil, fmt.Errorf("%w: event %d: short header", ErrBadLog, i)
		}
		t := EventType(eh[0])
		if t < EventExecutable || t > EventRuntime {
			return nil, fmt.Errorf("%w: event %d: unknown type %d", ErrBadLog, i, eh[0])
		}
		if eh[1] > maxEventData {
			return nil, fmt.Errorf("%w: event %d: %d bytes exceed %d", ErrBadLog, i, eh[1], maxEventData)
		}
		data := make([]byte, eh[1])
		if _, err := io.ReadFull(r, data); err != nil {
			return nil, fmt.Errorf("%w: event %d: short data", ErrBadLog, i)
		}
		l.Events = append(l.Events, Event{Type: t, Data: data})
	}
	if r.Len() != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes", ErrBadLog, r.Len())
	}
	return l, nil
}

// LaunchInputs is what measured launch measures.
type LaunchInputs struct {
	// Executable is the path of gvmm's executable (os.Executable()).
	Executable string
	// Config and Policy are the exact bytes of the configuration and policy
	// bundle gvmm will use. They are measured by digest.
	Config []byte
	Policy []byte
}

// LaunchEvents returns the events a launch with these inputs produces
// (before the closing event). A verifier uses it to compute golden values.
func LaunchEvents(exeDigest [32]byte, config, policy []byte) []Event {
	c := sha256.Sum256(config)
	p := sha256.Sum256(policy)
	return []Event{
		{Type: EventExecutable, Data: exeDigest[:]},
		{Type: EventConfig, Data: c[:]},
		{Type: EventPolicy, Data: p[:]},
	}
}

// RuntimeEvent returns the event that measures a run-time report by its
// SHA-256 digest.
func RuntimeEvent(reportDigest [32]byte) Event {
	return Event{Type: EventRuntime, Data: reportDigest[:]}
}

// ClosingEvent is the event that ends the unseal window.
func ClosingEvent() Event { return Event{Type: EventClosing, Data: closingData} }

// FileDigest returns the SHA-256 of a file.
func FileDigest(path string) ([32]byte, error) {
	var d [32]byte
	f, err := os.Open(path)
	if err != nil {
		return d, fmt.Errorf("digest %s: %w", path, err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return d, fmt.Errorf("digest %s: %w", path, err)
	}
	h.Sum(d[:0])
	return d, nil
}

// MeasureLaunch measures gvmm into its PCR and returns the log.
//
// On a software TPM the PCR (23) is reset first, so the log starts from
// zero. On a hardware TPM the PCR cannot be reset: prior must be the log
// kept since boot, and it must replay to the PCR's current value (else
// ErrBadLog); the new events are appended to it.
func (t *TPM) MeasureLaunch(ctx context.Context, in LaunchInputs, prior *Log) (*Log, error) {
	exe, err := FileDigest(in.Executable)
	if err != nil {
		return nil, fmt.Errorf("measure launch: %w", err)
	}
	log := &Log{PCR: t.cfg.PCR}
	if t.cfg.Kind.Software() {
		if err := t.ResetPCR(ctx, t.cfg.PCR); err != nil {
			return nil, fmt.Errorf("measure launch: %w", err)
		}
	} else {
		cur, err := t.ReadPCR(ctx, t.cfg.PCR)
		if err != nil {
			return nil, fmt.Errorf("measure launch: %w", err)
		}
		if prior == nil {
			prior = &Log{PCR: t.cfg.PCR}
		}
		if prior.PCR != t.cfg.PCR || prior.Replay() != cur {
			return nil, fmt.Errorf("measure launch: %w: prior log does not replay to PCR %d", ErrBadLog, t.cfg.PCR)
		}
		if prior.Closed() {
			return nil, fmt.Errorf("measure launch: PCR %d already closed in this boot", t.cfg.PCR)
		}
		log.Events = append(log.Events, prior.Events...)
	}
	for _, e := range LaunchEvents(exe, in.Config, in.Policy) {
		if err := t.ExtendEvent(ctx, log, e); err != nil {
			return nil, fmt.Errorf("measure launch: %w", err)
		}
	}
	return log, nil
}

// CloseLaunch extends the closing event: from now until the next reboot (or, on a
// software TPM, the next reset of its PCR) nothing sealed to the launch
// measurements can be unsealed.
func (t *TPM) CloseLaunch(ctx context.Context, log *Log) error {
	if err := t.ExtendEvent(ctx, log, ClosingEvent()); err != nil {
		return fmt.Errorf("close launch: %w", err)
	}
	return nil
}

// ExtendEvent extends e's digest into log.PCR and appends e to log.
func (t *TPM) ExtendEvent(ctx context.Context, log *Log, e Event) error {
	if len(e.Data) > maxEventData || len(log.Events) >= maxEvents {
		return fmt.Errorf("extend PCR %d: log full or event too large", log.PCR)
	}
	d := e.Digest()
	err := t.do(ctx, func(tr transportTPM) error {
		_, err := tpm2.PCRExtend{
			PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(log.PCR), Auth: tpm2.PasswordAuth(nil)},
			Digests: tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{
				{HashAlg: tpm2.TPMAlgSHA256, Digest: d[:]},
			}},
		}.Execute(tr)
		return err
	})
	if err != nil {
		return fmt.Errorf("extend PCR %d with %s event: %w", log.PCR, e.Type, err)
	}
	log.Events = append(log.Events, Event{Type: e.Type, Data: bytes.Clone(e.Data)})
	return nil
}

// ResetPCR resets a PCR (only 16 and 23 are resettable from locality 0).
func (t *TPM) ResetPCR(ctx context.Context, pcr int) error {
	err := t.do(ctx, func(tr transportTPM) error {
		_, err := tpm2.PCRReset{
			PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(pcr), Auth: tpm2.PasswordAuth(nil)},
		}.Execute(tr)
		return err
	})
	if err != nil {
		return fmt.Errorf("reset PCR %d: %w", pcr, err)
	}
	return nil
}

// ReadPCR reads one SHA-256 PCR.
func (t *TPM) ReadPCR(ctx context.Context, pcr int) ([32]byte, error) {
	vals, err := t.ReadPCRs(ctx, []int{pcr})
	if err != nil {
		return [32]byte{}, err
	}
	return vals[pcr], nil
}

// ReadPCRs reads SHA-256 PCRs.
func (t *TPM) ReadPCRs(ctx context.Context, pcrs []int) (map[int][32]byte, error) {
	out := make(map[int][32]byte, len(pcrs))
	if _, err := pcrSelection(pcrs); err != nil {
		return nil, fmt.Errorf("read PCRs: %w", err)
	}
	err := t.do(ctx, func(tr transportTPM) error {
		// PCR_Read returns at most 8 values per call; read one by one so
		// the response's selection is checked against what was asked.
		for _, p := range sortedPCRs(pcrs) {
			one, _ := pcrSelection([]int{p})
			rsp, err := tpm2.PCRRead{PCRSelectionIn: one}.Execute(tr)
			if err != nil {
				return err
			}
			if len(rsp.PCRValues.Digests) != 1 || len(rsp.PCRValues.Digests[0].Buffer) != 32 {
				return fmt.Errorf("PCR %d: SHA-256 bank not allocated", p)
			}
			out[p] = [32]byte(rsp.PCRValues.Digests[0].Buffer)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read PCRs %v: %w", pcrs, err)
	}
	return out, nil
}
