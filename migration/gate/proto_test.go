package gate

import (
	"crypto/sha256"
	"errors"
	"testing"

	"github.com/gvmm/gvmm/tpm"
)

// TestVerifyPolicyLogShape: a peer's log must be a closed gvmm launch,
// then nothing but 32-byte run-time events.
func TestVerifyPolicyLogShape(t *testing.T) {
	exe := sha256.Sum256([]byte("gvmm"))
	launch := tpm.LaunchEvents(exe, nil, nil)
	closing := tpm.ClosingEvent()
	rt := tpm.RuntimeEvent(sha256.Sum256([]byte("report")))
	cat := func(parts ...[]tpm.Event) []tpm.Event {
		var out []tpm.Event
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	one := func(e tpm.Event) []tpm.Event { return []tpm.Event{e} }
	tests := []struct {
		name   string
		events []tpm.Event
		ok     bool
	}{
		{"closed launch", cat(launch, one(closing)), true},
		{"run-time events after closing", cat(launch, one(closing), one(rt), one(rt)), true},
		{"open launch", launch, false},
		{"run-time event before closing", cat(launch, one(rt), one(closing)), false},
		{"launch event after closing", cat(launch, one(closing), launch[:1]), false},
		{"second closing", cat(launch, one(closing), one(closing)), false},
		{"short run-time event", cat(launch, one(closing), one(tpm.Event{Type: tpm.EventRuntime, Data: rt.Data[:31]})), false},
	}
	v := tpm.NewVerifier(tpm.VerifierConfig{})
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b, err := (&tpm.Log{PCR: 23, Events: tc.events}).MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			pol, err := verifyPolicy(&tpm.Evidence{Log: b}, v)
			if tc.ok != (err == nil) {
				t.Fatalf("err = %v, want ok %v", err, tc.ok)
			}
			if err != nil && !errors.Is(err, tpm.ErrBadLog) {
				t.Fatalf("err = %v, not ErrBadLog", err)
			}
			if tc.ok {
				want := (&tpm.Log{Events: tc.events}).Replay()
				if string(pol.Golden[23][0]) != string(want[:]) {
					t.Fatal("golden value is not the log's replay")
				}
			}
		})
	}
}
