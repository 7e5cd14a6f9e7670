package policy

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"strings"
	"testing"
)

// resign signs a body as given, without canonicalising it, as a careless or
// hostile signer might.
func resign(key ed25519.PrivateKey, t DocType, body []byte) *Signed {
	return &Signed{Type: t, Body: body, Signer: KeyIDOf(key.Public().(ed25519.PublicKey)), Sig: ed25519.Sign(key, signedMessage(t, body))}
}

func TestVerifyVMPolicy(t *testing.T) {
	w := newWorld(t)
	good := func() *Signed { return w.ownerLayer("tom", 1, w.ownerRules()) }
	ent := func() *Signed { return w.entLayer("it", 1, w.entRules()) }
	tampered := good()
	tampered.Body = bytes.Replace(tampered.Body, []byte(`"group:office"`), []byte(`"group:bob-devices"`), 1)
	badSig := good()
	badSig.Sig[0] ^= 1
	// Bob signs a layer that names Tom as owner of Tom's VM.
	bobForged, _ := SignOwnerLayer(w.keys["bob"], OwnerLayer{VM: "tom-vm", Version: 9, Owner: w.id("tom"), Rules: w.ownerRules()})
	// Tom signs an enterprise layer himself.
	tomEnt := w.entLayer("tom", 5, Rules{})
	otherVM, _ := SignEnterpriseLayer(w.keys["it"], EnterpriseLayer{VM: "other-vm", Version: 1, Rules: w.entRules()})
	retyped := good()
	retyped.Type = TypeEnterpriseLayer
	nonCanon := resign(w.keys["tom"], TypeOwnerLayer, append([]byte(" "), good().Body...))
	dupKey := resign(w.keys["tom"], TypeOwnerLayer, []byte(strings.Replace(string(good().Body), `{"vm":"tom-vm",`, `{"vm":"tom-vm","vm":"tom-vm",`, 1)))
	unknownField := resign(w.keys["tom"], TypeOwnerLayer, []byte(strings.Replace(string(good().Body), `{"vm":`, `{"admin":true,"vm":`, 1)))
	badRule := resign(w.keys["tom"], TypeOwnerLayer, []byte(strings.Replace(string(good().Body), `"role:owner"`, `"anyone"`, 1)))
	badTrust := resign(w.keys["tom"], TypeOwnerLayer, []byte(strings.Replace(string(good().Body), `"software-tpm"`, `"none"`, 1)))
	stranger := keyFor("mallory")
	unknownSigner, _ := SignOwnerLayer(stranger, OwnerLayer{VM: "tom-vm", Version: 1, Owner: w.id("tom"), Rules: w.ownerRules()})
	unknownOwner, _ := SignOwnerLayer(stranger, OwnerLayer{VM: "tom-vm", Version: 1, Owner: KeyIDOf(stranger.Public().(ed25519.PublicKey)), Rules: w.ownerRules()})
	hostOwner, _ := SignOwnerLayer(w.keys["tom-laptop"], OwnerLayer{VM: "tom-vm", Version: 1, Owner: w.tomLaptop.ID(), Rules: w.ownerRules()})
	itForOwner := w.ownerLayer("it", 2, w.ownerRules())

	tests := []struct {
		name string
		doc  *VMPolicyDoc
		want error // nil: verifies
	}{
		{"owner and IT", w.doc(good(), ent()), nil},
		{"owner only", w.doc(good(), nil), nil},
		{"owner layer signed by IT", w.doc(itForOwner, ent()), nil},
		{"tampered body", w.doc(tampered, ent()), ErrSignature},
		{"bad signature", w.doc(badSig, nil), ErrSignature},
		{"forged by bob", w.doc(bobForged, nil), ErrSignature},
		{"enterprise layer by owner", w.doc(good(), tomEnt), ErrSignature},
		{"enterprise layer of another vm", w.doc(good(), otherVM), ErrInvalid},
		{"owner layer presented as enterprise", w.doc(good(), retyped), ErrSignature},
		{"non-canonical body", w.doc(nonCanon, nil), ErrInvalid},
		{"duplicate key", w.doc(dupKey, nil), ErrInvalid},
		{"unknown field", w.doc(unknownField, nil), ErrInvalid},
		{"bad migrator", w.doc(badRule, nil), ErrInvalid},
		{"trust none", w.doc(badTrust, nil), ErrInvalid},
		{"unknown signer", w.doc(unknownSigner, nil), ErrUnknownPrincipal},
		{"unknown owner", w.doc(unknownOwner, nil), ErrUnknownPrincipal},
		{"host as owner", w.doc(hostOwner, nil), ErrUnknownPrincipal},
		{"no owner layer", w.doc(nil, ent()), ErrInvalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := VerifyVMPolicy(tc.doc, w.dir)
			if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestParseVMPolicyDoc(t *testing.T) {
	w := newWorld(t)
	enc, err := w.doc(w.ownerLayer("tom", 1, w.ownerRules()), w.entLayer("it", 1, w.entRules())).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		in   []byte
		ok   bool
	}{
		{"round trip", enc, true},
		{"oversized", append(enc, bytes.Repeat([]byte(" "), MaxDocumentSize)...), false},
		{"trailing", append(append([]byte{}, enc...), "{}"...), false},
		{"unknown field", []byte(`{"owner":null,"x":1}`), false},
		{"no owner", []byte(`{}`), false},
		{"not json", []byte(`owner`), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d, err := ParseVMPolicyDoc(bytes.NewReader(tc.in))
			if (err == nil) != tc.ok {
				t.Fatalf("err = %v, want ok %v", err, tc.ok)
			}
			if tc.ok {
				if _, err := VerifyVMPolicy(d, w.dir); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

func TestNewDirectory(t *testing.T) {
	k := func(n string) []byte { return keyFor(n).Public().(ed25519.PublicKey) }
	tests := []struct {
		name string
		ps   []Principal
		ok   bool
	}{
		{"good", []Principal{{Name: "a", Kind: KindUser, Key: k("a"), Roles: []Role{"auditor"}}}, true},
		{"owner granted", []Principal{{Name: "a", Kind: KindUser, Key: k("a"), Roles: []Role{RoleOwner}}}, false},
		{"short key", []Principal{{Name: "a", Kind: KindUser, Key: k("a")[:31]}}, false},
		{"duplicate key", []Principal{{Name: "a", Kind: KindUser, Key: k("a")}, {Name: "b", Kind: KindUser, Key: k("a")}}, false},
		{"host without tpm id", []Principal{{Name: "h", Kind: KindHost, Key: k("h")}}, false},
		{"duplicate tpm id", []Principal{{Name: "h", Kind: KindHost, Key: k("h"), TPMHostID: "x"}, {Name: "i", Kind: KindHost, Key: k("i"), TPMHostID: "x"}}, false},
		{"host with roles", []Principal{{Name: "h", Kind: KindHost, Key: k("h"), TPMHostID: "x", Roles: []Role{RoleAdmin}}}, false},
		{"unknown host owner", []Principal{{Name: "h", Kind: KindHost, Key: k("h"), TPMHostID: "x", Owner: KeyIDOf(k("z"))}}, false},
		{"unknown kind", []Principal{{Name: "a", Kind: "robot", Key: k("a")}}, false},
		{"bad group", []Principal{{Name: "h", Kind: KindHost, Key: k("h"), TPMHostID: "x", Groups: []string{"a b"}}}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := NewDirectory(tc.ps); (err == nil) != tc.ok {
				t.Fatalf("err = %v, want ok %v", err, tc.ok)
			}
		})
	}
}

func TestParseTrustLevel(t *testing.T) {
	for _, s := range []string{"software-tpm", "hardware-tpm-ek-cert", "hardware-tpm-boot-log"} {
		l, err := ParseTrustLevel(s)
		if err != nil || l.String() != s {
			t.Errorf("%s: %v %v", s, l, err)
		}
	}
	for _, s := range []string{"", "none", "hardware", "SOFTWARE-TPM"} {
		if _, err := ParseTrustLevel(s); !errors.Is(err, ErrInvalid) {
			t.Errorf("%q accepted", s)
		}
	}
}
