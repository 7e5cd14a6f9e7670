package tpm

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"testing"
)

// TestLogEncoding: a log with every event type, run-time events after the
// closing one included, survives encoding; unknown types, oversized data
// and trailing bytes are refused; Closed sees a closing event that
// run-time events followed.
func TestLogEncoding(t *testing.T) {
	exe := sha256.Sum256([]byte("gvmm"))
	launch := append(LaunchEvents(exe, []byte("cfg"), nil), ClosingEvent())
	withRuntime := append(append([]Event(nil), launch...), RuntimeEvent(sha256.Sum256([]byte("report 1"))), RuntimeEvent(sha256.Sum256([]byte("report 2"))))
	tests := []struct {
		name   string
		events []Event
		closed bool
	}{
		{"open launch", launch[:3], false},
		{"closed launch", launch, true},
		{"run-time events after closing", withRuntime, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l := &Log{PCR: 23, Events: tc.events}
			b, err := l.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			got, err := ParseLog(b)
			if err != nil {
				t.Fatal(err)
			}
			if got.Replay() != l.Replay() || len(got.Events) != len(l.Events) {
				t.Fatalf("decoded log differs: %d events", len(got.Events))
			}
			for i, e := range got.Events {
				if e.Type != l.Events[i].Type || !bytes.Equal(e.Data, l.Events[i].Data) {
					t.Fatalf("event %d: %v, want %v", i, e, l.Events[i])
				}
			}
			if got.Closed() != tc.closed {
				t.Fatalf("Closed() = %v, want %v", got.Closed(), tc.closed)
			}
		})
	}

	good, err := (&Log{PCR: 23, Events: withRuntime}).MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	firstType := len(logMagic) + 12 // magic, then version, PCR and count
	bad := []struct {
		name string
		edit func(b []byte) []byte
	}{
		{"unknown event type", func(b []byte) []byte {
			binary.BigEndian.PutUint32(b[firstType:], uint32(EventRuntime)+1)
			return b
		}},
		{"type zero", func(b []byte) []byte {
			binary.BigEndian.PutUint32(b[firstType:], 0)
			return b
		}},
		{"oversized event", func(b []byte) []byte {
			binary.BigEndian.PutUint32(b[firstType+4:], maxEventData+1)
			return b
		}},
		{"trailing byte", func(b []byte) []byte { return append(b, 0) }},
		{"truncated", func(b []byte) []byte { return b[:len(b)-1] }},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ParseLog(tc.edit(bytes.Clone(good))); !errors.Is(err, ErrBadLog) {
				t.Fatalf("ParseLog: %v, want ErrBadLog", err)
			}
		})
	}
}
