package policy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"testing"
	"time"

	"github.com/gvmm/gvmm/tpm"
)

func selfSigned(t *testing.T, pub, priv any) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "h"}, NotBefore: time.Unix(0, 0), NotAfter: time.Unix(1<<33, 0)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, priv)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestHostForCert(t *testing.T) {
	w := newWorld(t)
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	stranger := keyFor("mallory")
	tests := []struct {
		name string
		cert *x509.Certificate
		want string
	}{
		{"laptop", selfSigned(t, w.keys["tom-laptop"].Public(), w.keys["tom-laptop"]), "tom-laptop"},
		{"user key is not a host", selfSigned(t, w.keys["tom"].Public(), w.keys["tom"]), ""},
		{"unknown key", selfSigned(t, stranger.Public(), stranger), ""},
		{"ecdsa", selfSigned(t, &ec.PublicKey, ec), ""},
		{"none", nil, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := w.dir.HostForCert(tc.cert)
			if tc.want == "" {
				if !errors.Is(err, ErrUnknownPrincipal) {
					t.Fatalf("err = %v", err)
				}
				return
			}
			if err != nil || p.Name != tc.want {
				t.Fatalf("got %q, %v", p.Name, err)
			}
		})
	}
}

func TestAttestationFromResult(t *testing.T) {
	exe := [32]byte{1, 2, 3}
	launch := tpm.LaunchEvents(exe, []byte("config"), []byte("policy"))
	tests := []struct {
		name string
		r    *tpm.Result
		ok   bool
	}{
		{"launch", &tpm.Result{HostID: "h", Trust: tpm.TrustSoftware, Events: append(launch, tpm.ClosingEvent())}, true},
		{"no executable", &tpm.Result{HostID: "h", Trust: tpm.TrustSoftware, Events: launch[1:]}, false},
		{"two executables", &tpm.Result{HostID: "h", Trust: tpm.TrustSoftware, Events: append(launch, launch[0])}, false},
		{"short digest", &tpm.Result{HostID: "h", Events: []tpm.Event{{Type: tpm.EventExecutable, Data: exe[:31]}}}, false},
		{"no host", &tpm.Result{Events: launch}, false},
		{"nil", nil, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a, err := AttestationFromResult(tc.r)
			if (err == nil) != tc.ok {
				t.Fatalf("err = %v", err)
			}
			if tc.ok && (a.Executable != exe || a.HostID != "h" || a.Trust != tpm.TrustSoftware) {
				t.Fatalf("got %+v", a)
			}
		})
	}
}

// TestVerifiedPolicyIsACopy: changing the document after verifying it
// changes nothing that was verified.
func TestVerifiedPolicyIsACopy(t *testing.T) {
	w := newWorld(t)
	d := w.doc(w.ownerLayer("tom", 1, w.ownerRules()), nil)
	p := w.verify(d)
	d.Owner.Body[0] = 'X'
	d.Owner = nil
	if _, err := VerifyVMPolicy(p.Doc(), w.dir); err != nil {
		t.Fatalf("verified policy changed under it: %v", err)
	}
	p.Doc().Owner.Sig[0] ^= 1
	if _, err := VerifyVMPolicy(p.Doc(), w.dir); err != nil {
		t.Fatalf("Doc() shares memory: %v", err)
	}
}
