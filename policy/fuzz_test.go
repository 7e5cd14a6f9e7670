package policy

import (
	"bytes"
	"testing"
)

// FuzzVerifyVMPolicy: no input panics, and none verifies unless it is a
// correctly signed policy (the seed).
func FuzzVerifyVMPolicy(f *testing.F) {
	w := newWorld(f)
	good, err := w.doc(w.ownerLayer("tom", 1, w.ownerRules()), w.entLayer("it", 1, w.entRules())).Marshal()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte(`{"owner":{"type":"gvmm.vm-policy.owner/v1","body":"e30=","signer":"","sig":""}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := ParseVMPolicyDoc(bytes.NewReader(b))
		if err != nil {
			return
		}
		p, err := VerifyVMPolicy(d, w.dir)
		if err != nil {
			return
		}
		// Whatever verified must carry the seed's signed bodies.
		if !bytes.Equal(d.Owner.Body, w.ownerLayer("tom", 1, w.ownerRules()).Body) || p.Owner().Name != "tom" {
			t.Fatalf("forged policy verified: %s", b)
		}
	})
}

// FuzzUnmarshalHostState: no input panics.
func FuzzUnmarshalHostState(f *testing.F) {
	w := newWorld(f)
	s := NewHostState(w.dir)
	if _, err := s.ReceiveVMPolicy(w.doc(w.ownerLayer("tom", 1, w.ownerRules()), nil)); err != nil {
		f.Fatal(err)
	}
	b, err := MarshalHostState(s)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		if s, err := UnmarshalHostState(b); err == nil {
			if _, err := MarshalHostState(s); err != nil {
				t.Fatal(err)
			}
		}
	})
}
